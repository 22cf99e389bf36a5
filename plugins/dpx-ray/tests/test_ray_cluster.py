"""The ray runner on a two-node cluster (``ray.cluster_utils.Cluster``: two raylets on this machine)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

import dpx
from dpx.core.producer import resolve_seed
from dpx.core.runners import InProcessRunner

ray = pytest.importorskip("ray")

from ray.cluster_utils import Cluster  # noqa: E402

from dpx_ray.runner import RayRunner  # noqa: E402



@pytest.fixture
def cluster():
    if ray.is_initialized():  # another module's Ray; this test needs its own
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()


def test_actors_spread_over_nodes_and_survive_losing_one(cluster, caplog):
    from dpx.testing_envs import Noise

    config = dpx.EnvironmentConfig(Noise, runner="ray", workers=2, seed=5, runner_kwargs={
        "address": cluster.address, "num_cpus": 0.5, "timeout": 30,
    })
    key = resolve_seed(5)[1]
    with InProcessRunner(dpx.EnvironmentConfig(Noise, seed=5), key) as reference:
        expected = [reference.produce(np.arange(k * 40, (k + 1) * 40))["input"].copy() for k in range(2)]

    runner = RayRunner(config, key)
    try:
        runner.start()
        assert ray.is_initialized() and runner._started_ray
        nodes = {slot.node_id for slot in runner.slots}
        assert len(nodes) == 2, "both actors landed on one node"
        assert np.array_equal(runner.produce(np.arange(40))["input"], expected[0])

        lost = next(node for node in cluster.worker_nodes)
        cluster.remove_node(lost)  # its actor dies with it; the other node (0.5 CPU free) takes its place
        with caplog.at_level(logging.WARNING, logger="dpx.ray"):
            assert np.array_equal(runner.produce(np.arange(40, 80))["input"], expected[1])
        assert "restart 1 of 3" in caplog.text and "died (ActorDiedError: its node has died" in caplog.text
        assert len({slot.node_id for slot in runner.slots}) == 1
    finally:
        runner.close()
    assert not ray.is_initialized(), "the runner started its connection to the cluster, so it closes it"
