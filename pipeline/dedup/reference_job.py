"""The reference index of the dedup job: built once by Ray tasks (one per reference unit), saved
as files, reused by every later pool run that asks for the same reference set and settings.

    <index>/job.json                 what it was built from: reference URL, descriptor, views
    <index>/references.json, ...     the ReferenceSet (`references.py`), + ivf.faiss if approximate

A folder with another reference set or other descriptor settings is refused in one line (a
pool filtered against it would be audited against the wrong set). Pool workers load it from a
node-local copy, memory-mapped: the vectors are in the page cache once per node.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile

import fsspec
from tqdm import tqdm

from pipeline.config import UserError
from pipeline.dedup import ann
from pipeline.dedup.features import Record
from pipeline.dedup.references import VECTORS_VERSION, ReferenceSet
from pipeline.dedup.units import Unit, unit_records
from pipeline.process import in_worker
from pipeline.storage import atomic_write, is_local

log = logging.getLogger(__name__)

JOB_FILE = "job.json"


def identity(reference: str, view_side: float) -> dict:
    return {"reference": reference, "descriptor": VECTORS_VERSION, "view_side": view_side}


def existing(index_url: str, reference: str, view_side: float, opts: dict) -> dict | None:
    """The identity of an index already in the folder, or None; one line if it was built from
    another reference set or with other descriptor settings."""
    fs, root = fsspec.core.url_to_fs(index_url, **opts)
    try:
        found = json.loads(fs.cat_file(f"{root}/{JOB_FILE}"))
    except FileNotFoundError:
        return None
    want = identity(reference, view_side)
    have = {k: found.get(k) for k in want}
    if have != want:
        diff = "; ".join(
            f"{k}: {have[k]!r} (wanted {want[k]!r})" for k in want if have[k] != want[k]
        )
        raise UserError(f"index {index_url} was built with other settings ({diff}); expected"
                        " the same reference set and descriptor settings, or another --index")  # fmt: skip
    return found


def reference_part(unit: Unit, opts: dict, view_side: float) -> ReferenceSet:
    """Every reference feature of one unit (a Ray task, or inline)."""
    records = (Record(r.key, r.source, r.data) for r in unit_records(unit, opts))
    return ReferenceSet.build(records, view_side=view_side, whiten=False)


def ensure_index(
    index_url: str,
    reference: str,
    units: list[Unit],
    view_side: float,
    search: str,
    opts: dict,
    parallel: bool,
    progress: bool,
) -> dict:
    """The index folder's identity, building the index there first if it is missing."""
    fs, root = fsspec.core.url_to_fs(index_url, **opts)
    want = identity(reference, view_side)
    found = existing(index_url, reference, view_side, opts)
    if found is not None and (search != "ivf" or found.get("search") == "ivf"):
        return found  # (an exact index asked to become an IVF is rebuilt whole)
    parts = _build_parts(units, opts, view_side, parallel, progress)
    refs = ReferenceSet.concat(parts)
    if len(refs) == refs.undecodable:
        raise UserError(f"reference set {reference!r} has no decodable image; expected images")
    kind = (
        search if search != "auto" else ("ivf" if len(refs.index) >= ann.MIN_VECTORS else "exact")
    )
    if kind == "ivf":
        refs.index.build_ivf()
    refs.save(index_url, opts)
    meta = {**want, "count": len(refs), "vectors": len(refs.index), "search": kind,
            "undecodable": refs.undecodable}  # fmt: skip
    atomic_write(fs, f"{root}/{JOB_FILE}", json.dumps(meta, indent=1).encode())  # last: done
    if progress:
        log.info(f"reference index: {len(refs)} images ({refs.undecodable} undecodable),"
                 f" {len(refs.index)} vectors, {kind} search -> {index_url}")  # fmt: skip
    return meta


def _build_parts(units, opts, view_side, parallel, progress) -> list[ReferenceSet]:
    bar = tqdm(total=len(units), desc="reference shards", unit="shard", disable=not progress)
    if not parallel:
        parts = []
        for unit in units:
            parts.append(reference_part(unit, opts, view_side))
            bar.update(1)
        bar.close()
        return parts
    import ray

    task = ray.remote(num_cpus=1, max_retries=3)(in_worker(reference_part))
    refs = [task.remote(unit, opts, view_side) for unit in units]
    pending = list(refs)
    while pending:
        finished, pending = ray.wait(pending, num_returns=1)
        bar.update(len(finished))
    bar.close()
    return ray.get(refs)


def load_local(index_url: str, opts: dict, search: str, nprobe: int) -> ReferenceSet:
    """Load the index for searching: from a node-local copy when it lives on object storage
    (memory-mapped vectors, faiss's mmap); exact search if asked for, whatever was built."""
    fs, root = fsspec.core.url_to_fs(index_url, **opts)
    path = root if is_local(fs) else _local_copy(fs, root)
    refs = ReferenceSet.load(path)
    if search == "exact":
        refs.index.ann = None
    elif refs.index.ann is not None:
        refs.index.ann.index.nprobe = refs.index.ann.nprobe = nprobe
    return refs


def _local_copy(fs, root: str) -> str:
    """One copy per node and index version; concurrent workers race to an atomic rename."""
    stamp = hashlib.sha1(fs.cat_file(f"{root}/{JOB_FILE}") + root.encode()).hexdigest()[:16]
    target = os.path.join(tempfile.gettempdir(), "nfscale-dedup-index", stamp)
    if os.path.exists(os.path.join(target, JOB_FILE)):
        return target
    os.makedirs(os.path.dirname(target), exist_ok=True)
    staging = tempfile.mkdtemp(dir=os.path.dirname(target))
    for path in fs.find(root):
        rel = os.path.relpath(path, root)
        os.makedirs(os.path.dirname(os.path.join(staging, rel)), exist_ok=True)
        fs.get_file(path, os.path.join(staging, rel))
    try:
        os.rename(staging, target)
    except OSError:  # another worker was first
        shutil.rmtree(staging, ignore_errors=True)
    return target
