"""Ingest: shards + manifest through fsspec, skip-complete re-runs, corrupt input, Ray parity."""

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import fsspec
import numpy as np
import pytest
from PIL import Image

from pipeline.data.manifest import read_manifest
from pipeline.ingest.run import IngestConfig, ingest
from pipeline.storage import set_storage_defaults
from tests.loading import rank_batches
from tests.storage_servers import faulty_proxy, gcs_emulator, s3_server


def _jpeg(rng, h, w) -> bytes:
    buf = io.BytesIO()
    Image.fromarray((rng.random((h, w, 3)) * 255).astype("uint8")).save(buf, "JPEG", quality=85)
    return buf.getvalue()


@pytest.fixture
def image_tree(tmp_path):
    """3 classes x 6 JPEGs, one oversized PNG, one non-image, one empty file, one bomb header."""
    rng = np.random.default_rng(0)
    root = tmp_path / "raw"
    for c in ["cat", "dog", "emu"]:
        (root / c).mkdir(parents=True)
        for i in range(6):
            (root / c / f"{i}.jpg").write_bytes(_jpeg(rng, 30 + 4 * i, 40))
    Image.fromarray((rng.random((300, 90, 3)) * 255).astype("uint8")).save(root / "dog" / "big.png")
    (root / "cat" / "notes.jpg").write_bytes(b"plain text, not an image")
    (root / "emu" / "empty.png").write_bytes(b"")
    bomb = io.BytesIO()
    Image.new("1", (20000, 20000)).save(bomb, "PNG")  # 400 Mpx of nothing, compresses to ~50 KB
    (root / "emu" / "bomb.png").write_bytes(bomb.getvalue())
    return root


def _cfg(src, out, **kw) -> IngestConfig:
    return IngestConfig(
        input=str(src), output=str(out), prefix="t", shard_bytes=6000, max_side=128, **kw
    )


def _read_shard(fs, path):
    with fs.open(path, "rb") as f, tarfile.open(fileobj=f) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}


def test_folder_ingest_writes_shards_manifest_and_index(image_tree, tmp_path):
    out = tmp_path / "out"
    m = ingest(_cfg(image_tree, out, parallel=False), progress=False)
    assert m.classes == ["cat", "dog", "emu"] and m.num_samples == 19 and len(m.shards) > 2
    reasons = {s["source"].rsplit("/", 1)[-1]: s["reason"] for s in m.skipped}
    assert set(reasons) == {"notes.jpg", "empty.png", "bomb.png"}
    assert (
        "decompression bomb refused" in reasons["bomb.png"] and reasons["empty.png"] == "empty file"
    )
    fs = fsspec.filesystem("file")
    seen = 0
    for rec in m.shards:
        data = (out / rec.name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == rec.sha256 and len(data) == rec.bytes
        index = json.loads((out / rec.index).read_text())
        members = _read_shard(fs, str(out / rec.name))
        for sample in index["samples"]:
            for ext, span in sample["members"].items():  # offsets give random access
                assert (
                    data[span["offset"] : span["offset"] + span["size"]]
                    == members[f"{sample['key']}.{ext}"]
                )
            meta = json.loads(members[f"{sample['key']}.json"])
            assert int(members[f"{sample['key']}.cls"]) == m.classes.index(meta["label"])
            if meta["source"].endswith("big.png"):  # over max_side: re-encoded as JPEG, aspect kept
                assert meta["reencoded"] and (meta["width"], meta["height"]) == (38, 128)
                assert f"{sample['key']}.jpg" in members
            else:
                src_bytes = Path(meta["source"]).read_bytes()
                assert hashlib.sha256(src_bytes).hexdigest() == meta["sha256"]
                assert members[f"{sample['key']}.jpg"] == src_bytes  # stored as is
            seen += 1
    assert seen == 19
    assert read_manifest(str(out / "t.manifest.json")).num_samples == 19


def test_rerun_skips_complete_shards_and_rewrites_changed_ones(image_tree, tmp_path, capsys):
    out = tmp_path / "out"
    first = ingest(_cfg(image_tree, out, parallel=False))
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    second = ingest(_cfg(image_tree, out, parallel=False))
    assert "0 written" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")} == mtimes
    assert second == first
    # An interrupted run leaves a tar without its index: that shard is rewritten.
    (out / first.shards[1].index).unlink()
    ingest(_cfg(image_tree, out, parallel=False))
    assert "1 written" in capsys.readouterr().out
    # Changed input changes the plan fingerprint of the affected shards only.
    (image_tree / "emu" / "5.jpg").write_bytes(_jpeg(np.random.default_rng(9), 50, 40))
    ingest(_cfg(image_tree, out, parallel=False))
    assert "1 written" in capsys.readouterr().out
    # A new class that shifts the class indices rewrites every shard (their cls members change).
    (image_tree / "bat").mkdir()
    (image_tree / "bat" / "0.jpg").write_bytes(_jpeg(np.random.default_rng(3), 30, 30))
    shifted = ingest(_cfg(image_tree, out, parallel=False))
    assert f"{len(shifted.shards)} written, 0 already complete" in capsys.readouterr().out
    assert shifted.classes == ["bat", "cat", "dog", "emu"]


def test_list_and_shard_inputs_give_the_same_images(image_tree, tmp_path):
    folder = ingest(_cfg(image_tree, tmp_path / "a", parallel=False), progress=False)
    rows = [{"path": f"{c}/{i}.jpg", "label": c} for c in ["cat", "dog", "emu"] for i in range(6)]
    (image_tree / "list.csv").write_text(
        "path,label\n" + "".join(f"{r['path']},{r['label']}\n" for r in rows)
    )
    (image_tree / "list.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    from_csv = ingest(_cfg(image_tree / "list.csv", tmp_path / "b", parallel=False), progress=False)
    from_jsonl = ingest(
        _cfg(image_tree / "list.jsonl", tmp_path / "c", parallel=False), progress=False
    )
    assert (
        from_csv.num_samples == from_jsonl.num_samples == 18 and from_csv.classes == folder.classes
    )
    reshard = ingest(
        IngestConfig(
            input=str(tmp_path / "a" / "t-{000000..000099}.tar").replace(
                "000099", f"{len(folder.shards) - 1:06d}"
            ),
            output=str(tmp_path / "d"),
            prefix="t",
            max_side=128,
            parallel=False,
        ),
        progress=False,
    )
    assert reshard.num_samples == folder.num_samples and reshard.classes == ["0", "1", "2"]

    def images(directory, manifest):
        fs = fsspec.filesystem("file")
        out = set()
        for rec in manifest.shards:
            out |= {
                v
                for k, v in _read_shard(fs, str(directory / rec.name)).items()
                if k.endswith(".jpg")
            }
        return out

    assert images(tmp_path / "b", from_csv) <= images(tmp_path / "a", folder)
    assert images(tmp_path / "d", reshard) == images(tmp_path / "a", folder)


def test_bad_input_is_one_clear_line(tmp_path):
    (tmp_path / "x.txt").write_text("?")
    with pytest.raises(ValueError, match="cannot tell what"):
        ingest(_cfg(tmp_path / "x.txt", tmp_path / "o"), progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images found"):
        ingest(_cfg(tmp_path / "empty", tmp_path / "o", format="folder"), progress=False)
    (tmp_path / "l.csv").write_text("file,cls\na.jpg,1\n")
    with pytest.raises(ValueError, match="expected fields 'path' and 'label'"):
        ingest(_cfg(tmp_path / "l.csv", tmp_path / "o"), progress=False)


def _round_trip(image_tree, out_url, storage_options, parallel=False):
    m = ingest(
        IngestConfig(
            input=str(image_tree),
            output=out_url,
            prefix="t",
            shard_bytes=6000,
            max_side=128,
            parallel=parallel,
            storage_options=storage_options,
        ),
        progress=False,
    )
    fs, root = fsspec.core.url_to_fs(out_url, **storage_options)
    manifest = read_manifest(f"{out_url}/t.manifest.json", storage_options)
    assert manifest == m
    for rec in m.shards:
        assert hashlib.sha256(fs.cat_file(f"{root}/{rec.name}")).hexdigest() == rec.sha256
    return m


def test_memory_filesystem_round_trip(image_tree, tmp_path):
    local = ingest(_cfg(image_tree, tmp_path / "local", parallel=False), progress=False)
    mem = _round_trip(image_tree, "memory://ingest-test/out", {}, parallel=True)  # in-process only
    assert [s.sha256 for s in mem.shards] == [s.sha256 for s in local.shards]


@pytest.mark.e2e
@pytest.mark.parametrize(
    "server,url", [(gcs_emulator, "gs://bucket/shards"), (s3_server, "s3://bucket/shards")]
)
def test_object_store_round_trip(image_tree, tmp_path, server, url):
    """gs:// against the GCS emulator, s3:// against moto, both real servers on loopback."""
    local = ingest(_cfg(image_tree, tmp_path / "local", parallel=False), progress=False)
    with server("bucket") as opts:
        remote = _round_trip(image_tree, url, opts)
    assert [s.sha256 for s in remote.shards] == [s.sha256 for s in local.shards]


def test_a_flaky_object_store_loses_nothing(image_tree, tmp_path):
    """The GCS emulator behind a proxy that answers 1 request in 12 with a 5xx and stalls 1 in
    30: ingest and reads retry with backoff; shards are byte-identical, every sample reads back."""
    local = ingest(_cfg(image_tree, tmp_path / "local", parallel=False), progress=False)
    set_storage_defaults(stall_s=0.5)  # a stall ends after 0.5 s without a byte, then a retry
    try:
        with gcs_emulator("bucket") as opts:
            upstream = os.environ["STORAGE_EMULATOR_HOST"]
            with faulty_proxy(upstream, fail_every=12, stall_every=30, stall_s=2) as (url, n):
                os.environ["STORAGE_EMULATOR_HOST"] = url  # gcs_emulator restores it
                # gcsfs is imported here, after gcs_emulator's environment (see ENVIRONMENT.md);
                # its instances remember the endpoint they were made for
                fsspec.get_filesystem_class("gs").clear_instance_cache()
                cfg = _cfg(image_tree, "gs://bucket/shards", parallel=False, storage_options=opts)
                remote = ingest(cfg, progress=False)
                batches = rank_batches("gs://bucket/shards", "t", tmp_path / "cache",
                                       global_batch=1, storage_options=opts)  # fmt: skip
            os.environ["STORAGE_EMULATOR_HOST"] = upstream  # the proxy is gone: read directly
            fs = fsspec.filesystem("gs", skip_instance_cache=True, **opts)
            remote_bytes = {r.name: fs.cat_file(f"bucket/shards/{r.name}") for r in remote.shards}
    finally:
        set_storage_defaults()
        fsspec.get_filesystem_class("gs").clear_instance_cache()
    assert n.failed >= 4 and n.stalled >= 1, vars(n)  # the faults did happen
    assert remote.model_dump(exclude={"settings"}) == local.model_dump(exclude={"settings"})
    for rec in local.shards:
        assert remote_bytes[rec.name] == (tmp_path / "local" / rec.name).read_bytes()
    ids = sorted(i for b in batches for i in b.sample_ids.tolist())  # the loader's path
    assert ids == list(range(local.num_samples)) and not any(b.skipped for b in batches)


# Ray-task ingest against inline, byte for byte: tests/test_data_plane.py (in its Ray instance).
