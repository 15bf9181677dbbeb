"""Where the built-in zoo models live and how a model name resolves to a directory."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

ZOO_DIR = Path(__file__).parent / "models"

DESCRIPTIONS = {
    "arith-policy": "tiny Llama policy: multi-step arithmetic, one step per line, then 'A: <answer>'",
    "arith-policy-small": "arith-policy's recipe at a quarter of its parameters (small vs. large)",
    "arith-prm": "step checker for the arith policies: each step against the line before it (format local)",
    "arith-prm-rewrite": "step checker that re-derives what each arith step rewrote (local, view rewrite)",
    "arith-expert-addsub": "merge expert: arith-policy fine-tuned on long +/- chains",
    "arith-expert-mul": "merge expert: arith-policy fine-tuned on multiplication-heavy problems",
    "rope-base": "tiny Llama trained at a 128-token context (arith + passkey), for RoPE extension",
    "chat-policy": "tiny Qwen2 policy, byte-level BPE and ChatML template: free-form math, \\boxed{} answers",
    "chat-prm": "Qwen2ForProcessRewardModel for chat-policy (Qwen2.5-Math-PRM's format: <extra_0> step tags)",
}


@dataclass(frozen=True)
class ZooModel:
    name: str
    path: Path
    description: str
    parameters: int | None
    size_mb: float


def list_models() -> list[ZooModel]:
    models = []
    for name, description in DESCRIPTIONS.items():
        path = ZOO_DIR / name
        meta_file = path / "training.json"
        meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
        weights = path / "model.safetensors"
        size = weights.stat().st_size / 1e6 if weights.exists() else 0.0
        models.append(ZooModel(name, path, description, meta.get("parameters"), size))
    return models


def resolve(name_or_path: str) -> Path:
    """A zoo name (``arith-policy``) or any HF model directory; a clear error if neither exists."""
    if name_or_path in DESCRIPTIONS:
        path = ZOO_DIR / name_or_path
        if not (path / "config.json").exists():
            raise FileNotFoundError(
                f"zoo model {name_or_path!r} is not built: run python -m nexus_ray.training"
            )
        return path
    path = Path(name_or_path).expanduser()
    if not (path / "config.json").exists():
        known = ", ".join(DESCRIPTIONS)
        raise FileNotFoundError(
            f"model {name_or_path!r} is neither a zoo model ({known}) nor a directory with config.json"
        )
    return path
