"""fsspec helpers shared by every stage: atomic writes that hold on local disks and object stores."""

from __future__ import annotations

import os
import uuid

import fsspec

# gcsfs retries a request that got a 5xx, a 429 or a connection error, with backoff (6 tries),
# and a stalled one too when aiohttp's socket timeouts end it; without them a stalled request
# waits forever (and a total timeout ends in an error gcsfs does not retry). Seconds without a
# byte before a request counts as stalled; Ray workers get the variable from the job.
STALL_ENV = "NFSCALE_STORAGE_STALL_S"
# What a Ray task or worker needs to reach the same storage as the driver (emulators, endpoints).
STORAGE_ENV = ("STORAGE_EMULATOR_HOST", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "AWS_ENDPOINT_URL",
               STALL_ENV)  # fmt: skip


def set_storage_defaults(stall_s: float | None = None) -> None:
    """Process-wide fsspec defaults (explicit storage_options still win): `pipeline.process`."""
    import aiohttp

    stall = stall_s if stall_s is not None else float(os.environ.get(STALL_ENV, "60"))
    timeout = aiohttp.ClientTimeout(sock_connect=stall, sock_read=stall)
    fsspec.config.conf.setdefault("gs", {})["requests_timeout"] = timeout


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else fs.protocol
    return "file" in protocols or "local" in protocols


def atomic_write(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Readers see the old file or the whole new one, never a part.

    Local disks: write a unique temp name, then rename (atomic within a filesystem). Object stores
    (gs://, s3://, memory://): one whole-object PUT is already atomic, and a server-side rename is a
    copy + delete there (and unimplemented by some emulators), so we write in place.
    """
    if not is_local(fs):
        fs.pipe_file(path, data)
        return
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        fs.pipe_file(tmp, data)
        fs.mv(tmp, path)
    finally:
        if fs.exists(tmp):
            fs.rm(tmp)
