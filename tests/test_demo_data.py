"""The demo dataset: layout, planted near-duplicates, shards from the real ingest, idempotence."""

import json

import numpy as np
import pytest
from PIL import Image

from pipeline.data.demo_images import TRANSFORMS, class_name, near_duplicate, render
from pipeline.data.demo_set import DemoDataConfig, build_demo_data
from pipeline.data.manifest import read_manifest


def test_render_is_deterministic_and_classes_differ():
    a = np.asarray(render(3, seed=1, index=0, size=48))
    assert a.shape == (48, 48, 3) and np.array_equal(a, np.asarray(render(3, 1, 0, 48)))
    assert not np.array_equal(a, np.asarray(render(3, 1, 1, 48)))
    assert class_name(3) != class_name(11) and class_name(3).startswith("003_")


def test_near_duplicates_do_not_touch_the_original():
    base = render(5, 0, 0, 48)
    before = np.asarray(base).copy()
    rng = np.random.default_rng(0)
    for t in TRANSFORMS:
        copy, quality = near_duplicate(base, t, rng)
        assert copy.size == base.size and 1 <= quality <= 100
    assert np.array_equal(np.asarray(base), before)
    grey, _ = near_duplicate(base, "grey", rng)
    g = np.asarray(grey).astype(int)
    assert (g[..., 0] == g[..., 1]).all()


@pytest.mark.e2e
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
