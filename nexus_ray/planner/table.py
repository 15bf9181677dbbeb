"""The calibrated plan table: difficulty bins, per (bin, budget) the plan to run, and the curves
those choices came from. A versioned JSON artifact; ``nexus-ray calibrate`` writes it and the
service plans from it.

A table is tied to the models it was calibrated with: ``check_models`` compares fingerprints
(config, and each weight file's size, head and tail) so a service started with other models, or
with the same model retrained, fails at start-up, not at its first request.
"""

from __future__ import annotations

import bisect
import hashlib
import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from nexus_ray.planner.allocate import Allocation, Point, allocate
from nexus_ray.planner.difficulty import Estimator
from nexus_ray.planner.options import PlanOption

SCHEMA_VERSION = 1
TABLES_DIR = Path(__file__).parent / "tables"  # built-in tables, calibrated for the zoo


class TableError(ValueError):
    """The table is missing, unreadable, of another schema, or calibrated for other models."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OptionStats(_Strict):
    option: PlanOption
    compute: float  # mean policy-token equivalents, probe included
    accuracy: float


class BudgetChoice(_Strict):
    """The plan chosen for a bin when a prompt may spend up to ``budget`` generations."""

    budget: int
    option: PlanOption
    compute: float
    accuracy: float  # on the whole bin (optimistic: chosen and scored on the same problems)
    cv_accuracy: float  # two-fold cross-validated: chosen on one half, scored on the other


class BinEntry(_Strict):
    problems: int
    weight: float  # share of calibration problems in this bin
    choices: list[BudgetChoice]
    options: list[OptionStats]  # every plan measured in this bin (the curves the choices came from)

    def curve(self) -> list[Point]:
        """(compute, cross-validated accuracy) of each budget's choice: what allocation works on."""
        return [Point(c.compute, c.cv_accuracy, i) for i, c in enumerate(self.choices)]


class ModelStamp(_Strict):
    name: str
    fingerprint: str


class PlanTable(_Strict):
    schema_version: int = SCHEMA_VERSION
    created: str
    dataset: str
    problems: int
    seed: int
    policy: ModelStamp
    prm: ModelStamp
    estimator: Estimator
    early_exit: bool
    edges: list[float]  # bin boundaries on difficulty: bin i holds edges[i-1] < d <= edges[i]
    bins: list[BinEntry]
    spearman_vs_oracle: float | None = None  # on the calibration set

    def bin_of(self, difficulty: float) -> int:
        return bisect.bisect_left(self.edges, difficulty)

    def allocate(self, mean_budget: float) -> Allocation:
        return allocate([b.curve() for b in self.bins], [b.weight for b in self.bins], mean_budget)

    def option(self, bin_index: int, choice: int) -> PlanOption:
        return self.bins[bin_index].choices[choice].option

    def check_models(self, policy: str, prm: str) -> None:
        for role, stamp, model in (("policy", self.policy, policy), ("PRM", self.prm, prm)):
            if model_fingerprint(model) != stamp.fingerprint:
                raise TableError(
                    f"the plan table was calibrated with {role} {stamp.name!r}, not {model!r} "
                    f"(fingerprints differ): rerun nexus-ray calibrate for these models"
                )

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(self.model_dump_json(indent=1) + "\n")
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> PlanTable:
        path = Path(path)
        if not path.is_file():
            raise TableError(f"plan table {path} not found: run `nexus-ray calibrate` to make one")
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise TableError(f"plan table {path} is not JSON: {err}") from None
        version = raw.get("schema_version") if isinstance(raw, dict) else None
        if version != SCHEMA_VERSION:
            raise TableError(
                f"plan table {path} has schema version {version!r}, this nexus_ray reads {SCHEMA_VERSION}: "
                "recalibrate with `nexus-ray calibrate`"
            )
        try:
            return cls.model_validate(raw)
        except ValidationError as err:
            raise TableError(f"plan table {path} is malformed: {err}") from None


def load_table(name_or_path: str) -> PlanTable:
    """A built-in table by name (``arith-zoo``, ``arith-zoo-line``, ``chat-zoo``) or a table file."""
    builtin = TABLES_DIR / f"{name_or_path}.json"
    return PlanTable.load(builtin if builtin.is_file() else Path(name_or_path))


FINGERPRINT_SPAN = 1 << 20  # bytes hashed at each end of a weight file


def model_fingerprint(model: str) -> str:
    """A zoo name or model directory's identity: its config, and each weight file's name, size and
    first and last MiB. Sizes alone miss a checkpoint retrained with the same architecture; the
    ends change with any retraining (the head holds the header and first tensor, the tail the
    last), and reading 2 MiB a file keeps this cheap for models of many GB."""
    from nexus_ray.zoo.registry import resolve

    directory = resolve(model)
    h = hashlib.sha256((directory / "config.json").read_bytes())
    for f in sorted(directory.glob("*.safetensors")) + sorted(directory.glob("*.bin")):
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with f.open("rb") as fh:
            h.update(fh.read(FINGERPRINT_SPAN))
            fh.seek(max(0, size - FINGERPRINT_SPAN))
            h.update(fh.read(FINGERPRINT_SPAN))
    return h.hexdigest()[:16]
