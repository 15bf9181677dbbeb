"""Where workers land on a simulated three-node cluster with logical GPUs (Ray only books them;
the zoo models run on CPU): replicas get distinct GPUs, a tensor-parallel worker's placement
group packs on one node."""

from __future__ import annotations

import pytest
import ray
from ray import serve
from ray.cluster_utils import Cluster

from nexus_ray.config import EngineConfig, RewardConfig, WorkerConfig
from nexus_ray.serving.workers import PolicyWorker, RewardWorker, worker_options


@pytest.fixture(scope="module")
def cluster():
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0})
    for _ in range(2):
        c.add_node(num_cpus=1, num_gpus=2)
    ray.init(address=c.address, log_to_driver=False)
    yield c
    serve.shutdown()
    ray.shutdown()
    c.shutdown()


def _replica_infos(handle, replicas: int, tries: int = 60) -> set:
    """Ask until every replica has answered (requests are spread over replicas at random)."""
    seen = {}
    for _ in range(tries):
        info = handle.info.remote().result()
        seen[(info.node_id, info.gpu_ids, info.placement_group)] = info
        if len(seen) == replicas:
            break
    return set(seen)


def test_tensor_parallel_worker_packs_on_one_node_and_replicas_get_distinct_gpus(cluster):
    small = WorkerConfig(replicas=1, num_cpus=0.1)
    prm = RewardConfig(model="arith-prm", tensor_parallel_size=2)
    prm_app = RewardWorker.options(**worker_options(prm, small)).bind(prm.model_dump())
    prm_handle = serve.run(prm_app, name="prm", route_prefix=None)
    [(_, prm_gpus, pg_id)] = _replica_infos(prm_handle, 1)
    assert prm_gpus == () and pg_id is not None  # the GPUs belong to the shards' bundles
    table = ray.util.placement_group_table()[pg_id]
    assert table["strategy"] == "STRICT_PACK"
    assert [b.get("GPU", 0) for b in table["bundles"].values()] == [1, 1]
    assert len(set(table["bundles_to_node_id"].values())) == 1  # both shards on one node

    policy = EngineConfig(model="arith-policy", num_gpus=1)
    two = WorkerConfig(replicas=2, num_cpus=0.1)
    policy_handle = serve.run(
        PolicyWorker.options(**worker_options(policy, two)).bind(policy.model_dump()),
        name="policy",
        route_prefix=None,
    )
    placed = _replica_infos(policy_handle, 2)
    assert len(placed) == 2
    gpus = {(node, gpu) for node, ids, _ in placed for gpu in ids}
    assert len(gpus) == 2 and all(len(ids) == 1 for _, ids, _ in placed)  # one whole GPU each
    # The PRM's node has no GPU left, so both policy replicas share the other node's two GPUs.
    assert {node for node, _, _ in placed} == {n for n in table["bundles_to_node_id"].values()} ^ {
        n["NodeID"] for n in ray.nodes() if n["Resources"].get("GPU")
    }
    serve.delete("prm")
    serve.delete("policy")


def test_fractional_gpus_share_one_device(cluster):
    half = EngineConfig(model="arith-policy", num_gpus=0.5)
    prm_half = RewardConfig(model="arith-prm", num_gpus=0.5)
    one = WorkerConfig(replicas=1, num_cpus=0.1)
    p = serve.run(
        PolicyWorker.options(**worker_options(half, one)).bind(half.model_dump()),
        name="p-half",
        route_prefix=None,
    )
    r = serve.run(
        RewardWorker.options(**worker_options(prm_half, one)).bind(prm_half.model_dump()),
        name="r-half",
        route_prefix=None,
    )
    [(_, policy_gpus, _)] = _replica_infos(p, 1)
    [(_, prm_gpus, _)] = _replica_infos(r, 1)
    assert len(policy_gpus) == 1 and len(prm_gpus) == 1
    assert ray.available_resources().get("GPU", 0) == pytest.approx(4 - 1.0)  # half a GPU each
