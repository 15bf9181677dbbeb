"""Execute a merge plan tensor by tensor, in this process or as parallel Ray tasks.

    from nexus_ray.merge.run import merge, merge_into
    merge("config.yaml", "out/merged", workers=4)       # or a dict config
    merge_into(model, "config.yaml")                    # into a loaded transformers model, no file

With ``workers > 1`` each output tensor is one Ray task (1 CPU) that reads its inputs from the
memory-mapped checkpoints itself and returns the merged bytes; the driver writes them into the
pre-laid-out shards. At most ``2 * workers`` tasks are in flight, so memory stays bounded by
a few tensors per worker whatever the model size. On a cluster the model paths must be
visible to every node (a shared filesystem).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from nexus_ray.cluster import ray_session
from nexus_ray.merge import methods
from nexus_ray.merge.io import ModelReader, ShardedWriter, commit, copy_side_files, temp_dir_for, tensor_bytes
from nexus_ray.merge.plan import Plan, TensorPlan, build

DEFAULT_SHARD_BYTES = 2 * 1024**3


class MergeError(ValueError):
    """Bad input found while merging (e.g. NaN/Inf in a tensor); nothing was written to the output."""


@dataclass
class MergeStats:
    out: Path
    tensors: int
    bytes_written: int
    seconds: float


_READERS: dict[Path, ModelReader] = {}


def _reader(path: Path) -> ModelReader:
    """One reader per checkpoint per process (Ray workers keep theirs between tasks)."""
    if path not in _READERS:
        _READERS[path] = ModelReader(path)
    return _READERS[path]


def merge_tensor(plan: Plan, tp: TensorPlan, seed: int) -> torch.Tensor:
    """Merge one output tensor from the checkpoints; NaN/Inf inputs raise MergeError."""
    paths = ([plan.base] if plan.base is not None else []) + list(plan.models)
    loaded = {}
    for p in paths:
        t = _reader(p).get(tp.name)
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise MergeError(f"tensor {tp.name!r} of {p} contains NaN or Inf")
        loaded[p] = t.to(plan.work_dtype) if plan.work_dtype is not None else t
    base = loaded[plan.base] if plan.base is not None else None
    inputs = [loaded[p] for p in plan.models]
    if base is not None and not base.is_floating_point():
        return base  # integer buffers (e.g. position ids) are copied from the base
    out = methods.call(plan.method, base, inputs, tp.model_params, tp.global_params, seed, tp.name)
    return out.to(tp.out_dtype)


def merge_into(model: torch.nn.Module, config: dict | str | Path, seed: int = 0) -> int:
    """Merge a config's tensors straight into a loaded model's weights, in place, writing nothing.

    The tensors are ``merge_tensor``'s, so the model ends up holding exactly what loading
    ``merge``'s output would give it (tied weights follow their storage): a merge search whose
    trial scores the merge itself skips the safetensors round trip. Shapes are checked before
    any weight changes; a NaN/Inf input (MergeError) leaves the model partly merged.
    Returns the number of tensors merged.
    """
    plan = build(config)
    state = model.state_dict()
    for tp in plan.tensors:
        if tp.name not in state or tuple(state[tp.name].shape) != tp.shape:
            raise MergeError(f"tensor {tp.name!r} {list(tp.shape)} has no weight of that shape in the model")
    with torch.no_grad():
        for tp in plan.tensors:
            state[tp.name].copy_(merge_tensor(plan, tp, seed))
    return len(plan.tensors)


def _merge_bytes(plan: Plan, name: str, seed: int):
    tp = next(t for t in plan.tensors if t.name == name)
    torch.set_num_threads(1)
    return tensor_bytes(merge_tensor(plan, tp, seed)).obj  # a uint8 numpy array: zero-copy in Ray


def merge(
    config: dict | str | Path,
    out_dir: str | Path,
    workers: int = 1,
    seed: int = 0,
    overwrite: bool = False,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    progress: bool = True,
) -> MergeStats:
    """Merge the models of a mergekit-style config into ``out_dir`` (written atomically)."""
    plan = build(config)
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists (pass overwrite=True / --overwrite to replace it)")
    start = time.perf_counter()
    tmp = temp_dir_for(out)
    try:
        entries = [(t.name, t.out_dtype, t.shape) for t in plan.tensors]
        writer = ShardedWriter(tmp, entries, shard_bytes)
        total = sum(t.nbytes for t in plan.tensors)
        bar = tqdm(
            total=total, unit="B", unit_scale=True, desc=f"merge {plan.method.name}", disable=not progress
        )
        if workers <= 1:
            for tp in plan.tensors:
                writer.write(tp.name, tensor_bytes(merge_tensor(plan, tp, seed)))
                bar.update(tp.nbytes)
        else:
            with ray_session(num_cpus=workers):
                _merge_on_ray(plan, writer, workers, seed, bar)
        bar.close()
        copy_side_files(plan.config_source, plan.tokenizer_source, tmp, plan.out_dtype)
        writer.close()  # the headers, last: the partial output loads only from here to the rename
        commit(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return MergeStats(out, len(plan.tensors), total, time.perf_counter() - start)


def _merge_on_ray(plan: Plan, writer: ShardedWriter, workers: int, seed: int, bar: tqdm) -> None:
    import ray

    task = ray.remote(num_cpus=1, max_retries=0)(_merge_bytes)
    plan_ref = ray.put(plan)
    todo = sorted(plan.tensors, key=lambda t: -t.nbytes)  # big tensors first: no long tail
    sizes = {t.name: t.nbytes for t in todo}
    in_flight: dict = {}
    try:
        while todo or in_flight:
            while todo and len(in_flight) < 2 * workers:
                tp = todo.pop(0)
                in_flight[task.remote(plan_ref, tp.name, seed)] = tp.name
            done, _ = ray.wait(list(in_flight), num_returns=1)
            for ref in done:
                name = in_flight.pop(ref)
                try:
                    data = ray.get(ref)
                except ray.exceptions.RayTaskError as err:
                    raise (err.cause if isinstance(err.cause, Exception) else err) from None
                writer.write(name, memoryview(data))
                del data
                bar.update(sizes[name])
    finally:
        for ref in in_flight:
            ray.cancel(ref)
