"""Behind a headless Service a client sees one address per replica: with round_robin the SDK
keeps a connection to each and spreads its streams over all of them; with pick_first (gRPC's
default) it stays on one."""

from __future__ import annotations

from contextlib import ExitStack

import pytest

from del_client import Client, ClientConfig


@pytest.fixture(scope="module")
def replicas(serve, stories260k):
    from del_server.settings import Settings

    settings = Settings(model=str(stories260k), port=0, metrics_port=-1, grace_s=1.0)
    with ExitStack() as stack:
        yield [stack.enter_context(serve(settings)) for _ in range(2)]


def served_by(replicas) -> list[float]:
    registry = lambda r: r.running.metrics.registry  # noqa: E731
    return [registry(r).get_sample_value("del_requests_total", {"code": "OK"}) for r in replicas]


def generate_eight(replicas, tmp_path, **config) -> list[float]:
    target = "ipv4:" + ",".join(r.target for r in replicas)
    before = served_by(replicas)
    with Client(ClientConfig(target, bundle_cache_dir=tmp_path, **config)) as client:
        for _ in range(8):
            client.generate("Once upon a time", mu=10, max_new_tokens=2).collect()
    return [after - b for after, b in zip(served_by(replicas), before, strict=True)]


def test_round_robin_spreads_one_clients_generations_over_every_replica(replicas, tmp_path):
    served = generate_eight(replicas, tmp_path, load_balancing="round_robin")
    assert sum(served) == 8
    assert min(served) >= 2  # strictly alternating once both connections are up


def test_pick_first_keeps_a_client_on_one_replica(replicas, tmp_path):
    assert sorted(generate_eight(replicas, tmp_path)) == [0, 8]
