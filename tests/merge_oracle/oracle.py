"""Calls mergekit (installed in its own venv by `make setup-mergekit`) through a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("mergekit_oracle.py")


def mergekit_python() -> Path:
    """The mergekit venv's python; a skip locally, a failure under NEXUS_REQUIRE_MERGEKIT (make test)."""
    python = Path(os.environ.get("NEXUS_MERGEKIT_PYTHON", ROOT / ".venv-mergekit" / "bin" / "python"))
    if not python.exists():
        message = f"mergekit oracle not installed at {python}: run `make setup-mergekit`"
        if os.environ.get("NEXUS_REQUIRE_MERGEKIT"):
            pytest.fail(message)
        pytest.skip(message)
    return python


def run_cases(
    cases: dict[str, tuple[dict[str, torch.Tensor], dict]],
    tmp: Path,
    shared: dict[str, torch.Tensor] | None = None,
) -> dict[str, list[torch.Tensor]]:
    """mergekit's outputs per case: ``cases[name] = ({"base": .., "m0": .., ...}, spec)``;
    ``shared`` tensors are saved as named, for specs that read them (``inputs``, ``uniforms``)."""
    tensors, spec = dict(shared or {}), {}
    for name, (inputs, s) in cases.items():
        spec[name] = s
        for k, v in inputs.items():
            tensors[f"{name}/{k}"] = v.contiguous()
    save_file(tensors, tmp / "in.safetensors")
    (tmp / "spec.json").write_text(json.dumps(spec))
    proc = subprocess.run(
        [
            str(mergekit_python()),
            str(SCRIPT),
            str(tmp / "in.safetensors"),
            str(tmp / "out.safetensors"),
            str(tmp / "spec.json"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = load_file(tmp / "out.safetensors")
    return {name: [out[f"{name}/{i}"] for i in range(s.get("draws", 1))] for name, s in spec.items()}


def mergekit_yaml(config: dict, out: Path) -> None:
    """Run `mergekit-yaml` on a config (dict) into ``out``."""
    import yaml

    cfg_path = out.with_suffix(".yaml")
    cfg_path.write_text(yaml.safe_dump(config))
    cli = mergekit_python().parent / "mergekit-yaml"
    proc = subprocess.run([str(cli), str(cfg_path), str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
