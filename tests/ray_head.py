"""A Ray head on loopback, started the way users start a cluster (`ray start --head`, token auth,
dashboard on 127.0.0.1), for tests that submit jobs to it."""

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
def loopback_head(**env_vars: str) -> Iterator[tuple[str, dict]]:
    """Yields (the job API's address, the environment to submit with); stops Ray after."""
    # Ray 2.60 clusters require a token; the CLI reads ~/.ray/auth_token in token mode.
    env = {**os.environ, "PATH": f"{Path(RAY).parent}:{os.environ['PATH']}",
           "RAY_AUTH_MODE": "token", **env_vars}  # fmt: skip
    port, dash = free_port(), free_port()
    ray_stop()
    subprocess.run([RAY, "get-auth-token", "--generate"], check=True, capture_output=True,
                   timeout=120, env=env)  # fmt: skip
    subprocess.run([RAY, "start", "--head", f"--port={port}", "--num-cpus=2",
                    "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
                    f"--dashboard-port={dash}", "--include-dashboard=true"],
                   check=True, capture_output=True, timeout=180, env=env)  # fmt: skip
    try:
        yield f"http://127.0.0.1:{dash}", env
    finally:
        ray_stop()
