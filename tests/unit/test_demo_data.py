"""The demo dataset: layout, planted near-duplicates, shards from the real ingest, idempotence."""

import numpy as np

from pipeline.data.demo_images import TRANSFORMS, class_name, near_duplicate, render


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
