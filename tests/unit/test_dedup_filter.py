import io
import struct
import zlib

import numpy as np
import pytest
import skimage.data
from PIL import Image, ImageOps

from benchmarks.dedup_transforms import encode, hue_shift, resize, text_overlay
from pipeline.dedup import DedupConfig, DedupFilter, Record, ReferenceSet, deduplicate
from pipeline.dedup.decode import UndecodableImage, decode_image

AUDIT_KEYS = {"key", "source", "match", "score", "stage"}


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares a huge image and carries no pixels: a decompression-bomb probe."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def planted():
    """References: crops of three photographs. Pool: planted copies plus negatives."""
    rng = np.random.default_rng(0)
    astronaut = Image.fromarray(skimage.data.astronaut())
    coffee = Image.fromarray(skimage.data.coffee())
    chelsea = Image.fromarray(skimage.data.chelsea())
    ref_images = {
        "astro": astronaut.crop((0, 0, 300, 300)),
        "coffee": coffee.crop((0, 0, 360, 260)),
        "cat": chelsea.crop((100, 0, 451, 300)),
    }
    refs = [Record(k, f"imagenet/{k}.jpg", encode(im, quality=95)) for k, im in ref_images.items()]
    a, c, k = ref_images["astro"], ref_images["coffee"], ref_images["cat"]
    copies = {
        "astro-exact": (refs[0].data, "exact"),
        "astro-png": (encode(a, "PNG"), "phash"),
        "astro-flip-small": (encode(resize(ImageOps.mirror(a), 0.4)), "phash"),
        "astro-grey": (encode(a.convert("L")), "phash"),
        "coffee-jpeg10": (encode(c, quality=10), "phash"),
        "coffee-crop": (encode(c.crop((20, 15, 340, 245))), None),
        "cat-hue": (encode(hue_shift(k, rng)), None),
        "cat-text": (encode(text_overlay(k, rng)), None),
    }
    truth = {name: f"imagenet/{name.split('-')[0]}.jpg" for name in copies}
    negatives = {
        "astro-other-crop": encode(astronaut.crop((212, 212, 512, 512))),
        "coffee-other-crop": encode(coffee.crop((300, 200, 600, 400))),
        "rocket": encode(Image.fromarray(skimage.data.rocket())),
        "camera": encode(Image.fromarray(skimage.data.camera())),
    }
    pool = [Record(n, f"web/{n}", d) for n, (d, _) in copies.items()]
    pool += [Record(n, f"web/{n}", d) for n, d in negatives.items()]
    stages = {n: s for n, (_, s) in copies.items()}
    return refs, pool, truth, stages


def test_planted_duplicates_precision_and_recall_are_one(planted):
    refs, pool, truth, stages = planted
    report = deduplicate(refs, pool)
    removed = {r["key"]: r for r in report.removed}
    assert set(removed) == set(truth)  # recall 1 and precision 1
    for key, r in removed.items():
        assert set(r) == AUDIT_KEYS
        assert r["source"] == f"web/{key}" and r["match"] == truth[key]
        assert isinstance(r["score"], float) and 0.0 < r["score"] <= 1.0
        if stages[key]:
            assert r["stage"] == stages[key], key
    assert removed["astro-exact"]["score"] == 1.0
    counts = report.counts
    assert counts["pool"] == len(pool) and counts["kept"] == 4 and counts["undecodable"] == 0
    assert counts["exact"] + counts["phash"] + counts["embedding"] == len(truth)
    assert counts["embedding"] >= 1  # at least one copy needs the descriptor


def test_scores_follow_the_stage_definitions(planted):
    refs, pool, _, _ = planted
    report = deduplicate(refs, pool)
    for r in report.removed:
        if r["stage"] == "phash":
            distance = (1.0 - r["score"]) * 64
            assert abs(distance - round(distance)) < 1e-9 and round(distance) <= 4
        if r["stage"] == "embedding":
            assert r["score"] >= DedupConfig().embedding_threshold


def test_stage_subsets(planted):
    refs, pool, truth, _ = planted
    references = ReferenceSet.build(refs)
    exact_only = DedupFilter(references, DedupConfig(stages=["exact"])).run(pool)
    assert [r["key"] for r in exact_only.removed] == ["astro-exact"]
    no_phash = DedupFilter(references, DedupConfig(stages=["exact", "embedding"])).run(pool)
    assert {r["key"] for r in no_phash.removed} == set(truth)
    assert no_phash.counts["phash"] == 0


def test_corrupt_and_oversized_images_are_skipped_and_counted(planted):
    refs, pool, _, _ = planted
    good = pool[1]
    bad = [
        Record("truncated", "web/truncated", good.data[: len(good.data) // 3]),
        Record("garbage", "web/garbage", b"not an image at all"),
        Record("empty", "web/empty", b""),
        Record("bomb", "web/bomb", _png_header_only(20_000, 20_000)),  # PIL's own bomb error
        Record("huge", "web/huge", _png_header_only(8_000, 8_000)),  # over our 50 MP limit
    ]
    report = deduplicate(refs, [*bad, good])
    assert report.counts["undecodable"] == len(bad)
    assert set(report.undecodable) == {r.key for r in bad}
    assert [r["key"] for r in report.removed] == [good.key]


def test_pixel_limit_is_configurable():
    data = encode(Image.new("RGB", (200, 100), "red"))
    assert decode_image(data).size == (200, 100)
    with pytest.raises(UndecodableImage, match="pixel limit"):
        decode_image(data, max_pixels=10_000)


def test_undecodable_reference_still_matches_exact_bytes():
    junk = b"\xff\xd8\xff not really a jpeg"
    report = deduplicate([Record("r", "ref/r", junk)], [Record("p", "web/p", junk)])
    assert report.removed == [
        {"key": "p", "source": "web/p", "match": "ref/r", "score": 1.0, "stage": "exact"}
    ]


def test_reference_set_save_load_gives_identical_results(tmp_path, planted):
    refs, pool, _, _ = planted
    built = ReferenceSet.build(refs)
    built.save(str(tmp_path / "refs"))
    loaded = ReferenceSet.load(str(tmp_path / "refs"))
    assert loaded.keys == built.keys and loaded.sources == built.sources
    assert np.array_equal(loaded.phash, built.phash) and np.array_equal(loaded.sha256, built.sha256)
    assert DedupFilter(loaded).run(pool).removed == DedupFilter(built).run(pool).removed


def test_records_as_tuples_and_mappings_and_batches(planted):
    refs, pool, _, _ = planted
    as_tuples = [tuple(r) for r in refs]
    as_dicts = [{"key": r.key, "source": r.source, "data": r.data} for r in pool]
    expected = deduplicate(refs, pool).removed
    got = deduplicate(as_tuples, as_dicts, DedupConfig(batch_size=3)).removed
    # Same decisions; scores agree to float32 matmul rounding (BLAS blocking depends on batch).
    assert [{**r, "score": 0} for r in got] == [{**r, "score": 0} for r in expected]
    assert np.allclose([r["score"] for r in got], [r["score"] for r in expected], atol=1e-5)


def test_duplicate_reference_keys_are_refused(planted):
    refs, _, _, _ = planted
    with pytest.raises(ValueError, match="appears twice"):
        ReferenceSet.build([refs[0], refs[1], refs[0]])


def test_empty_inputs():
    assert deduplicate([], []).counts["pool"] == 0
    image = encode(Image.fromarray(skimage.data.camera()))
    report = deduplicate([], [Record("p", "web/p", image)])
    assert report.removed == [] and report.counts["kept"] == 1


def test_config_rejects_bad_values():
    with pytest.raises(ValueError):
        DedupConfig(phash_max_distance=64)
    with pytest.raises(ValueError):
        DedupConfig(stages=["exact", "clip"])
    with pytest.raises(ValueError):
        DedupConfig(embedding_threshold=1.5)


def test_summary_line(planted):
    refs, pool, _, _ = planted
    line = deduplicate(refs, pool).summary()
    assert line.startswith("dedup: 12 pool images") and "\n" not in line


def test_decode_handles_transparency_and_16_bit():
    rgba = Image.new("RGBA", (40, 30), (255, 0, 0, 0))
    assert decode_image(encode(rgba, "PNG")).getpixel((0, 0)) == (255, 255, 255)
    deep = Image.fromarray((np.arange(1200, dtype=np.uint16) * 50).reshape(30, 40))
    buf = io.BytesIO()
    deep.save(buf, "PNG")
    out = decode_image(buf.getvalue())
    assert out.mode == "RGB" and out.getextrema()[0] == (0, 255)


def test_exif_orientation_is_applied():
    image = Image.fromarray(skimage.data.astronaut()).resize((64, 32))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    buf = io.BytesIO()
    image.save(buf, "JPEG", exif=exif.tobytes())
    assert decode_image(buf.getvalue()).size == (32, 64)


def test_crop_views_find_an_off_centre_crop_the_whole_image_misses(tmp_path):
    photo = Image.fromarray(skimage.data.coffee()).crop((0, 0, 400, 300))
    refs = [Record("coffee", "imagenet/coffee.jpg", encode(photo, quality=95))]
    crop = photo.crop((0, 0, 340, 255))  # ~72% of the area, anchored top-left
    pool = [Record("crop", "web/crop", encode(crop, quality=60))]
    config = DedupConfig(stages=["embedding"])
    without = ReferenceSet.build(refs, view_side=0.0)
    with_views = ReferenceSet.build(refs, view_side=config.view_side)
    assert len(without.index) == 1 and len(with_views.index) == 6  # whole image + 5 views
    assert DedupFilter(without, config).run(pool).counts["embedding"] == 0
    report = DedupFilter(with_views, config).run(pool)
    assert [r["match"] for r in report.removed] == ["imagenet/coffee.jpg"]
    with_views.save(str(tmp_path / "refs"))
    loaded = ReferenceSet.load(str(tmp_path / "refs"))
    assert loaded.view_side == config.view_side and len(loaded.index) == 6
    assert DedupFilter(loaded, config).run(pool).removed == report.removed
