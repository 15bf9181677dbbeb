"""Shared fixtures: the zoo engines are loaded once per test session (they are small)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def policy_engine():
    from nexus_ray.engines.hf import HFPolicyEngine
    from nexus_ray.zoo.registry import resolve

    return HFPolicyEngine(resolve("arith-policy"))


@pytest.fixture(scope="session")
def prm_engine():
    from nexus_ray.engines.hf import HFRewardEngine
    from nexus_ray.zoo.registry import resolve

    return HFRewardEngine(resolve("arith-prm"))
