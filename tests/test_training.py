"""The shared training loop: a killed run resumes from its last checkpoint."""

import pytest
import torch

from nexus_ray.training.loop import checkpoint_path, fit, resumable


def _run(path, steps: int, crash_at: int | None = None) -> tuple[torch.nn.Linear, list[dict], list[int]]:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    seen: list[int] = []

    def loss_at(step: int) -> torch.Tensor:
        if step == crash_at:
            raise KeyboardInterrupt
        seen.append(step)
        return (model(torch.ones(2, 3)) - 1).pow(2).mean()

    log = fit(model, opt, steps, "test", lambda s: 0.1, loss_at, checkpoint=path, checkpoint_every=2)
    return model, log, seen


def test_a_killed_run_resumes_from_its_last_checkpoint(tmp_path):
    out = tmp_path / "model"
    path = resumable(out, resume=False)
    assert path == checkpoint_path(out) and not path.exists()
    with pytest.raises(KeyboardInterrupt):
        _run(path, steps=6, crash_at=5)
    assert torch.load(path, weights_only=False)["step"] == 4
    model, log, seen = _run(resumable(out, resume=True), steps=6)
    assert seen == [4, 5]  # only the steps after the checkpoint
    assert [r["step"] for r in log] == [0]  # the log kept from before (one entry per 50 steps)
    uninterrupted, _, _ = _run(tmp_path / "other.pt", steps=6)
    assert torch.allclose(model.weight, uninterrupted.weight)  # same batches here: same weights
    assert resumable(out, resume=False) == path and not path.exists()  # a fresh run drops it
