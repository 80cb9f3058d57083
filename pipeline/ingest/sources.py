"""Enumerate ingest inputs as an ordered list of items, before any image is read.

Three kinds: an image folder tree (one subfolder per class, the ImageNet layout), a CSV or JSONL
list of (path or URL, label), or existing WebDataset tar shards. The order is fully determined
by the input (sorted), so serial and parallel runs produce the same shards.
"""

from __future__ import annotations

import csv
import io
import json
import posixpath
import tarfile
from dataclasses import dataclass

import fsspec

from pipeline.config import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")  # ingest re-encodes, so it may read compressed shards


def split_name(name: str) -> tuple[str, str]:
    """(key, extension) of a tar member, as webdataset splits them: at the first dot of the
    basename, so ``v1.0/img000.jpg`` is key ``v1.0/img000``, extension ``jpg``."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext


def is_image(ext: str) -> bool:
    return f".{ext.lower()}" in IMAGE_EXTENSIONS


@dataclass(frozen=True)
class Item:
    """One input sample: where its bytes are, its class name, and a size for shard planning."""

    source: str  # path/URL, or "<tar url>#<member name>" for samples inside an input shard
    label: str
    size: int


def _fs(url: str, storage_options: dict) -> tuple[fsspec.AbstractFileSystem, str]:
    return fsspec.core.url_to_fs(url, **storage_options)


def detect_format(url: str, storage_options: dict) -> str:
    fs, path = _fs(url, storage_options)
    pattern = "{" in path or "*" in path
    if not pattern and not fs.exists(path):
        raise UserError(f"input {url!r} does not exist")
    if fs.isdir(path):
        return "folder"
    if path.endswith((".csv", ".jsonl")):
        return "list"
    if path.endswith(TAR_SUFFIXES) or pattern:
        return "shards"
    raise UserError(
        f"cannot tell what {url!r} is; expected an image folder, a .csv/.jsonl list or .tar shards"
    )


def _unstrip(fs: fsspec.AbstractFileSystem, url: str, path: str) -> str:
    """Full URL for a path listed by ``fs`` (keep the protocol of the input URL)."""
    if "://" not in url:
        return path
    return fs.unstrip_protocol(path)


def folder_items(url: str, storage_options: dict) -> list[Item]:
    fs, root = _fs(url, storage_options)
    items = []
    for path, info in sorted(fs.find(root, detail=True).items()):
        rel = posixpath.relpath(path, root)
        parts = rel.split("/")
        if len(parts) != 2 or not path.lower().endswith(IMAGE_EXTENSIONS):
            continue  # only <class>/<image>; anything else is not part of the layout
        items.append(Item(_unstrip(fs, url, path), parts[0], int(info.get("size") or 0)))
    if not items:
        raise UserError(f"no images found as {url!r}/<class>/<image>; expected the ImageNet layout")
    return items


def list_items(url: str, storage_options: dict) -> list[Item]:
    """CSV with header (path,label) or JSONL objects {"path":..., "label":...}; relative paths
    resolve against the list's folder."""
    fs, path = _fs(url, storage_options)
    base = posixpath.dirname(path)
    with fs.open(path, "r") as f:
        text = f.read()
    if path.endswith(".jsonl"):
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    else:
        rows = list(csv.DictReader(io.StringIO(text)))
    items = []
    for n, row in enumerate(rows, start=1):
        if "path" not in row or "label" not in row:
            raise UserError(
                f"{url!r} row {n}: expected fields 'path' and 'label', got {sorted(row)}"
            )
        src = str(row["path"])
        if "://" not in src and not src.startswith("/"):
            src = _unstrip(fs, url, posixpath.join(base, src))
        items.append(Item(src, str(row["label"]), 0))
    if not items:
        raise UserError(f"{url!r} lists no samples")
    return items


def expand_shards(url: str, storage_options: dict) -> list[str]:
    """Shard URLs of a pattern: brace ranges ``{000000..000099}`` and globs, sorted per pattern."""
    from braceexpand import braceexpand

    urls: list[str] = []
    for pattern in braceexpand(url):
        fs, path = _fs(pattern, storage_options)
        matches = sorted(fs.glob(path)) if "*" in path or "?" in path else [path]
        urls += [_unstrip(fs, pattern, m) for m in matches]
    return urls


def shard_items(url: str, storage_options: dict) -> list[Item]:
    """Image members of existing tar shards (brace or glob patterns allowed), each with the
    label of its ``.cls`` member; a sample without one is refused, never made a class ''."""
    items = []
    for shard_url in expand_shards(url, storage_options):
        items += _members(shard_url, storage_options)
    if not items:
        raise UserError(f"no image samples in shards {url!r}")
    unlabelled = [it for it in items if not it.label]
    if unlabelled:
        raise UserError(
            f"{len(unlabelled)} of {len(items)} samples in {url!r} have no .cls label (e.g."
            f" {unlabelled[0].source}); expected a .cls member per sample, or index the shards"
            " in place with jobs/index.py label=json:FIELD or label=txt and a class map"
        )
    return items


def scan_shard(
    shard_url: str, storage_options: dict, with_data: bool
) -> dict[str, dict[str, tuple]]:
    """Image and ``cls`` members of one tar, by sample stem: {stem: {ext: (name, size, bytes)}}.
    Other members (``.pyd``, ``.pickle``, ...) are never read. ``bytes`` is None unless asked for,
    except for ``cls`` (tiny, and needed for the label)."""
    samples: dict[str, dict[str, tuple]] = {}
    with (
        fsspec.open(shard_url, "rb", **storage_options) as f,
        tarfile.open(fileobj=f, mode="r|*") as tar,
    ):
        for member in tar:
            if not member.isfile():
                continue
            stem, ext = split_name(member.name)
            if ext == "cls" or is_image(ext):
                data = tar.extractfile(member).read() if with_data or ext == "cls" else None
                samples.setdefault(stem, {})[ext] = (member.name, member.size, data)
    return samples


def label_of(members: dict[str, tuple]) -> str:
    return members["cls"][2].decode().strip() if "cls" in members else ""


def image_of(members: dict[str, tuple]) -> tuple | None:
    return next((m for ext, m in members.items() if ext != "cls"), None)


def _members(shard_url: str, storage_options: dict) -> list[Item]:
    items = []
    for _stem, members in sorted(scan_shard(shard_url, storage_options, with_data=False).items()):
        if (image := image_of(members)) is not None:
            items.append(Item(f"{shard_url}#{image[0]}", label_of(members), image[1]))
    return items


def enumerate_items(url: str, fmt: str, storage_options: dict) -> list[Item]:
    fmt = detect_format(url, storage_options) if fmt == "auto" else fmt
    readers = {"folder": folder_items, "list": list_items, "shards": shard_items}
    return readers[fmt](url, storage_options)


def split_member(source: str) -> tuple[str, str] | None:
    """``"<shard>.tar#<member>"`` -> (shard url, member name); None for a plain path/URL."""
    url, sep, name = source.partition("#")
    return (url, name) if sep and url.endswith(TAR_SUFFIXES) else None


def read_sources(sources: list[str], storage_options: dict) -> dict[str, bytes | Exception]:
    """Bytes of each source, or the error that prevented reading it. Members of input shards are
    collected in one streaming pass per shard."""
    out: dict[str, bytes | Exception] = {}
    wanted: dict[str, set[str]] = {}
    for src in sources:
        member = split_member(src)
        if member is None:
            try:
                with fsspec.open(src, "rb", **storage_options) as f:
                    out[src] = f.read()
            except (OSError, ValueError) as e:
                out[src] = e
        else:
            wanted.setdefault(member[0], set()).add(member[1])
    for shard_url, names in wanted.items():
        try:
            with (
                fsspec.open(shard_url, "rb", **storage_options) as f,
                tarfile.open(fileobj=f, mode="r|*") as tar,
            ):
                for m in tar:
                    if m.name in names:
                        out[f"{shard_url}#{m.name}"] = tar.extractfile(m).read()
        except (OSError, tarfile.TarError) as e:
            for name in names:
                out.setdefault(f"{shard_url}#{name}", e)
        for name in names:
            out.setdefault(
                f"{shard_url}#{name}", FileNotFoundError(f"{name!r} not in {shard_url!r}")
            )
    return out
