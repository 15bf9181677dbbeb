"""Execute a merge plan tensor by tensor, in this process or as Ray tasks over a cluster's nodes.

    from nexus_ray.merge.run import merge, merge_into
    merge("config.yaml", "out/merged", workers=4)       # or a dict config
    merge_into(model, "config.yaml")                    # into a loaded transformers model, no file

In this process, each tensor is merged by the fused kernels on every core while the previous
one is written. ``workers > 1`` pays only across machines: on a Ray cluster of several nodes
(the session this process runs in, or ``RAY_ADDRESS``), each output tensor is one Ray task that
reads its inputs from the memory-mapped checkpoints on its node and returns the merged bytes;
each task holds ``threads`` CPUs (the cluster's CPUs split between the workers, so the kernels'
threads never oversubscribe a node) and the driver writes every byte into the pre-laid-out
shards, so only the driver's node needs to reach the output. The model paths must be readable
at the same path on every node (a shared filesystem); a task that cannot read one fails the merge
with the node and the path named. On one machine, or with no cluster to join, ``workers > 1``
merges in this process: Ray would only add start-up and copies on the same cores. At most
``2 * workers`` tasks are in flight, so memory stays bounded by a few tensors per worker.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from nexus_ray.cluster import ray_session
from nexus_ray.merge import fused, methods
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
    where: str = "this process"  # or the Ray nodes and what each merged
    per_node: dict[str, tuple[int, int]] | None = None  # "IP (node id)" -> (tensors, bytes), on Ray


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
        if t.is_floating_point() and not _finite(t):
            raise MergeError(f"tensor {tp.name!r} of {p} contains NaN or Inf")
        loaded[p] = t.to(plan.work_dtype) if plan.work_dtype is not None else t
    base = loaded[plan.base] if plan.base is not None else None
    inputs = [loaded[p] for p in plan.models]
    if base is not None and not base.is_floating_point():
        return base  # integer buffers (e.g. position ids) are copied from the base
    out = methods.call(plan.method, base, inputs, tp.model_params, tp.global_params, seed, tp.name)
    return out.to(tp.out_dtype)


def _finite(t: torch.Tensor) -> bool:
    if fused.takes([t]):
        return bool(fused.all_finite(fused.as_array(t), t.dtype == torch.bfloat16))
    return bool(torch.isfinite(t).all())


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


def _merge_bytes(plan: Plan, name: str, seed: int, threads: int) -> tuple:
    """One Ray task: merge tensor ``name`` with ``threads`` threads on this node; its bytes and
    the node (IP and id)."""
    import numba
    import ray

    node = f"{ray.util.get_node_ip_address()} ({ray.get_runtime_context().get_node_id()[:8]})"
    torch.set_num_threads(threads)
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    tp = next(t for t in plan.tensors if t.name == name)
    try:
        out = merge_tensor(plan, tp, seed)
    except OSError as err:
        raise MergeError(
            f"node {node} cannot read {err.filename or err}: with --workers on a cluster the models must "
            "be at the same path on every node (a shared filesystem)"
        ) from None
    return tensor_bytes(out).obj, node  # a uint8 numpy array: zero-copy in Ray


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
        where, per_node = "this process", None
        if workers > 1 and _cluster_to_join():
            with ray_session():
                nodes = _cpu_nodes()
                if len(nodes) > 1:
                    per_node = _merge_on_ray(plan, writer, workers, seed, bar, sum(nodes.values()))
                    where = f"{len(per_node)} Ray nodes"
                else:
                    _merge_here(plan, writer, seed, bar)
                    where = "this process (the cluster has one node)"
        else:
            _merge_here(plan, writer, seed, bar)
            if workers > 1:
                where = "this process (no Ray cluster to join: Ray on these cores would only add start-up)"
        bar.close()
        copy_side_files(plan.config_source, plan.tokenizer_source, tmp, plan.out_dtype)
        writer.close()  # the headers, last: the partial output loads only from here to the rename
        commit(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return MergeStats(out, len(plan.tensors), total, time.perf_counter() - start, where, per_node)


def _cluster_to_join() -> bool:
    """A Ray session is running in this process, or RAY_ADDRESS names a cluster."""
    if os.environ.get("RAY_ADDRESS"):
        return True
    return "ray" in sys.modules and sys.modules["ray"].is_initialized()


def _cpu_nodes() -> dict[str, float]:
    """The alive nodes with CPUs: node id -> CPUs."""
    import ray

    return {
        n["NodeID"]: n["Resources"]["CPU"]
        for n in ray.nodes()
        if n["Alive"] and n["Resources"].get("CPU", 0) > 0
    }


def _merge_here(plan: Plan, writer: ShardedWriter, seed: int, bar: tqdm) -> None:
    """Merge tensor by tensor in this process (the kernels use every core), writing each merged
    tensor from a second thread while the next one merges."""
    with ThreadPoolExecutor(max_workers=1) as io:
        pending: list[Future] = []
        for tp in plan.tensors:
            out = merge_tensor(plan, tp, seed)
            pending.append(io.submit(writer.write, tp.name, tensor_bytes(out)))
            bar.update(tp.nbytes)
            while len(pending) > 1:  # at most one tensor waits for the disk: memory stays bounded
                pending.pop(0).result()
        for f in pending:
            f.result()


def _merge_on_ray(
    plan: Plan, writer: ShardedWriter, workers: int, seed: int, bar: tqdm, cpus: float
) -> dict[str, tuple[int, int]]:
    """Tensors as Ray tasks of ``cpus / workers`` CPUs each; returns per node (tensors, bytes)."""
    import ray

    threads = max(1, int(cpus // workers))
    task = ray.remote(num_cpus=threads, max_retries=0)(_merge_bytes)
    plan_ref = ray.put(plan)
    todo = sorted(plan.tensors, key=lambda t: -t.nbytes)  # big tensors first: no long tail
    sizes = {t.name: t.nbytes for t in todo}
    in_flight: dict = {}
    per_node: dict[str, tuple[int, int]] = {}
    try:
        while todo or in_flight:
            while todo and len(in_flight) < 2 * workers:
                tp = todo.pop(0)
                in_flight[task.remote(plan_ref, tp.name, seed, threads)] = tp.name
            done, _ = ray.wait(list(in_flight), num_returns=1)
            for ref in done:
                name = in_flight.pop(ref)
                try:
                    data, node = ray.get(ref)
                except ray.exceptions.RayTaskError as err:
                    raise (err.cause if isinstance(err.cause, Exception) else err) from None
                writer.write(name, memoryview(data))
                del data
                count, nbytes = per_node.get(node, (0, 0))
                per_node[node] = (count + 1, nbytes + sizes[name])
                bar.update(sizes[name])
    finally:
        for ref in in_flight:
            ray.cancel(ref)
    return per_node
