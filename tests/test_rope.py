"""RoPE scaling: parity with transformers' own rope-init functions, published test vectors,
validation errors, and the scaled zoo base running in the transformers engine."""

from __future__ import annotations

import itertools
import math
import random
from typing import ClassVar

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from nexus_ray.config import EngineConfig, RopeConfig
from nexus_ray.rope import apply
from nexus_ray.rope.scaling import RopeBase, compute, yarn_correction_range


def _llama(dim: int, theta: float, max_pos: int) -> LlamaConfig:
    return LlamaConfig(
        hidden_size=dim * 2,
        num_attention_heads=2,
        head_dim=dim,
        num_hidden_layers=1,
        intermediate_size=8,
        vocab_size=16,
        max_position_embeddings=max_pos,
        rope_parameters={"rope_type": "default", "rope_theta": theta},
    )


def _transformers(rope: RopeConfig, config: LlamaConfig, seq_len: int | None) -> tuple[np.ndarray, float]:
    """transformers' answer: the overrides applied to its config, then its own init function."""
    for key, value in apply.config_overrides(rope, config, "hf").items():
        setattr(config, key, value)
    kind = config.rope_parameters["rope_type"]
    if kind == "default":
        inv, att = LlamaRotaryEmbedding.compute_default_rope_parameters(config)
    else:
        inv, att = ROPE_INIT_FUNCTIONS[kind](config, "cpu", seq_len=seq_len)
    return inv.double().numpy(), float(att)


@pytest.fixture
def float64_torch(monkeypatch):
    """Make transformers' rope code (which names torch.float / torch.float32) run in float64.

    In float32 the YaRN blend of a large factor is itself only good to ~2.4e-6 relative (the
    float32 ramp weight times a frequency s times larger than the blend); in float64 the same
    code is exact enough to hold ours to 1e-6, so both the formulas and the precision are checked.
    """
    monkeypatch.setattr(torch, "float", torch.float64)
    monkeypatch.setattr(torch, "float32", torch.float64)


def _grid() -> list[tuple[RopeConfig, int, float, int, int | None]]:
    rng = random.Random(0)
    cases = []
    geometries = [(32, 1e4, 128), (64, 1e4, 4096), (128, 1e4, 4096), (128, 1e6, 32768), (64, 5e5, 8192)]
    for (dim, theta, orig), factor in itertools.product(geometries, [1.0, 2.0, 4.0, 8.0, 16.0, 40.0]):
        cases += [(RopeConfig(rope_type=t, factor=factor), dim, theta, orig, None) for t in ("linear", "ntk")]
        cases.append((RopeConfig(rope_type="default"), dim, theta, orig, None))
        for seq in (None, orig // 2, orig, 2 * orig, 8 * orig + 3):
            cases.append((RopeConfig(rope_type="dynamic", factor=factor), dim, theta, orig, seq))
        yarns = [
            {},
            {"beta_fast": 128, "beta_slow": 2},
            {"beta_fast": 16.5, "beta_slow": 0.5, "truncate": False},
            {"mscale": 1.0, "mscale_all_dim": 1.0},
            {"mscale": 0.707, "mscale_all_dim": 1.0},
            {"mscale": 1.0},
            {"attention_factor": 1.1},
            {"truncate": False},
        ]
        for extra in yarns:
            cases.append(
                (
                    RopeConfig(
                        rope_type="yarn", factor=factor, original_max_position_embeddings=orig, **extra
                    ),
                    dim,
                    theta,
                    orig,
                    None,
                )
            )
        for low, high in ((1.0, 4.0), (2.0, 8.0)):
            cases.append(
                (
                    RopeConfig(
                        rope_type="llama3",
                        factor=factor,
                        low_freq_factor=low,
                        high_freq_factor=high,
                        original_max_position_embeddings=orig,
                    ),
                    dim,
                    theta,
                    orig,
                    None,
                )
            )
        long = [round(rng.uniform(1, factor + 1), 3) for _ in range(dim // 2)]
        short = [round(rng.uniform(1, 2), 3) for _ in range(dim // 2)]
        for seq, att in itertools.product((None, orig, orig + 1), (None, 1.25)):
            cases.append(
                (
                    RopeConfig(
                        rope_type="longrope",
                        factor=factor,
                        long_factor=long,
                        short_factor=short,
                        original_max_position_embeddings=orig,
                        attention_factor=att,
                    ),
                    dim,
                    theta,
                    orig,
                    seq,
                )
            )
    return cases


GRID = _grid()


def _worst_relative_error(rtol: float) -> float:
    worst = 0.0
    for rope, dim, theta, orig, seq in GRID:
        ours = compute(rope, RopeBase(dim, theta, orig), seq_len=seq)
        inv, att = _transformers(rope, _llama(dim, theta, orig), seq)
        rel = float(np.max(np.abs(ours.inv_freq - inv) / inv))
        worst = max(worst, rel)
        assert rel < rtol, (rope, dim, theta, orig, seq, rel)
        assert ours.attention_factor == pytest.approx(att, rel=1e-6), (rope, dim, theta, orig, seq)
    return worst


def test_parity_with_transformers_over_a_grid(float64_torch):
    assert len(GRID) > 500
    _worst_relative_error(1e-6)


def test_parity_with_transformers_in_its_own_float32():
    """transformers as it runs: within its float32 rounding (see ``float64_torch``)."""
    assert 0 < _worst_relative_error(4e-6)  # not vacuous: float32 does differ


LLAMA2 = RopeBase(128, 1e4, 4096)


@pytest.mark.parametrize(
    "base, factor, extra, expected_range, expected_att",
    [
        (LLAMA2, 16, {}, (20, 46), 1.277259),
        (LLAMA2, 32, {}, (20, 46), 1.346574),
        (LLAMA2, 2, {}, (20, 46), 1.069315),
        (RopeBase(128, 1e6, 32768), 4, {}, (23, 40), 1.138629),
        (RopeBase(64, 1e4, 4096), 40, {"mscale": 1, "mscale_all_dim": 1}, (10, 23), 1.0),
        (
            RopeBase(64, 150000, 4096),
            32,
            {"truncate": False},
            (8.092779115512402, 17.39802450158856),
            1.346574,
        ),
    ],
)
def test_published_yarn_vectors(base, factor, extra, expected_range, expected_att):
    rope = RopeConfig(
        rope_type="yarn",
        factor=factor,
        original_max_position_embeddings=base.max_position_embeddings,
        **extra,
    )
    assert yarn_correction_range(rope, base) == pytest.approx(expected_range, rel=1e-12)
    assert compute(rope, base).attention_factor == pytest.approx(expected_att, abs=5e-7)


def test_llama2_yarn_per_pair_vector():
    rope = RopeConfig(rope_type="yarn", factor=16, original_max_position_embeddings=4096)
    inv = compute(rope, LLAMA2).inv_freq
    expected = {
        0: 1.0,
        20: 5.6234129e-02,
        21: 4.6940859e-02,
        30: 8.5268440e-03,
        33: 4.6004355e-03,
        45: 1.5177164e-04,
        46: 8.3345090e-05,
        63: 7.2173880e-06,
    }
    for i, value in expected.items():
        assert inv[i] == pytest.approx(value, rel=1e-6), i
    assert np.all(np.diff(inv) < 0)
    plain = compute(RopeConfig(), LLAMA2).inv_freq
    assert np.all(plain / 16 <= inv * (1 + 1e-12)) and np.all(inv <= plain * (1 + 1e-12))


def test_other_published_vectors():
    dyn = RopeConfig(rope_type="dynamic", factor=2)
    base = RopeBase(128, 1e4, 4096)
    for seq, theta in ((4096, 10000.0), (8192, 30527.74), (16384, 72195.86)):
        inv0 = compute(dyn, base, seq_len=seq).inv_freq[1]  # = theta' ** (-2/128)
        assert inv0 ** (-64) == pytest.approx(theta, rel=1e-6)
    llama3 = compute(
        RopeConfig(rope_type="llama3", factor=8, original_max_position_embeddings=8192),
        RopeBase(128, 5e5, 8192),
    ).inv_freq
    plain = compute(RopeConfig(), RopeBase(128, 5e5, 8192)).inv_freq
    assert (np.isclose(llama3, plain).sum(), np.isclose(llama3, plain / 8).sum()) == (29, 29)
    lr = RopeConfig(
        rope_type="longrope",
        factor=32,
        long_factor=[1.0] * 64,
        short_factor=[1.0] * 64,
        original_max_position_embeddings=4096,
    )
    assert compute(lr, RopeBase(128, 1e4, 4096)).attention_factor == pytest.approx(1.190238, abs=5e-7)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"rope_type": "yarn", "factor": 0.5}, "factor must be >= 1"),
        ({"rope_type": "linear"}, "needs a factor"),
        ({"rope_type": "yarn", "factor": 4, "beta_fast": 1, "beta_slow": 2}, "beta_fast"),
        ({"rope_type": "yarn", "factor": 4, "beta_fast": 8, "beta_slow": 8}, "beta_fast"),
        ({"rope_type": "yarn", "factor": 4, "beta_slow": 0}, "greater than 0"),
        ({"rope_type": "linear", "factor": 4, "beta_fast": 64}, "does not use beta_fast"),
        (
            {"rope_type": "llama3", "factor": 4, "low_freq_factor": 4, "high_freq_factor": 2},
            "high_freq_factor",
        ),
        ({"rope_type": "longrope", "factor": 4, "short_factor": [1.0]}, "needs long_factor"),
        ({"rope_type": "longrope", "factor": 4, "short_factor": [1.0], "long_factor": [0.0]}, "positive"),
        ({"rope_type": "yarn", "factor": 4, "attention_factor": -1}, "greater than 0"),
        ({"rope_type": "rotary9"}, "rope_type"),
        ({"rope_type": "yarn", "factor": 4, "betafast": 3}, "Extra inputs"),
    ],
)
def test_invalid_configs_raise(fields, message):
    with pytest.raises(ValidationError, match=message):
        RopeConfig(**fields)


def test_factor_list_of_the_wrong_length_raises():
    rope = RopeConfig(rope_type="longrope", factor=4, long_factor=[1.0] * 3, short_factor=[1.0] * 3)
    with pytest.raises(ValueError, match="long_factor has 3 entries; this model has 16 rotary pairs"):
        compute(rope, RopeBase(32, 1e4, 128))
    with pytest.raises(ValueError, match="16 rotary pairs"):
        apply.config_overrides(rope, _llama(32, 1e4, 128), "vllm")


def test_vllm_overrides_convert_attention_factor_when_dropped():
    rope = RopeConfig(rope_type="yarn", factor=8, original_max_position_embeddings=128, attention_factor=1.3)
    base = RopeBase(32, 1e4, 128)
    params = apply.rope_parameters(rope, base)
    kept = apply._for_installed_vllm(rope, dict(params), keys={"beta_fast", "beta_slow", "attention_factor"})
    assert kept["attention_factor"] == 1.3
    old = apply._for_installed_vllm(rope, dict(params), keys={"beta_fast", "beta_slow", "attn_factor"})
    assert "attention_factor" not in old
    assert old["attn_factor"] * (0.1 * math.log(8) + 1) == pytest.approx(1.3)
    with pytest.raises(ValueError, match="neither attention_factor nor attn_factor"):
        apply._for_installed_vllm(rope, dict(params), keys={"beta_fast", "beta_slow"})
    untruncated = RopeConfig(rope_type="yarn", factor=8, original_max_position_embeddings=128, truncate=False)
    with pytest.raises(ValueError, match="silently drop YaRN keys truncate"):
        apply._for_installed_vllm(
            untruncated, apply.rope_parameters(untruncated, base), keys={"attention_factor"}
        )


def test_scaled_zoo_base_runs_in_the_transformers_engine():
    """The rope section reaches the model's own rotary module, and the model retrieves a
    passkey from a prompt of ~4x its trained context."""
    from nexus_ray.engines import build_policy_engine
    from nexus_ray.engines.base import GenerationParams
    from nexus_ray.tasks.passkey import passkey

    rope = RopeConfig(rope_type="yarn", factor=4)
    engine = build_policy_engine(EngineConfig(model="rope-base", rope=rope))
    rotary = engine.model.model.rotary_emb
    expected = compute(rope, RopeBase.from_hf_config(apply.load_config(engine.model_path, None)))
    assert torch.allclose(rotary.inv_freq.double(), torch.from_numpy(expected.inv_freq), rtol=1e-6)
    assert rotary.attention_scaling == pytest.approx(expected.attention_factor)
    assert engine.max_positions == 512
    example = passkey(500, 0.5, random.Random(1))
    [result] = engine.generate_sync([example.prompt], GenerationParams(n=1, temperature=0.0, max_tokens=6))
    assert result.prompt_tokens == 495  # <s> + 500 characters less the answer and its newline
    assert result.completions[0].text.startswith(example.answer)


def test_engine_config_rope_section_from_yaml(tmp_path):
    from nexus_ray.config import ConfigError, load_yaml

    good = tmp_path / "good.yaml"
    good.write_text("model: rope-base\nrope:\n  rope_type: yarn\n  factor: 8\n  beta_fast: 16\n")
    assert load_yaml(good, EngineConfig).rope == RopeConfig(rope_type="yarn", factor=8, beta_fast=16)
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: rope-base\nrope:\n  rope_type: yarn\n  factor: 0.5\n")
    with pytest.raises(ConfigError, match=r"rope: Value error, factor must be >= 1"):
        load_yaml(bad, EngineConfig)


def test_evaluate_measures_the_extension_on_the_zoo_base():
    """Within its trained context the base retrieves the key; at 4x it fails unscaled and
    perplexity rises, and YaRN recovers part of both: the protocol can tell methods apart."""
    from nexus_ray.rope.evaluate import evaluate
    from nexus_ray.zoo.registry import resolve

    path = resolve("rope-base")
    kwargs = dict(documents_per_length=2, trials=4, depths=(0.0, 0.5))
    plain = evaluate(path, None, [512, 128], **kwargs)
    yarn = evaluate(path, RopeConfig(rope_type="yarn", factor=4), [512], **kwargs)
    assert list(plain["perplexity"]) == ["128", "512"]  # increasing order, whatever was asked
    assert plain["passkey"]["128"]["accuracy"] >= 0.75
    assert plain["passkey"]["512"]["accuracy"] <= 0.25
    assert plain["perplexity"]["512"] > 1.2 * plain["perplexity"]["128"]
    assert yarn["perplexity"]["512"] < plain["perplexity"]["512"]
    assert yarn["passkey"]["512"]["answer_nll"] < plain["passkey"]["512"]["answer_nll"]
    assert yarn["rope"] == {"rope_type": "yarn", "factor": 4.0}


def test_sliding_window_scores_every_token_once():
    from nexus_ray.rope.evaluate import sliding_window_nll

    class Recorder(torch.nn.Module):
        scored: ClassVar[list[int]] = []

        def forward(self, input_ids, labels):
            self.scored.append(int((labels != -100).sum()))
            return type("Out", (), {"loss": torch.tensor(0.0)})()

    model = Recorder()
    assert len(sliding_window_nll(model, list(range(100)), window=40, stride=25)) == 4
    assert model.scored == [40, 25, 25, 10]  # windows 0-40, 25-65, 50-90, 75-100


def test_cli_rope_eval_writes_json_plot_and_table(tmp_path):
    import json
    import subprocess
    import sys

    args = [
        "rope",
        "eval",
        "--methods",
        "none,yarn",
        "--lengths",
        "64,256",
        "--documents",
        "1",
        "--trials",
        "1",
        "--rope",
        '{"rope_type": "linear", "factor": 2}',
        "--out",
        str(tmp_path),
    ]
    r = subprocess.run(
        [sys.executable, "-m", "nexus_ray.cli", *args], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "rope_eval.json").read_text())
    assert set(summary["methods"]) == {"none", "yarn", "custom"} and summary["original_context"] == 128
    assert summary["methods"]["yarn"]["rope"] == {
        "64": {"rope_type": "yarn", "factor": 1.0},
        "256": {"rope_type": "yarn", "factor": 2.0},
    }
    assert (tmp_path / "rope_eval.png").stat().st_size > 10_000
    assert "| **best** |" in r.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "nexus_ray.cli", "rope", "eval", "--methods", "yarn,ropex"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and "unknown method 'ropex'" in bad.stderr and "Traceback" not in bad.stderr
