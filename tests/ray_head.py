"""A Ray cluster on loopback, started the way users start one (`ray start --head`, token auth,
dashboard on 127.0.0.1, then `ray start --address` per worker node), for tests that submit jobs
to it.

Worker nodes get addresses of their own (127.0.0.2, 127.0.0.3, ...: Linux routes all of
127.0.0.0/8 to the loopback device): Ray Train numbers nodes by address, so each one is a
distinct node to it (node rank, local ranks), as on a real cluster."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.testing.spawn import free_port

RAY = str(Path(sys.executable).parent / "ray")


ROOT = Path(__file__).resolve().parents[1]
# The session's shared cluster (see `shared_cluster`): (GCS address, job API address, env), and
# (the checkout copy its head was started in, what `make head` printed).
_shared: tuple[str, str, dict] | None = None
_head: tuple[Path, str] | None = None


def ray_stop() -> None:
    """Stops every Ray process on this machine, the shared cluster's too (restarted on next use)."""
    global _shared
    _shared = None
    subprocess.run([RAY, "stop", "--force"], capture_output=True, timeout=120)


def token_env(**env_vars: str) -> dict:
    """The environment for the `ray` CLI: Ray 2.60 clusters require a token, which the CLI
    reads from ~/.ray/auth_token in token mode."""
    return {**os.environ, "PATH": f"{Path(RAY).parent}:{os.environ['PATH']}",
            "RAY_AUTH_MODE": "token", **env_vars}  # fmt: skip


def start_head(env: dict, node_ip: str, cpus: int) -> tuple[int, str]:
    """`ray start --head` (a fresh token, the dashboard on 127.0.0.1); returns (the GCS port,
    the job API's address)."""
    port, dash = free_port(), free_port()
    subprocess.run([RAY, "get-auth-token", "--generate"], check=True, capture_output=True,
                   timeout=120, env=env)  # fmt: skip
    subprocess.run([RAY, "start", "--head", f"--port={port}", f"--num-cpus={cpus}",
                    f"--node-ip-address={node_ip}", "--dashboard-host=127.0.0.1",
                    f"--dashboard-port={dash}", "--include-dashboard=true"],
                   check=True, capture_output=True, timeout=180, env=env)  # fmt: skip
    return port, f"http://127.0.0.1:{dash}"


def start_node(env: dict, head: str, node_ip: str, cpus: int, prefix: tuple = ()) -> None:
    """`ray start --address` of a worker node (`prefix`: e.g. `ip netns exec NS`)."""
    subprocess.run([*prefix, RAY, "start", f"--address={head}", f"--num-cpus={cpus}",
                    f"--node-ip-address={node_ip}"],
                   check=True, capture_output=True, timeout=180, env=env)  # fmt: skip


@contextmanager
def loopback_head(
    worker_nodes: int = 0, cpus_per_node: int = 1, **env_vars: str
) -> Iterator[tuple[str, dict]]:
    """Yields (the job API's address, the environment to submit with); stops Ray after.

    With worker_nodes, the head offers no CPUs (jobs' drivers and Train's controller need
    none), so every training worker lands on a worker node."""
    env = token_env(**env_vars)
    ray_stop()
    port, address = start_head(env, "127.0.0.1", 0 if worker_nodes else 2)
    for n in range(worker_nodes):
        start_node(env, f"127.0.0.1:{port}", f"127.0.0.{n + 2}", cpus_per_node)
    try:
        yield address, env
    finally:
        ray_stop()


def checkout_copy(dest: Path) -> Path:
    """The checkout's files (tracked, and untracked but not ignored) copied to `dest`, with its
    venv linked: a checkout of the same code without data/ or runs/."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                            check=True, capture_output=True, text=True).stdout  # fmt: skip
    for name in filter(None, listed.split("\0")):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    (dest / ".venv").symlink_to(ROOT / ".venv")
    return dest


def shared_cluster() -> tuple[str, str, dict]:
    """One loopback cluster for the session's end-to-end tests, started on first use the way
    README's "First job on a local cluster" starts one: `make head` (a head offering 2 CPUs, in a
    copy of the checkout: `shared_head`), then a worker node (127.0.0.2) offering 1. Each Ray
    start costs ~25 s on these machines; jobs connect to this one through RAY_ADDRESS, as
    drivers do under `ray job submit`. PACK placement (the default) puts a 2-worker run on the
    head; STRICT_SPREAD puts one worker on each node. Returns (the GCS address, the job API's
    address, the env)."""
    global _shared, _head
    if _shared is None:
        env = token_env()
        ray_stop()
        checkout = checkout_copy(Path(tempfile.mkdtemp(prefix="nfscale-checkout-")))
        atexit.register(shutil.rmtree, checkout, True)
        port, dash = free_port(), free_port()
        # -o: never re-install the shared venv from the copy (an editable install would then
        # point at it); the session's `make test` set it up already
        head = subprocess.run(["make", "-s", "-o", ".venv/.installed", "head", f"HEAD_PORT={port}",
                               f"DASHBOARD_PORT={dash}", "HEAD_CPUS=2"], cwd=checkout,
                              capture_output=True, text=True, timeout=600, env=env)  # fmt: skip
        assert head.returncode == 0, head.stdout + head.stderr
        start_node(env, f"127.0.0.1:{port}", "127.0.0.2", 1)
        _shared, _head = (
            (f"127.0.0.1:{port}", f"http://127.0.0.1:{dash}", env),
            (checkout, head.stdout),
        )
    return _shared


def shared_head() -> tuple[Path, str, str]:
    """(the checkout copy the shared cluster's `make head` ran in, and the two lines it printed
    to run next: the `export ...` and the `ray job submit ...`)."""
    shared_cluster()
    checkout, printed = _head
    lines = [line.strip() for line in printed.splitlines()]
    export = next(line for line in lines if line.startswith("export "))
    submit = next(line for line in lines if "ray job submit" in line)
    return checkout, export, submit
