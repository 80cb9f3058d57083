"""Existing WebDataset shards used in place: jobs/index.py writes the index files and manifest
without touching the tars; keys, labels, refusals; webdataset reads our shards too."""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import fsspec
import pytest
import torch
import webdataset as wds

from pipeline.config import UserError
from pipeline.data.demo_images import jpeg_bytes, render
from pipeline.data.manifest import read_manifest
from pipeline.ingest.inplace import IndexConfig, index_shards
from pipeline.ingest.run import IngestConfig, ingest
from tests.builders import NAMES, shardwriter_set
from tests.loading import rank_batches

ROOT = Path(__file__).resolve().parents[2]


def _snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_shardwriter_shards_are_indexed_in_place_and_read_by_the_loader(tmp_path):
    pattern = shardwriter_set(tmp_path / "laion")
    before = _snapshot(tmp_path / "laion")
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(NAMES) + "\n")
    cfg = IndexConfig(shards=pattern, output=str(tmp_path / "index"), prefix="laion",
                      label="json:label", classes=str(classes), parallel=False)  # fmt: skip
    manifest = index_shards(cfg, progress=False)
    assert _snapshot(tmp_path / "laion") == before  # read-only: not a byte written beside them
    assert manifest.root == str(tmp_path / "laion") and manifest.classes == NAMES
    assert [s.num_samples for s in manifest.shards] == [10, 10, 5]
    assert read_manifest(str(tmp_path / "index" / "laion.manifest.json")) == manifest
    batches = rank_batches(str(tmp_path / "index"), "laion", tmp_path / "cache", global_batch=5)
    ids = torch.cat([b.sample_ids for b in batches]).tolist()
    labels = torch.cat([b.labels for b in batches]).tolist()
    assert sorted(ids) == list(range(25)) and not any(b.skipped for b in batches)
    assert all(label == i % 3 for i, label in zip(ids, labels, strict=True))  # key i: NAMES[i % 3]
    # A second run finds every index in place and rewrites nothing.
    mtimes = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "index").iterdir()}
    again = index_shards(cfg, progress=False)
    assert again == manifest
    assert all((tmp_path / "index" / n).stat().st_mtime_ns == t
               for n, t in mtimes.items() if n.endswith(".idx.json"))  # fmt: skip


def test_index_beside_the_shards_and_labels_from_txt_and_integers(tmp_path):
    pattern = shardwriter_set(tmp_path / "s", count=12, per_shard=6)
    txt = index_shards(IndexConfig(shards=pattern, label="txt", parallel=False,
                                   classes=[f"a photo of a {n}" for n in NAMES]), progress=False)  # fmt: skip
    assert txt.root is None and (tmp_path / "s" / "00000.idx.json").exists()
    assert txt.num_samples == 12
    # .cls members holding integers need no class map: classes are their values.
    tar = tmp_path / "ints" / "000.tar"
    tar.parent.mkdir()
    _tar(tar, {f"{i:03d}.{ext}": data for i in range(4)
               for ext, data in (("jpg", jpeg_bytes(render(0, 0, i, 16))), ("cls", str(2 * i).encode()))})  # fmt: skip
    ints = index_shards(IndexConfig(shards=str(tar), parallel=False), progress=False)
    assert ints.classes == [str(i) for i in range(7)] and ints.num_samples == 4


def _tar(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_keys_split_at_the_first_dot_of_the_basename(tmp_path):
    """`v1.0/img000.jpg` is key `v1.0/img000` (webdataset's rule), for index and ingest."""
    tar = tmp_path / "src" / "000.tar"
    tar.parent.mkdir()
    members = {}
    for i in range(3):
        members[f"v1.0/img{i:03d}.jpg"] = jpeg_bytes(render(i, 0, i, 16))
        members[f"v1.0/img{i:03d}.cls"] = str(i).encode()
    _tar(tar, members)
    manifest = index_shards(IndexConfig(shards=str(tar), output=str(tmp_path / "ix"),
                                        parallel=False), progress=False)  # fmt: skip
    index = json.loads((tmp_path / "ix" / "000.idx.json").read_text())
    assert [s["key"] for s in index["samples"]] == ["v1.0/img000", "v1.0/img001", "v1.0/img002"]
    assert manifest.num_samples == 3
    out = ingest(IngestConfig(input=str(tar), output=str(tmp_path / "ing"), prefix="p",
                              parallel=False), progress=False)  # fmt: skip
    assert out.num_samples == 3 and out.classes == ["0", "1", "2"]


def test_unlabelled_and_gzipped_shards_are_refused_in_one_line_nothing_lost(tmp_path):
    pattern = shardwriter_set(tmp_path / "raw", count=6, per_shard=3, label=False)
    out = tmp_path / "index"
    out.mkdir()
    (out / "data.manifest.json").write_text('{"format": "earlier"}')  # written before: kept
    with pytest.raises(UserError, match=r"no sample in .* has an image and a label \(label=cls:"
                                        r" no \.cls member\); expected label=cls"):  # fmt: skip
        index_shards(IndexConfig(shards=pattern, output=str(out), parallel=False), progress=False)
    with pytest.raises(
        UserError, match=r"label in field 'label' of \.json is missing or not a class index"
    ):
        index_shards(IndexConfig(shards=pattern, output=str(out), label="json:label",
                                 parallel=False), progress=False)  # fmt: skip
    assert (out / "data.manifest.json").read_text() == '{"format": "earlier"}'
    # Ingest refuses them too, instead of training one class named "".
    with pytest.raises(UserError, match=r"6 of 6 samples in .* have no \.cls label"):
        ingest(IngestConfig(input=pattern, output=str(tmp_path / "ing"), parallel=False),
               progress=False)  # fmt: skip
    gz = tmp_path / "raw" / "00000.tar.gz"
    gz.write_bytes(gzip.compress((tmp_path / "raw" / "00000.tar").read_bytes()))
    with pytest.raises(UserError, match="is gzipped: samples cannot be read by offset"):
        index_shards(IndexConfig(shards=str(gz), parallel=False), progress=False)
    # From the command line: one line, exit status 2, no stack trace.
    cli = subprocess.run([sys.executable, "jobs/index.py", f"shards={gz}"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert cli.returncode == 2 and cli.stderr.count("\n") == 1, cli.stderr
    assert cli.stderr.startswith("error: ") and "gzipped" in cli.stderr


def test_webdataset_reads_our_shards_with_their_sidecar_files(tiny_data):
    """Our shards stay plain WebDataset: webdataset's own reader sees every sample, with the
    index and manifest files beside them."""
    manifest = read_manifest(str(tiny_data / "train" / "train.manifest.json"))
    urls = [str(tiny_data / "train" / s.name) for s in manifest.shards]
    samples = list(wds.WebDataset(urls, shardshuffle=False))
    assert len(samples) == manifest.num_samples
    assert all({"jpg", "cls", "json"} <= set(s) for s in samples)
    names = {s["__key__"] for s in samples}
    assert len(names) == manifest.num_samples


def test_shards_on_one_store_index_on_another(tmp_path):
    """The shards' bucket is someone else's (here memory://), the index a local folder: the
    loader reads the index from one and downloads the tars from the other."""
    shardwriter_set(tmp_path / "src", count=12, per_shard=6)
    root = f"memory://theirs-{tmp_path.name}"
    mem = fsspec.filesystem("memory")
    for tar in sorted((tmp_path / "src").glob("*.tar")):
        mem.put_file(str(tar), f"{root}/laion/{tar.name}")
    manifest = index_shards(IndexConfig(shards=f"{root}/laion/{{00000..00001}}.tar",
                                        output=str(tmp_path / "mine"), label="json:label",
                                        classes=NAMES), progress=False)  # fmt: skip
    assert manifest.root.startswith("memory://") and manifest.num_samples == 12
    assert manifest.root.endswith(f"theirs-{tmp_path.name}/laion")  # memory:// adds a slash
    batches = rank_batches(str(tmp_path / "mine"), "data", tmp_path / "cache", global_batch=6)
    assert sorted(i for b in batches for i in b.sample_ids.tolist()) == list(range(12))
    assert not any(b.skipped for b in batches)
