"""Ray nodes behind a real network boundary on one machine: each worker node in a network
namespace of its own, joined to the head by a veth pair through a bridge (10.231.0.0/24).

Training traffic (gloo's collectives, Ray's object transfers, the raylets' heartbeats) then goes
through virtual interfaces that can be cut like a cable: `cut(i)` takes node i's link down, and
to the rest of the cluster that node is gone, although its processes still run. Root only; the
namespaces, links and every process started in them are removed on exit.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass

from tests.ray_head import ray_stop, start_head, start_node, token_env

SUBNET = "10.231.0"
BRIDGE = "nfsbr0"
INSIDE = "nfs0"  # the interface's name inside every namespace (GLOO_SOCKET_IFNAME)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def available() -> str | None:
    """None when namespaces can be made here, else why not."""
    try:
        _ip("netns", "add", "nfs-probe")
        _ip("netns", "del", "nfs-probe")
    except (OSError, subprocess.CalledProcessError) as e:
        return f"network namespaces are not available here ({e})"
    return None


@dataclass
class Cluster:
    address: str  # the job API
    env: dict  # the environment to submit with
    node_ips: list[str]

    def cut(self, node: int) -> None:
        """Take the node's link down: a network partition, its processes left running."""
        _ip("link", "set", f"nfsv{node}", "down")


def _namespace_pids(name: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


@contextmanager
def namespaced_cluster(nodes: int, cpus_per_node: int = 1, **env_vars: str) -> Iterator[Cluster]:
    env = token_env(**env_vars)
    names = [f"nfsn{i}" for i in range(nodes)]
    ray_stop()
    try:
        _ip("link", "add", BRIDGE, "type", "bridge")
        _ip("addr", "add", f"{SUBNET}.1/24", "dev", BRIDGE)
        _ip("link", "set", BRIDGE, "up")
        for i, ns in enumerate(names):
            _ip("netns", "add", ns)
            _ip("link", "add", f"nfsv{i}", "type", "veth", "peer", "name", INSIDE, "netns", ns)
            _ip("link", "set", f"nfsv{i}", "master", BRIDGE, "up")
            _ip("-n", ns, "addr", "add", f"{SUBNET}.{i + 2}/24", "dev", INSIDE)
            _ip("-n", ns, "link", "set", INSIDE, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        port, address = start_head(env, f"{SUBNET}.1", 0)
        for i, ns in enumerate(names):
            start_node(env, f"{SUBNET}.1:{port}", f"{SUBNET}.{i + 2}", cpus_per_node,
                       ("ip", "netns", "exec", ns))  # fmt: skip
        yield Cluster(address, env, [f"{SUBNET}.{i + 2}" for i in range(nodes)])
    finally:
        for ns in names:  # everything started inside, then the namespace and its links
            for pid in _namespace_pids(ns):
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True)
        ray_stop()
