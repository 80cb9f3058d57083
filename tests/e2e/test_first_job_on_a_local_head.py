"""README, "First job on a local cluster", as a new user types it: `make head`, the exports it
prints, the `ray job submit` line it prints (the default pretraining config), `make head-stop`.

Folded into the runs the session makes anyway (each Ray start costs ~25 s): the session's
shared cluster is started by `make head` (tests/ray_head.py, in a copy of the checkout), and the
reference run (conftest.py) is the printed submit line with the tiny run's keys appended; its
final weights, summary and MLflow run are checked in tests/e2e/test_pretrain.py. This test
checks what `make head` printed and that `make head-stop` ends the cluster, so it runs last."""

from __future__ import annotations

import json
import subprocess

from tests import ray_head

STOPS_THE_SHARED_CLUSTER = True  # conftest.py runs this file's tests after the others


def test_make_head_prints_the_lines_that_ran_the_reference_job_and_head_stop_ends_it(
    reference_run,
):
    checkout, export, submit = ray_head.shared_head()
    assert (
        export.startswith("export RAY_ADDRESS=http://127.0.0.1:")
        and "RAY_AUTH_MODE=token" in export
    )
    assert submit == (
        ".venv/bin/ray job submit --working-dir . -- python jobs/pretrain.py"
        f" data.train={checkout}/data/demo/shards/train data.val={checkout}/data/demo/shards/val"
        f" run.dir={checkout}/runs/pretrain/nano"
    )
    assert reference_run == checkout / "runs" / "pretrain" / "nano"  # where the printed line wrote
    summary = json.loads((reference_run / "final" / "summary.json").read_text())
    assert summary["model"] == "nfnet_nano0" and summary["steps"] > 0
    assert (reference_run / "final" / "model.safetensors").stat().st_size > 1e6  # 1.1M params

    stop = subprocess.run(["make", "-s", "head-stop"], cwd=checkout, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    env = ray_head.token_env()
    status = subprocess.run([ray_head.RAY, "status"], capture_output=True, text=True, timeout=120,
                            env=env)  # fmt: skip
    ray_head.ray_stop()  # forget the stopped cluster (a later test starts it again)
    assert stop.returncode == 0 and stop.stdout.strip() == "Ray stopped", stop.stderr
    assert status.returncode != 0  # no cluster left to report on
