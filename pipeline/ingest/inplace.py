"""Index existing WebDataset shards where they are: the `.idx.json` files and the manifest the
loader reads, without rewriting a byte of the tars (img2dataset output, webdataset ShardWriter
output, our own shards). A shard is read once, as a stream, by a Ray task (or inline).

    python jobs/index.py shards='gs://b/laion/{00000..41407}.tar' output=gs://mine/laion-index \\
        label=json:label classes=gs://mine/classes.txt

Keys split as webdataset splits them (at the first dot of the basename). Labels come from the
``.cls`` member (``label=cls``), a field of the ``.json`` member (``label=json:FIELD``) or the
``.txt`` member (``label=txt``); names map to indices through ``classes`` (a list, or a file of
one name per line, or a JSON list), integers are indices already. A sample without an image or
a known label is left out and listed in the manifest's ``skipped``; a shard set where no sample
has a label is refused. Gzipped shards are refused: gzip has no random access, so a sample
cannot be read by its offset (`jobs/ingest.py` reads them and writes plain shards).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import tarfile
import time

import fsspec
from pydantic import Field, field_validator
from tqdm import tqdm

from pipeline.config import Section, UserError
from pipeline.data.manifest import (
    Manifest,
    MemberSpan,
    SampleIndex,
    ShardIndex,
    ShardRecord,
    manifest_path,
    write_json_atomic,
)
from pipeline.ingest.sources import expand_shards, is_image, split_name
from pipeline.process import in_worker
from pipeline.storage import STORAGE_ENV

log = logging.getLogger(__name__)

LABEL_MEMBERS = ("cls", "json", "txt")


class IndexConfig(Section):
    shards: str = Field(description="existing .tar shards: a URL pattern with braces or globs")
    output: str | None = Field(
        None, description="folder for the index files and manifest; None: beside the shards"
    )
    prefix: str = Field("data", pattern=r"^[A-Za-z0-9_.-]+$")
    label: str = "cls"  # cls | json:FIELD | txt
    classes: list[str] | str | None = None  # names in index order, or a file URL of them
    parallel: bool = True
    storage_options: dict = Field(default_factory=dict)

    @field_validator("label")
    @classmethod
    def _label(cls, v: str) -> str:
        if v not in ("cls", "txt") and not (v.startswith("json:") and len(v) > 5):
            raise ValueError("expected cls, txt or json:FIELD")
        return v


class LabelSpec:
    """Reads a sample's label from its members; names map through the class map."""

    def __init__(self, spec: str, classes: list[str] | None) -> None:
        self.member = "json" if spec.startswith("json:") else spec
        self.field = spec.partition(":")[2]
        self.classes = classes
        self.index = {name: i for i, name in enumerate(classes)} if classes else None

    @property
    def problem(self) -> str:
        where = f"field {self.field!r} of .json" if self.member == "json" else f".{self.member}"
        known = "in the class map" if self.classes else "a class index (names need classes=...)"
        return f"the label in {where} is missing or not {known}"

    def __call__(self, data: bytes) -> int | None:
        try:
            value = json.loads(data).get(self.field) if self.member == "json" else data.decode()
        except (ValueError, UnicodeDecodeError, AttributeError):
            return None
        if isinstance(value, str):
            value = value.strip()
            if self.index is not None and value in self.index:
                return self.index[value]
            value = int(value) if value.isdigit() else None
        if (
            isinstance(value, int)
            and value >= 0
            and (not self.classes or value < len(self.classes))
        ):
            return value
        return None


class _Hashing:
    """A read-only stream that hashes what passes through (tarfile reads it front to back)."""

    def __init__(self, f) -> None:
        self.f, self.digest, self.size = f, hashlib.sha256(), 0

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.digest.update(data)
        self.size += len(data)
        return data

    def drain(self) -> None:
        while self.read(4 << 20):
            pass


def index_one(
    url: str, name: str, out_url: str, spec: LabelSpec, opts: dict, fingerprint: str
) -> dict:
    """Stream one shard (member spans, labels, sha256) and write <name>.idx.json atomically;
    an index of this very shard and label spec already there is kept. Returns the shard's
    summary for the manifest (never its samples: a billion of them would not fit the driver)."""
    fs, out = fsspec.core.url_to_fs(out_url, **opts)
    index = _existing(fs, out, name, fingerprint)
    if index is None:
        index = _scan(url, name, spec, opts, fingerprint)
        write_json_atomic(fs, f"{out}/{index_file(name)}", index.model_dump())
    skipped = [{"shard": name, "count": len(index.skipped), "reason": index.skipped[0]["reason"],
                "example": index.skipped[0]["source"]}] if index.skipped else []  # fmt: skip
    return {"record": ShardRecord(name=name, index=index_file(name), num_samples=len(index.samples),
                                  bytes=index.bytes, sha256=index.sha256),
            "skipped": skipped, "reasons": sorted({s["reason"] for s in index.skipped}),
            "max_label": max((x.label for x in index.samples), default=-1)}  # fmt: skip


def _scan(url: str, name: str, spec: LabelSpec, opts: dict, fingerprint: str) -> ShardIndex:
    samples: dict[str, dict] = {}
    with fsspec.open(url, "rb", block_size=16 << 20, **opts) as raw:
        stream = _Hashing(raw)
        try:
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    key, ext = split_name(member.name)
                    if not (is_image(ext) or ext in LABEL_MEMBERS):
                        continue  # never read: .pyd, .pickle, ...
                    entry = samples.setdefault(key, {"members": {}, "label": None})
                    entry["members"][ext] = MemberSpan(offset=member.offset_data, size=member.size)
                    if ext == spec.member:
                        entry["label"] = spec(tar.extractfile(member).read())
        except tarfile.ReadError as e:
            raise UserError(
                f"{url} is not a readable tar ({e}); expected an uncompressed .tar"
            ) from None
        stream.drain()
    kept, skipped = [], []
    for key, entry in samples.items():
        image = next((e for e in entry["members"] if is_image(e)), None)
        if image is None or entry["label"] is None:
            why = ("no image member" if image is None else f"no .{spec.member} member"
                   if spec.member not in entry["members"] else spec.problem)  # fmt: skip
            skipped.append({"source": f"{url}#{key}", "reason": why})
            continue
        members = {e: s for e, s in entry["members"].items() if e == image or e == "cls"}
        kept.append(SampleIndex(key=key, members=members, label=entry["label"]))
    return ShardIndex(shard=name, fingerprint=fingerprint, sha256=stream.digest.hexdigest(),
                      bytes=stream.size, samples=kept, skipped=skipped)  # fmt: skip


def index_file(shard_name: str) -> str:
    return shard_name.removesuffix(".tar") + ".idx.json"


def read_classes(classes: list[str] | str | None, opts: dict) -> list[str] | None:
    if classes is None or isinstance(classes, list):
        return classes
    try:
        with fsspec.open(classes, "r", **opts) as f:
            text = f.read()
    except FileNotFoundError:
        raise UserError(f"classes={classes!r} not found; expected a file of class names") from None
    names = json.loads(text) if text.lstrip().startswith("[") else text.splitlines()
    names = [str(n).strip() for n in names if str(n).strip()]
    if len(set(names)) != len(names):
        raise UserError(f"classes={classes!r} repeats a name; expected each class once")
    return names


def _plan(cfg: IndexConfig) -> tuple[str, list[tuple[str, str]], str]:
    """(the shards' root, [(url, name relative to it)], the index folder)."""
    urls = expand_shards(cfg.shards, cfg.storage_options)
    if not urls:
        raise UserError(f"no shards match {cfg.shards!r}")
    compressed = [u for u in urls if u.endswith((".gz", ".tgz"))]
    if compressed:
        raise UserError(f"{compressed[0]} is gzipped: samples cannot be read by offset from a"
                        " compressed tar; expected plain .tar shards (gunzip them, or re-encode"
                        " with jobs/ingest.py input=<these shards>)")  # fmt: skip
    if any(not u.endswith(".tar") for u in urls):
        bad = next(u for u in urls if not u.endswith(".tar"))
        raise UserError(f"{bad} is not a .tar shard; expected a pattern of .tar files")
    root = posixpath.commonpath([posixpath.dirname(u.split("://", 1)[-1]) for u in urls])
    scheme = urls[0].split("://", 1)[0] + "://" if "://" in urls[0] else ""
    root = f"{scheme}{root}"
    pairs = [(u, u.split("://", 1)[-1][len(root) - len(scheme) :].lstrip("/")) for u in urls]
    return root, pairs, (cfg.output or root).rstrip("/")


def _fingerprint(url: str, size: int, cfg: IndexConfig, classes: list[str] | None) -> str:
    settings = json.dumps({"label": cfg.label, "classes": classes, "url": url, "size": size},
                          sort_keys=True)  # fmt: skip
    return hashlib.sha256(settings.encode()).hexdigest()


def _existing(fs, out: str, name: str, fingerprint: str) -> ShardIndex | None:
    try:
        index = ShardIndex.model_validate(json.loads(fs.cat_file(f"{out}/{index_file(name)}")))
    except (FileNotFoundError, ValueError):
        return None
    return index if index.fingerprint == fingerprint else None


def _sizes(pairs: list[tuple[str, str]], root: str, opts: dict) -> dict[str, int]:
    """Every shard's size from one listing of the root (not a request per shard)."""
    fs, path = fsspec.core.url_to_fs(root, **opts)
    listed = {p: int(info.get("size") or 0) for p, info in fs.find(path, detail=True).items()}
    return {u: listed.get(fsspec.core.url_to_fs(u, **opts)[1], 0) for u, _ in pairs}


def index_shards(cfg: IndexConfig, progress: bool = True) -> Manifest:
    start = time.perf_counter()
    opts = cfg.storage_options
    classes = read_classes(cfg.classes, opts)
    root, pairs, out_url = _plan(cfg)
    fs, out = fsspec.core.url_to_fs(out_url, **opts)
    fs.makedirs(out, exist_ok=True)
    sizes = _sizes(pairs, root, opts)
    spec = LabelSpec(cfg.label, classes)
    args = [(u, n, out_url, spec, opts, _fingerprint(u, sizes[u], cfg, classes)) for u, n in pairs]
    results = {}
    with tqdm(total=len(pairs), desc="index shards", disable=not progress) as bar:
        for result in _run(args, cfg.parallel and len(args) > 1, bar):
            results[result["record"].name] = result
    shards = [results[n] for _, n in pairs]
    labelled = sum(s["record"].num_samples for s in shards)
    if labelled == 0:
        reasons = sorted({r for s in shards for r in s["reasons"]})
        raise UserError(f"no sample in {cfg.shards!r} has an image and a label (label={cfg.label}:"
                        f" {', '.join(reasons) or 'no samples'}); expected label=cls,"
                        " label=json:FIELD or label=txt naming the member that holds it, and a"
                        " class map (classes=...) for names")  # fmt: skip
    if classes is None:
        classes = [str(i) for i in range(max(s["max_label"] for s in shards) + 1)]
    manifest = Manifest(
        prefix=cfg.prefix, classes=classes, root=None if out_url == root else root,
        shards=[s["record"] for s in shards], skipped=[x for s in shards for x in s["skipped"]],
        settings=cfg.model_dump(exclude={"storage_options"}),
    )  # fmt: skip
    write_json_atomic(fs, manifest_path(out, cfg.prefix), manifest.model_dump())
    if progress:
        left_out = sum(x["count"] for x in manifest.skipped)
        log.info(f"index: {labelled} samples in {len(shards)} shards, {left_out} left out (no"
                 f" image or label), {len(classes)} classes, {time.perf_counter() - start:.1f}s ->"
                 f" {manifest_path(out_url, cfg.prefix)}")  # fmt: skip
    return manifest


def _run(args: list[tuple], parallel: bool, bar: tqdm):
    if not parallel or any(a[0].startswith("memory://") for a in args):
        for a in args:
            yield index_one(*a)
            bar.update(1)
        return
    import ray

    if not ray.is_initialized():
        env = {k: os.environ[k] for k in STORAGE_ENV if k in os.environ}
        ray.init(runtime_env={"env_vars": env} if env else None, log_to_driver=False)
    task = ray.remote(num_cpus=1, max_retries=3)(in_worker(index_one))
    pending = [task.remote(*a) for a in args]
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        for ref in done:
            yield ray.get(ref)
            bar.update(1)
