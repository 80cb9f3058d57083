"""Streaming records from folders and shard patterns (the dedup input side)."""

import pytest

from pipeline.config import UserError
from pipeline.data.demo_images import jpeg_bytes, render
from pipeline.data.records import records
from pipeline.ingest.run import IngestConfig, ingest


def test_folder_and_shard_records_agree(tmp_path):
    for c in range(2):
        (tmp_path / "raw" / f"k{c}").mkdir(parents=True)
        for i in range(5):
            (tmp_path / "raw" / f"k{c}" / f"{i}.jpg").write_bytes(jpeg_bytes(render(c, 0, i, 24)))
    (tmp_path / "raw" / "loose.jpg").write_bytes(jpeg_bytes(render(0, 0, 9, 24)))  # no class dir
    folder = list(records(str(tmp_path / "raw")))
    assert [r.source for r in folder][:2] == ["k0/0.jpg", "k0/1.jpg"] and len(folder) == 11
    assert folder[-1].source == "loose.jpg" and folder[-1].label == ""
    ingest(IngestConfig(input=str(tmp_path / "raw"), output=str(tmp_path / "sh"), prefix="p",
                        shard_bytes=2000, parallel=False), progress=False)  # fmt: skip
    shards = list(records(str(tmp_path / "sh" / "p-*.tar")))
    assert len(shards) == 10  # the loose file is not in the class layout ingest reads
    assert {r.data for r in shards} == {r.data for r in folder if "/" in r.source}
    assert shards[0].source == shards[0].key == "000000000" and shards[0].origin.endswith(
        "#000000000.jpg"
    )
    brace = list(records(str(tmp_path / "sh" / "p-{000000..000001}.tar")))
    assert [r.key for r in brace] == [r.key for r in shards[: len(brace)]]
    with pytest.raises(UserError, match="neither an image folder nor a"):
        records(str(tmp_path / "raw" / "loose.jpg"))
