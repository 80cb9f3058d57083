"""Ingest: shards + manifest through fsspec, skip-complete re-runs, corrupt input, Ray parity."""

import hashlib
import json
import tarfile
from pathlib import Path

import fsspec
import numpy as np
import pytest

from pipeline.data.manifest import read_manifest
from pipeline.ingest.run import IngestConfig, ingest
from tests.builders import ingest_config, jpeg, round_trip


def _read_shard(fs, path):
    with fs.open(path, "rb") as f, tarfile.open(fileobj=f) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}


def test_folder_ingest_writes_shards_manifest_and_index(image_tree, tmp_path):
    out = tmp_path / "out"
    m = ingest(ingest_config(image_tree, out, parallel=False), progress=False)
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
    first = ingest(ingest_config(image_tree, out, parallel=False))
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    second = ingest(ingest_config(image_tree, out, parallel=False))
    assert "0 written" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")} == mtimes
    assert second == first
    # An interrupted run leaves a tar without its index: that shard is rewritten.
    (out / first.shards[1].index).unlink()
    ingest(ingest_config(image_tree, out, parallel=False))
    assert "1 written" in capsys.readouterr().out
    # Changed input changes the plan fingerprint of the affected shards only.
    (image_tree / "emu" / "5.jpg").write_bytes(jpeg(np.random.default_rng(9), 50, 40))
    ingest(ingest_config(image_tree, out, parallel=False))
    assert "1 written" in capsys.readouterr().out
    # A new class that shifts the class indices rewrites every shard (their cls members change).
    (image_tree / "bat").mkdir()
    (image_tree / "bat" / "0.jpg").write_bytes(jpeg(np.random.default_rng(3), 30, 30))
    shifted = ingest(ingest_config(image_tree, out, parallel=False))
    assert f"{len(shifted.shards)} written, 0 already complete" in capsys.readouterr().out
    assert shifted.classes == ["bat", "cat", "dog", "emu"]


def test_list_and_shard_inputs_give_the_same_images(image_tree, tmp_path):
    folder = ingest(ingest_config(image_tree, tmp_path / "a", parallel=False), progress=False)
    rows = [{"path": f"{c}/{i}.jpg", "label": c} for c in ["cat", "dog", "emu"] for i in range(6)]
    (image_tree / "list.csv").write_text(
        "path,label\n" + "".join(f"{r['path']},{r['label']}\n" for r in rows)
    )
    (image_tree / "list.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    from_csv = ingest(
        ingest_config(image_tree / "list.csv", tmp_path / "b", parallel=False), progress=False
    )
    from_jsonl = ingest(
        ingest_config(image_tree / "list.jsonl", tmp_path / "c", parallel=False), progress=False
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
        ingest(ingest_config(tmp_path / "x.txt", tmp_path / "o"), progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images found"):
        ingest(ingest_config(tmp_path / "empty", tmp_path / "o", format="folder"), progress=False)
    (tmp_path / "l.csv").write_text("file,cls\na.jpg,1\n")
    with pytest.raises(ValueError, match="expected fields 'path' and 'label'"):
        ingest(ingest_config(tmp_path / "l.csv", tmp_path / "o"), progress=False)


def test_memory_filesystem_round_trip(image_tree, tmp_path):
    local = ingest(ingest_config(image_tree, tmp_path / "local", parallel=False), progress=False)
    mem = round_trip(image_tree, "memory://ingest-test/out", {}, parallel=True)  # in-process only
    assert [s.sha256 for s in mem.shards] == [s.sha256 for s in local.shards]
