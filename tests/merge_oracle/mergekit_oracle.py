"""Run by the mergekit venv (not nexus_ray's): merge tensors with mergekit, for parity tests.

    .venv-mergekit/bin/python tests/merge_oracle/mergekit_oracle.py IN.safetensors OUT.safetensors SPEC.json

IN holds ``base`` (optional) and ``m0``, ``m1``, ... per tensor name prefix ``<case>/``; SPEC
maps each case to {method, parameters, seed}. OUT holds mergekit's result per case. Random
methods are drawn ``draws`` times with torch.manual_seed(seed + i) so statistics can be checked.
A case may name another prefix to read its inputs from (``inputs``, so cases share them), which
of them to merge (``use``: e.g. ``["m0", "m1"]``, no base), and
``uniforms``: a prefix holding ``u0``, ``u1``, ... (one per model) that DARE/DELLA's Bernoulli
draws compare their probabilities with instead of drawing, so other runs can use the same masks.
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
real_bernoulli = torch.bernoulli


def bernoulli_from(uniforms):
    """torch.bernoulli(probs) that keeps where the next given uniform is below probs."""

    def draw(probs):
        return (uniforms.pop(0).reshape(probs.shape) < probs.double()).to(probs.dtype)

    return draw


out = {}
for case, s in spec.items():
    prefix = s.get("inputs", case)
    names = s.get("use") or sorted(k.split("/", 1)[1] for k in tensors if k.startswith(prefix + "/"))
    inputs = [n for n in names if n != "base"]
    order = (["base"] if "base" in names else []) + inputs
    stack = [tensors[f"{prefix}/{n}"] for n in order]
    base_index = 0 if "base" in names else None
    for i in range(s.get("draws", 1)):
        torch.manual_seed(s.get("seed", 0) + i)
        if "uniforms" in s:
            torch.bernoulli = bernoulli_from([tensors[f"{s['uniforms']}/u{j}"] for j in range(len(inputs))])
        params = s["parameters"]  # per-model lists in the order m0, m1, ... (the base takes none)
        out[f"{case}/{i}"] = merge_tensors(
            stack, s["method"], parameters=params, base_index=base_index
        ).contiguous()
        torch.bernoulli = real_bernoulli
save_file(out, sys.argv[2])
