"""The demo dataset built end to end: layout, planted near-duplicates, shards from the real
ingest (its process pool), idempotence."""

import json

from PIL import Image

from pipeline.data.demo_images import TRANSFORMS, class_name
from pipeline.data.demo_set import DemoDataConfig, build_demo_data
from pipeline.data.manifest import read_manifest


def test_build_small_demo_set(tmp_path, capsys):
    cfg = DemoDataConfig(
        out=str(tmp_path / "demo"), classes=4, train_per_class=6, val_per_class=2, reference=8,
        planted=8, size=32, workers=1, parallel_ingest=False,
    )  # fmt: skip
    root = build_demo_data(cfg)
    planted = [json.loads(line) for line in (root / "planted.jsonl").read_text().splitlines()]
    assert len(planted) == 8 and {p["transform"] for p in planted} == set(TRANSFORMS)
    for p in planted:
        pool, ref = root / "raw" / "train" / p["pool"], root / "raw" / "reference" / p["reference"]
        assert pool.exists() and ref.exists()
        assert pool.parent.name == ref.parent.name  # filed under the reference's class
        with Image.open(pool) as img:
            assert img.size == (32, 32)
    train = read_manifest(str(root / "shards" / "train" / "train.manifest.json"))
    assert train.num_samples == 4 * 6 + 8 and train.classes == [class_name(c) for c in range(4)]
    assert read_manifest(str(root / "shards" / "val" / "val.manifest.json")).num_samples == 8
    assert (
        read_manifest(str(root / "shards" / "reference" / "reference.manifest.json")).num_samples
        == 8
    )
    capsys.readouterr()
    build_demo_data(cfg)
    assert "up to date" in capsys.readouterr().out
