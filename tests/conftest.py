import os
import sys
from pathlib import Path

import pytest
import torch

from pipeline.data.demo_set import DemoDataConfig, build_demo_data
from pipeline.process import setup_process

# Two cores: keep intra-op threads predictable and tests deterministic.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
setup_process()  # what every job sets up: the tests call the library in-process, as jobs do


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """Shards of a 4-class demo set (40 pool images at 40 px, 16 held-out): read-only, shared."""
    out = tmp_path_factory.mktemp("tiny-data")
    cfg = DemoDataConfig(out=str(out), classes=4, train_per_class=10, val_per_class=4,
                         reference=4, planted=0, size=40, workers=1, parallel_ingest=False)  # fmt: skip
    return build_demo_data(cfg) / "shards"


@pytest.fixture(scope="session")
def ray_session():
    """Stops the shared cluster (if one started) when the session ends; module-scoped fixtures
    that submit jobs depend on this and call `tests.ray_head.shared_cluster()` themselves."""
    from tests.ray_head import ray_stop

    yield
    ray_stop()


@pytest.fixture
def local_ray(ray_session):
    """No Ray running before the test (the shared cluster is stopped), so a job launched
    without RAY_ADDRESS starts a local Ray of its own, as a user's does; stopped after."""
    from tests.ray_head import ray_stop

    ray_stop()
    yield
    ray_stop()


@pytest.fixture
def ray_cluster(ray_session, monkeypatch):
    """The session's loopback cluster (tests/ray_head.py: started once, again only if a test
    stopped Ray). Jobs started from here, in this process or in subprocesses, connect to it
    through RAY_ADDRESS. Yields the job API's address and the env for the `ray` CLI."""
    from tests.ray_head import shared_cluster

    gcs, jobs, env = shared_cluster()
    monkeypatch.setenv("RAY_ADDRESS", gcs)
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    if "ray" in sys.modules:  # Ray keeps the auth mode it read first in this process
        from ray._private.authentication_test_utils import reset_auth_token_state

        reset_auth_token_state()
    yield jobs, env
