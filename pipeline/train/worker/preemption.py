"""A preemption notice turned into a checkpoint instead of a lost interval.

Two notices, whichever comes first:
  - SIGTERM: spot and preemptible VMs get 30-120 s of it, as a signal to the node's processes;
  - a node drain for preemption, which Ray 2.60 Train detects (its PreemptionWatcher polls the
    GCS for drained nodes, e.g. the autoscaler's or `ray drain-node --reason
    DRAIN_NODE_REASON_PREEMPTION`) and hands the workers (`ray.train.get_preemption_info`).
A worker that gets one goes on with its step. At the end of every step the ranks agree (one
all-reduce of a scalar), so all of them stop after the same step: the trainer writes that step's
checkpoint, hands it to Ray, leaves `<run.dir>/preempted.json` and returns. The driver sees the
record and starts the workers again from that checkpoint, which counts as no failure: a
preempted run loses nothing. A node that dies for a preemption without either notice is told
apart by Ray itself and restarted against `cluster.max_preemptions`, not `max_failures`.

Python runs signal handlers on the main thread, and only the main thread may install them. Ray
Train runs the training function on a thread of its worker actor, whose main thread serves the
actor's tasks (Ray's own handler there exits the process); so the handler is installed through
a task on this very actor, which runs on that main thread.

What a node's SIGTERM does to the raylet is the cluster's business: a shutdown script should
signal the training workers first and leave them the notice period (README, Reliability).
"""

from __future__ import annotations

import json
import os
import signal
import threading

import fsspec
import torch
import torch.distributed as dist

from pipeline.storage import atomic_write

RECORD = "preempted.json"  # <run.dir>/preempted.json: the step a preempted launch checkpointed
_NOTICE = threading.Event()  # set by the handler, read by the training thread
_previous = None  # the handler ours replaced (Ray's exits): restored at the end of the run
_terms = 0  # SIGTERMs received in this run


def _on_sigterm(signum, frame) -> None:
    global _terms
    _terms += 1
    if _terms > 1:  # a second SIGTERM: the process ends as it would have without us
        _restore()
        os.kill(os.getpid(), signum)
        return
    _NOTICE.set()  # only that: the trainer says so, outside the handler


def _install() -> None:
    global _previous
    _previous = signal.signal(signal.SIGTERM, _on_sigterm)


def _restore() -> None:
    global _previous
    if _previous is not None:
        signal.signal(signal.SIGTERM, _previous)
        _previous = None


def _on_main_thread(fn) -> None:
    if threading.current_thread() is threading.main_thread():
        fn()
    else:  # a Ray Train worker: a task on its own actor runs on the actor's main thread
        import ray

        ray.get(ray.get_runtime_context().current_actor.execute.remote(fn))


class PreemptionNotice:
    """Listens for SIGTERM from construction to `close()`; `agreed()` at every step end."""

    def __init__(self) -> None:
        global _terms
        _NOTICE.clear()
        _terms = 0
        self.drained = False  # the notice was a node drain (else some rank's SIGTERM)
        _on_main_thread(_install)

    def agreed(self, device: torch.device, drain_notice=lambda: False) -> bool:
        """Whether any rank got SIGTERM, or the cluster announced a node's preemption (a
        collective: every rank, every step)."""
        if drain_notice():
            self.drained = True
            _NOTICE.set()
        flag = torch.tensor(float(_NOTICE.is_set()), device=device)
        if dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag)

    def close(self) -> None:
        _on_main_thread(_restore)


def record(run_dir: str, step: int) -> None:
    fs, path = fsspec.core.url_to_fs(f"{run_dir.rstrip('/')}/{RECORD}")
    atomic_write(fs, path, json.dumps({"step": step}).encode())


def take(run_dir: str) -> int | None:
    """The step a preempted launch checkpointed, clearing the record; None: not preempted."""
    fs, path = fsspec.core.url_to_fs(f"{run_dir.rstrip('/')}/{RECORD}")
    try:
        step = json.loads(fs.cat_file(path))["step"]
    except FileNotFoundError:
        return None
    fs.rm(path)
    return step
