"""A Ray cluster on loopback, started the way users start one (`ray start --head`, token auth,
dashboard on 127.0.0.1, then `ray start --address` per worker node), for tests that submit jobs
to it.

Worker nodes get addresses of their own (127.0.0.2, 127.0.0.3, ...: Linux routes all of
127.0.0.0/8 to the loopback device): Ray Train numbers nodes by address, so each one is a
distinct node to it (node rank, local ranks), as on a real cluster."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.train.spawn import free_port

RAY = str(Path(sys.executable).parent / "ray")


def ray_stop() -> None:
    subprocess.run([RAY, "stop", "--force"], capture_output=True, timeout=120)


@contextmanager
def loopback_head(
    worker_nodes: int = 0, cpus_per_node: int = 1, **env_vars: str
) -> Iterator[tuple[str, dict]]:
    """Yields (the job API's address, the environment to submit with); stops Ray after.

    With worker_nodes, the head offers no CPUs (jobs' drivers and Train's controller need
    none), so every training worker lands on a worker node."""
    # Ray 2.60 clusters require a token; the CLI reads ~/.ray/auth_token in token mode.
    env = {**os.environ, "PATH": f"{Path(RAY).parent}:{os.environ['PATH']}",
           "RAY_AUTH_MODE": "token", **env_vars}  # fmt: skip
    port, dash = free_port(), free_port()
    ray_stop()
    subprocess.run([RAY, "get-auth-token", "--generate"], check=True, capture_output=True,
                   timeout=120, env=env)  # fmt: skip
    subprocess.run([RAY, "start", "--head", f"--port={port}",
                    f"--num-cpus={0 if worker_nodes else 2}",
                    "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
                    f"--dashboard-port={dash}", "--include-dashboard=true"],
                   check=True, capture_output=True, timeout=180, env=env)  # fmt: skip
    for n in range(worker_nodes):
        subprocess.run([RAY, "start", f"--address=127.0.0.1:{port}", f"--num-cpus={cpus_per_node}",
                        f"--node-ip-address=127.0.0.{n + 2}"],
                       check=True, capture_output=True, timeout=180, env=env)  # fmt: skip
    try:
        yield f"http://127.0.0.1:{dash}", env
    finally:
        ray_stop()
