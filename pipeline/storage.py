"""fsspec helpers shared by every stage: atomic writes that hold on local disks and object stores."""

from __future__ import annotations

import uuid

import fsspec


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
