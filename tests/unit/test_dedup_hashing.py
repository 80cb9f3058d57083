import hashlib
import io

import numpy as np
import pytest
import skimage.data
from PIL import Image, ImageOps

from pipeline.dedup.hashing import (
    HammingIndex,
    hamming_matrix,
    nearest_hamming,
    phash,
    popcount64,
    popcount64_table,
    sha256_hex,
)


def _reencode(image: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue()))


def _dist(a: int, b: int) -> int:
    return bin(a ^ b).count("1")


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    return Image.fromarray(skimage.data.astronaut())


def test_sha256_hex_matches_hashlib():
    assert sha256_hex(b"abc") == hashlib.sha256(b"abc").hexdigest()


def test_phash_stable_under_reencode_and_resize(astronaut):
    h, _ = phash(astronaut)
    assert _dist(h, phash(_reencode(astronaut, 15))[0]) <= 4
    assert _dist(h, phash(astronaut.resize((150, 150)))[0]) <= 4
    assert _dist(h, phash(astronaut.convert("L"))[0]) <= 4


def test_phash_mirror_variant_matches_flipped_copy(astronaut):
    h, h_mirror = phash(astronaut)
    flipped, flipped_mirror = phash(ImageOps.mirror(astronaut))
    assert flipped == h_mirror and flipped_mirror == h  # exact: the DCT sign rule, not a guess
    assert _dist(h, flipped) > 16  # plain pHash alone would miss the flipped copy


def test_phash_separates_different_photos(astronaut):
    h, _ = phash(astronaut)
    for other in (skimage.data.camera(), skimage.data.coffee(), skimage.data.chelsea()):
        assert _dist(h, phash(Image.fromarray(other))[0]) > 16


def test_phash_dc_bit_is_zero(astronaut):
    assert phash(astronaut)[0] >> 63 == 0
    assert 0 <= phash(astronaut)[1] < 2**63


def test_popcount_paths_agree():
    x = np.random.default_rng(0).integers(0, 2**64 - 1, size=1000, dtype=np.uint64, endpoint=True)
    expected = np.array([bin(int(v)).count("1") for v in x])
    assert (popcount64(x) == expected).all()
    assert (popcount64_table(x) == expected).all()


def test_hamming_matrix_equals_loop():
    rng = np.random.default_rng(1)
    q = rng.integers(0, 2**64 - 1, size=17, dtype=np.uint64, endpoint=True)
    r = rng.integers(0, 2**64 - 1, size=33, dtype=np.uint64, endpoint=True)
    loop = np.array([[_dist(int(a), int(b)) for b in r] for a in q])
    assert (hamming_matrix(q, r) == loop).all()


def test_nearest_hamming_chunked_equals_brute_force():
    rng = np.random.default_rng(2)
    r = rng.integers(0, 2**64 - 1, size=1000, dtype=np.uint64, endpoint=True)
    q = np.concatenate(
        [r[[5, 500, 999]] ^ np.uint64(0b1011), rng.integers(0, 2**63, 20).astype(np.uint64)]
    )
    idx, dist = nearest_hamming(q, r, chunk=64)
    full = hamming_matrix(q, r)
    assert (dist == full.min(axis=1)).all()
    assert (idx == full.argmin(axis=1)).all()  # first index on ties, like argmin
    assert list(idx[:3]) == [5, 500, 999] and list(dist[:3]) == [3, 3, 3]


def test_nearest_hamming_empty_reference():
    idx, dist = nearest_hamming(np.array([1, 2], dtype=np.uint64), np.array([], dtype=np.uint64))
    assert list(idx) == [-1, -1] and list(dist) == [255, 255]


@pytest.mark.parametrize("radius", [0, 1, 4, 8])
def test_hamming_index_finds_every_match_within_radius(radius):
    rng = np.random.default_rng(radius)
    refs = rng.integers(0, 2**64 - 1, size=5000, dtype=np.uint64, endpoint=True)
    # Planted near-copies at exactly `radius` flipped bits, spread over all chunks, plus noise.
    bits = [rng.choice(64, size=radius, replace=False) for _ in range(300)]
    flips = np.array([sum(1 << int(b) for b in bs) for bs in bits], dtype=np.uint64)
    planted = rng.integers(0, len(refs), size=300)
    queries = np.concatenate([refs[planted] ^ flips, rng.integers(0, 2**63, 200).astype(np.uint64)])
    idx, dist = HammingIndex(refs, radius).nearest(queries)
    full = hamming_matrix(queries, refs)
    within = full.min(axis=1) <= radius
    assert within[:300].all()
    assert (dist[within] == full.min(axis=1)[within]).all()
    assert (idx[within] == full.argmin(axis=1)[within]).all()
    assert (dist[~within] > radius).all()  # never reports a match that is not there


def test_hamming_index_large_radius_is_a_full_scan():
    rng = np.random.default_rng(3)
    refs = rng.integers(0, 2**63, size=300).astype(np.uint64)
    queries = rng.integers(0, 2**63, size=20).astype(np.uint64)
    index = HammingIndex(refs, 20)
    assert not index.tables
    expected = nearest_hamming(queries, refs)
    for got, want in zip(index.nearest(queries), expected, strict=True):
        assert np.array_equal(got, want)
