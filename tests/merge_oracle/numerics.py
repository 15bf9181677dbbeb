"""Every merge method against a float64 reference, for nexus_ray and mergekit on the same inputs.

The reference is each method's math in float64 on the same input values (the float32 or bf16
inputs of the row, exact in float64): nexus_ray's implementation run on float64 tensors, which the
``float64`` rows check against mergekit's own float64 result. DARE and DELLA use the same masks
in every run: mergekit compares its keep probabilities with nexus_ray's own draws for the tensor
(``fused.uniforms`` of each model's stream, float32-exact values) instead of drawing, so the
errors measure the arithmetic, not the sampling. Errors are of the outputs as stored (bf16
inputs give bf16 outputs).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch import Tensor

from nexus_ray.merge import fused, methods
from nexus_ray.merge.sparsify import stream_key
from nexus_ray.zoo.registry import ZOO_DIR
from tests.merge_oracle.oracle import run_cases

# The parity checkpoints of tests/test_merge_run.py's zoo comparison: a base and two fine-tunes.
CHECKPOINTS = [ZOO_DIR / "arith-policy", ZOO_DIR / "arith-expert-addsub", ZOO_DIR / "arith-expert-mul"]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}
W, D = [0.6, 0.4], [0.4, 0.6]
# Every registered method: per-model lists (for m0, m1) and global values, mergekit's keys.
PARAMS: dict[str, dict] = {
    "linear": {"weight": W},
    "task_arithmetic": {"weight": W, "lambda": 0.8},
    "ties": {"weight": W, "density": D},
    "dare_linear": {"weight": W, "density": D},
    "dare_ties": {"weight": W, "density": D},
    "della": {"weight": W, "density": D, "epsilon": [0.1, 0.1]},
    "della_linear": {"weight": W, "density": D, "epsilon": [0.1, 0.1]},
    "breadcrumbs": {"weight": W, "density": D, "gamma": [0.01, 0.01]},
    "breadcrumbs_ties": {"weight": W, "density": D, "gamma": [0.01, 0.01]},
    "slerp": {"t": 0.4},
}


def uses(method: str) -> list[str]:
    """The inputs a method merges: linear has no base, slerp one model besides it."""
    return {"linear": ["m0", "m1"], "slerp": ["base", "m0"]}.get(method, ["base", "m0", "m1"])


@dataclass
class Errors:
    """Absolute error against the reference over every element of every tensor."""

    max_abs: float = 0.0
    abs_sum: float = 0.0
    count: int = 0
    ref_max: float = 0.0  # the largest |reference|: the scale of the errors
    ref_sum: float = 0.0

    def add(self, out: Tensor, ref: Tensor) -> None:
        err = (out.double() - ref).abs()
        self.max_abs = max(self.max_abs, float(err.max()))
        self.abs_sum += float(err.sum())
        self.count += err.numel()
        self.ref_max = max(self.ref_max, float(ref.abs().max()))
        self.ref_sum += float(ref.abs().sum())

    @property
    def mean_abs(self) -> float:
        return self.abs_sum / max(1, self.count)

    @property
    def ref_mean(self) -> float:
        return self.ref_sum / max(1, self.count)


def checkpoint_tensors() -> dict[str, dict[str, Tensor]]:
    """Per tensor name, ``base``, ``m0``, ``m1`` from the parity checkpoints."""
    sds = [load_file(path / "model.safetensors") for path in CHECKPOINTS]
    return {name: dict(zip(["base", "m0", "m1"], (sd[name] for sd in sds))) for name in sds[0]}


def uniforms(tensors: dict[str, dict[str, Tensor]], seed: int = 0) -> dict[str, list[Tensor]]:
    """Per tensor, the uniforms nexus_ray's masks draw for each of its two models (as float64)."""
    return {
        name: [
            torch.from_numpy(fused.uniforms(np.uint64(stream_key(seed, name, i)), t["base"].numel()))
            .reshape(t["base"].shape)
            .double()
            for i in range(2)
        ]
        for name, t in tensors.items()
    }


def ours(method: str, inputs: dict[str, Tensor], dtype: torch.dtype, tensor: str) -> Tensor:
    """nexus_ray's merge of one tensor, inputs cast to ``dtype`` (masks drawn for ``tensor``)."""
    cast = {k: inputs[k].to(dtype) for k in uses(method)}
    params = PARAMS[method]
    per_model = {k: v for k, v in params.items() if isinstance(v, list)}
    shared = {k: v for k, v in params.items() if not isinstance(v, list)}
    models = [cast[k] for k in uses(method) if k != "base"]
    return methods.call(methods.get(method), cast.get("base"), models, per_model, shared, 0, tensor)


def mergekit_outputs(
    tensors: dict[str, dict[str, Tensor]], given: dict[str, list[Tensor]], names: list[str], tmp: Path
) -> dict[tuple[str, str, str], Tensor]:
    """mergekit's merge of every (method, dtype, tensor), from one subprocess."""
    shared, cases = {}, {}
    for tensor, inputs in tensors.items():
        for j, u in enumerate(given[tensor]):
            shared[f"u|{tensor}/u{j}"] = u
        for dname, dtype in DTYPES.items():
            for k, t in inputs.items():
                shared[f"{dname}|{tensor}/{k}"] = t.to(dtype)
            for method in names:
                spec = {"method": method, "parameters": PARAMS[method], "inputs": f"{dname}|{tensor}"}
                cases[f"{method}|{dname}|{tensor}"] = (
                    {},
                    spec | {"use": uses(method), "uniforms": f"u|{tensor}"},
                )
    out = run_cases(cases, tmp, shared)
    return {tuple(case.split("|", 2)): outs[0] for case, outs in out.items()}


def errors(
    tensors: dict[str, dict[str, Tensor]], names: list[str], tmp: Path | None
) -> dict[tuple[str, str, str], Errors]:
    """Errors against the float64 reference per (method, dtype, tool: nexus_ray or mergekit);
    mergekit's only with ``tmp`` (a scratch directory for its subprocess)."""
    given = uniforms(tensors)
    theirs = mergekit_outputs(tensors, given, names, tmp) if tmp is not None else {}
    result: dict[tuple[str, str, str], Errors] = {}
    for tensor, inputs in tensors.items():
        for method in names:
            for dname, dtype in DTYPES.items():
                same = {k: v.to(dtype) for k, v in inputs.items()}  # the reference's inputs: these values
                ref = ours(method, same, torch.float64, tensor)
                result.setdefault((method, dname, "nexus_ray"), Errors()).add(
                    ours(method, inputs, dtype, tensor), ref
                )
                if theirs:
                    result.setdefault((method, dname, "mergekit"), Errors()).add(
                        theirs[(method, dname, tensor)], ref
                    )
    return result
