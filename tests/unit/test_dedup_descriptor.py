import io

import numpy as np
import pytest
import skimage.data
from PIL import Image, ImageOps

from benchmarks.dedup_transforms import colour_jitter, hue_shift, resize, text_overlay
from pipeline.dedup import descriptor

# Raw-descriptor bar: the filter thresholds whitened cosines (whitening.py, tested through the
# filter in test_dedup_filter.py); the raw descriptor alone must already separate these cases.
RAW_THRESHOLD = 0.90


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _cos(a: Image.Image, b: Image.Image) -> float:
    """Best of the plain and the mirrored comparison, as the filter scores."""
    va, vb = descriptor.describe([a, b])
    return float(max(va @ vb, descriptor.mirror(va[None])[0] @ vb))


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return Image.fromarray(skimage.data.astronaut())  # 512 x 512


@pytest.fixture(scope="module")
def reference(photo) -> Image.Image:
    return photo.crop((0, 0, 300, 300))  # top-left: face and part of the flag


def test_shape_dtype_norm_and_determinism(reference, photo):
    v = descriptor.describe([reference, photo, reference])
    assert v.shape == (3, descriptor.DIM) and descriptor.DIM <= 256 and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(v[0], v[2])
    assert np.array_equal(v[1], descriptor.describe([photo])[0])  # batch-independent


def test_uint8_batch_input_matches_pil_input(reference):
    arr = descriptor.prepare(reference)
    assert arr.shape == descriptor.SHAPE
    from_array = descriptor.describe(arr[None])
    assert np.array_equal(from_array, descriptor.describe([reference]))
    # Any size is accepted and resized like a PIL image; greyscale (N, H, W) too.
    big = np.asarray(reference)[None]
    assert np.allclose(descriptor.describe(big), from_array, atol=1e-6)
    grey = np.asarray(reference.convert("L"))[None]
    assert descriptor.describe(grey).shape == (1, descriptor.DIM)
    assert descriptor.describe([]).shape == (0, descriptor.DIM)


def test_mirror_permutation_is_exact_on_arrays():
    batch = np.random.default_rng(0).integers(0, 256, (4, *descriptor.SHAPE), dtype=np.uint8)
    plain = descriptor.describe(batch)
    flipped = descriptor.describe(np.ascontiguousarray(batch[:, :, ::-1]))
    assert np.allclose(descriptor.mirror(plain), flipped, atol=1e-5)
    assert not np.allclose(plain, flipped, atol=0.1)


def test_flat_image_gives_zero_vector_not_nan():
    v = descriptor.describe([Image.new("RGB", (80, 60), (120, 40, 200))])
    assert np.isfinite(v).all() and np.abs(v).max() < 1e-6


@pytest.mark.parametrize(
    "edit",
    [
        lambda im, rng: _jpeg(im, 15),
        lambda im, rng: resize(im, 0.35),
        lambda im, rng: resize(im, 1.7),
        lambda im, rng: im.convert("L").convert("RGB"),
        lambda im, rng: hue_shift(im, rng),
        lambda im, rng: colour_jitter(im, rng),
        lambda im, rng: ImageOps.mirror(im),
        lambda im, rng: im.crop((15, 15, 285, 285)),  # 81% of the area, centred
        lambda im, rng: text_overlay(im, rng),
    ],
    ids=["jpeg15", "down", "up", "grey", "hue", "colour", "flip", "crop81", "text"],
)
def test_copies_score_above_threshold(reference, edit):
    rng = np.random.default_rng(0)
    assert _cos(reference, edit(reference, rng)) >= RAW_THRESHOLD


def test_other_crops_of_the_same_photo_score_below_threshold(photo, reference):
    # Little or no overlap with the reference (0,0)-(300,300): hard negatives.
    for box in [(212, 212, 512, 512), (250, 0, 512, 300), (0, 250, 300, 512)]:
        assert _cos(reference, photo.crop(box)) < RAW_THRESHOLD, box


def test_unrelated_photos_score_low(reference):
    for other in (skimage.data.coffee(), skimage.data.chelsea(), skimage.data.rocket()):
        assert _cos(reference, Image.fromarray(other)) < 0.7
