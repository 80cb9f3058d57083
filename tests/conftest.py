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


@pytest.fixture
def image_tree(tmp_path) -> Path:
    """A small folder of images to ingest, bad files included (tests/builders.py)."""
    from tests.builders import image_tree

    return image_tree(tmp_path / "raw")


@pytest.fixture(scope="session")
def sweep_csv(tmp_path_factory) -> Path:
    """4 models x 6 epoch budgets x 5 LRs in our sweep format, plus a failed and a running row."""
    from pipeline.scaling.synthetic import SweepSpec, sweep_rows, write_sweep_csv

    rows = sweep_rows(SweepSpec(noise=0.003))
    rows.append({**rows[0], "status": "failed", "heldout_loss": ""})
    rows.append({**rows[1], "status": "running", "heldout_loss": "0.5"})
    return write_sweep_csv(tmp_path_factory.mktemp("sweep") / "results.csv", rows)


@pytest.fixture(scope="module")
def timm():
    """timm from `make timm` (runs/bench/timm-pkg), or the test skips saying so."""
    from pipeline.testing.timm import TIMM_DIR, import_timm

    try:
        return import_timm()
    except ImportError:
        pytest.skip(f"timm is not installed in {TIMM_DIR}: run `make timm`")


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


@pytest.fixture(scope="session")
def reference_run(tiny_data, ray_session) -> Path:
    """The tiny run (tests/pretrain_runs.py), submitted the way README's "First job on a local
    cluster" says: the `export` and `ray job submit` lines the shared cluster's `make head`
    printed, run in its checkout copy, with the tiny run's keys appended (its data is at the
    printed place, data/demo/shards, linked to the session's tiny set). The worker node has
    joined since, and the workers are placed one per node: the users' path, multi-node,
    uninterrupted. The killed, preempted and restarted runs are single-node (both workers on
    the head), so their bitwise comparisons with this one also check that the multi-node run
    trained exactly what one node would have."""
    import subprocess

    from tests.pretrain_runs import TINY
    from tests.ray_head import shared_head

    checkout, export, submit = shared_head()
    (checkout / "data" / "demo").mkdir(parents=True)
    (checkout / "data" / "demo" / "shards").symlink_to(tiny_data)
    command = f"{export}\n{submit} {' '.join(TINY)} cluster.placement=STRICT_SPREAD"
    out = subprocess.run(["bash", "-c", command], cwd=checkout, capture_output=True, text=True,
                         timeout=600)  # fmt: skip
    assert out.returncode == 0 and "succeeded" in out.stdout, (
        out.stdout[-3000:] + out.stderr[-2000:]
    )
    return checkout / "runs" / "pretrain" / "nano"


# Where a test lives says what it needs (pyproject.toml's markers): unit/ starts no services;
# e2e/ starts real ones (Ray, DeepSpeed workers, MLflow, storage emulators) and runs in
# `make test`; chaos/ is the long fault-injection suite (`make chaos`, not `make test`).
KINDS = {"e2e": ("e2e",), "chaos": ("chaos", "e2e", "slow")}


def pytest_collection_modifyitems(items):
    for item in items:
        for marker in KINDS.get(item.path.parent.name, ()):
            item.add_marker(marker)
    # A module that stops the session's cluster (`make head-stop`) runs after the others.
    items.sort(key=lambda i: getattr(getattr(i, "module", None), "STOPS_THE_SHARED_CLUSTER", False))
