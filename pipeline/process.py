"""What every process of the pipeline sets up for itself, since importing the library sets
nothing: storage defaults (socket timeouts on gs://) and log lines on stdout. Called by the jobs
(`cli.run_job`), the training workers, and each Ray task or actor (`in_worker`)."""

from __future__ import annotations

import functools

from pipeline.log import setup as setup_logging
from pipeline.storage import set_storage_defaults


def setup_process(rank: int = 0) -> None:
    set_storage_defaults()
    setup_logging(rank)


def in_worker(fn):
    """`fn`, setting its process up first: what a Ray task runs."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        setup_process()
        return fn(*args, **kwargs)

    return run
