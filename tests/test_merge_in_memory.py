"""In-memory merges (``merge_into``) equal on-disk ones bit for bit, on the zoo experts.

The merge search scores its trials with weights merged straight into a loaded model; these
tests hold that model to what ``merge`` writes and transformers loads back.
"""

from __future__ import annotations

import pytest
import torch

from nexus_ray.engines.hf import HFPolicyEngine
from nexus_ray.merge.run import MergeError, merge, merge_into
from nexus_ray.zoo.registry import resolve

EXPERTS = ["arith-expert-addsub", "arith-expert-mul"]


def _config(method: str, dtype: str = "float32") -> dict:
    models = [
        {"model": m, "parameters": {"weight": w, "density": d}}
        for m, w, d in zip(EXPERTS, [0.7, 0.4], [0.6, 0.35])
    ]
    if method == "linear":
        for m in models:
            del m["parameters"]["density"]
    cfg = {"merge_method": method, "base_model": "arith-policy", "models": models, "dtype": dtype}
    if method != "linear":
        cfg["parameters"] = {"lambda": 1.1}
    return cfg


@pytest.fixture(scope="module")
def engine():
    """One scoring engine for every test, as one trial process keeps it across trials."""
    return HFPolicyEngine(resolve("arith-policy"), device="cpu")


CASES = [("linear", "float32"), ("ties", "float32"), ("dare_ties", "float32"), ("ties", "bfloat16")]


@pytest.mark.parametrize("method,dtype", CASES)
def test_in_memory_merge_equals_the_loaded_on_disk_merge(engine, tmp_path, method, dtype):
    cfg = _config(method, dtype)
    merge(cfg, tmp_path / "out", seed=3, progress=False)
    on_disk = HFPolicyEngine(tmp_path / "out", device="cpu").model.state_dict()
    assert merge_into(engine.model, cfg, seed=3) == 38
    in_memory = engine.model.state_dict()
    assert in_memory.keys() == on_disk.keys()
    for name, t in on_disk.items():
        assert torch.equal(in_memory[name], t), name
    assert engine.model.lm_head.weight.data_ptr() == engine.model.model.embed_tokens.weight.data_ptr()


def test_dare_seed_changes_the_in_memory_merge(engine):
    cfg = _config("dare_ties")
    merge_into(engine.model, cfg, seed=3)
    first = engine.model.model.embed_tokens.weight.clone()
    merge_into(engine.model, cfg, seed=4)
    assert not torch.equal(first, engine.model.model.embed_tokens.weight)


def test_a_model_of_other_shapes_is_refused_untouched():
    small = HFPolicyEngine(resolve("arith-policy-small"), device="cpu").model
    before = {k: v.clone() for k, v in small.state_dict().items()}
    with pytest.raises(MergeError, match="no weight of that shape"):
        merge_into(small, _config("ties"))
    assert all(torch.equal(before[k], v) for k, v in small.state_dict().items())
