"""Run by the mergekit venv (not nexus_ray's): merge tensors with mergekit, for parity tests.

    .venv-mergekit/bin/python tests/merge_oracle/mergekit_oracle.py IN.safetensors OUT.safetensors SPEC.json

IN holds ``base`` (optional) and ``m0``, ``m1``, ... per tensor name prefix ``<case>/``; SPEC
maps each case to {method, parameters, seed}. OUT holds mergekit's result per case. Random
methods are drawn ``draws`` times with torch.manual_seed(seed + i) so statistics can be checked.
Separate process because mergekit needs its own dependency set.
"""

import json
import sys
from pathlib import Path

import torch
from mergekit.merge_methods.api import merge_tensors
from safetensors.torch import load_file, save_file

tensors = load_file(sys.argv[1])
spec = json.loads(Path(sys.argv[3]).read_text())
out = {}
for case, s in spec.items():
    names = sorted(k.split("/", 1)[1] for k in tensors if k.startswith(case + "/"))
    inputs = [n for n in names if n != "base"]
    order = (["base"] if "base" in names else []) + inputs
    stack = [tensors[f"{case}/{n}"] for n in order]
    base_index = 0 if "base" in names else None
    for i in range(s.get("draws", 1)):
        torch.manual_seed(s.get("seed", 0) + i)
        params = s["parameters"]  # per-model lists in the order m0, m1, ... (the base takes none)
        out[f"{case}/{i}"] = merge_tensors(
            stack, s["method"], parameters=params, base_index=base_index
        ).contiguous()
save_file(out, sys.argv[2])
