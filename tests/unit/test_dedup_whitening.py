import numpy as np
import pytest
import torch

from pipeline.dedup import ReferenceSet, descriptor
from pipeline.dedup.whitening import Whitening


def _background(n: int, seed: int = 0) -> np.ndarray:
    """Unit vectors that share one strong direction, as raw descriptors of smooth images do (a
    mirror-symmetric one: the fit is over vectors and their mirrors)."""
    rng = np.random.default_rng(seed)
    shared = rng.normal(size=descriptor.DIM)
    shared = shared + shared[descriptor.mirror_permutation()]
    x = rng.normal(size=(n, descriptor.DIM)) * 0.1 + 1.5 * shared
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_whitening_separates_vectors_that_share_a_background_direction():
    x = _background(8192)
    raw = x[:200] @ x[200:400].T
    w = Whitening.fit(torch.from_numpy(x))
    y = w.apply(x)
    assert np.allclose(np.linalg.norm(y, axis=1), 1.0, atol=1e-5)
    white = y[:200] @ y[200:400].T
    assert raw.mean() > 0.9 and abs(white.mean()) < 0.05, (raw.mean(), white.mean())
    # A copy (small perturbation) keeps a high cosine with its original.
    copy = x[:200] + np.random.default_rng(1).normal(size=(200, descriptor.DIM)) * 0.0005
    assert (np.sum(w.apply(copy) * y[:200], axis=1) > 0.9).all()


def test_whitening_commutes_with_the_mirror_and_keeps_zero_rows_zero():
    x = _background(4096)
    w = Whitening.fit(torch.from_numpy(x))
    assert np.allclose(
        w.apply(descriptor.mirror(x[:50])), descriptor.mirror(w.apply(x[:50])), atol=1e-5
    )
    zero = np.zeros((3, descriptor.DIM), np.float32)
    assert not np.abs(w.apply(zero)).any()


def test_small_backgrounds_shrink_towards_centring():
    """A handful of references cannot estimate 256 x 256 covariances: the fit is near centring."""
    x = _background(12)
    w = Whitening.fit(torch.from_numpy(x))
    centred = (x - w.mean) / np.linalg.norm(x - w.mean, axis=1, keepdims=True)
    assert np.allclose(w.apply(x), centred, atol=0.05)
    assert np.array_equal(Whitening.fit(torch.from_numpy(x)).matrix, w.matrix)  # deterministic


def test_parts_joined_equal_one_build_bit_for_bit(tmp_path):
    import skimage.data
    from PIL import Image

    from benchmarks.dedup_transforms import encode
    from pipeline.dedup import Record

    photo = Image.fromarray(skimage.data.astronaut())
    refs = [
        Record(
            f"r{i}", f"ref/{i}", encode(photo.crop((i * 20, i * 15, i * 20 + 200, i * 15 + 200)))
        )
        for i in range(8)
    ]
    whole = ReferenceSet.build(refs)
    joined = ReferenceSet.concat([ReferenceSet.build(refs[:3], whiten=False),
                                  ReferenceSet.build(refs[3:], whiten=False)])  # fmt: skip

    # Rows are grouped per build chunk (images, then views); by reference they are the same.
    def by_reference(index):
        return index.vectors[torch.argsort(index.owners, stable=True)]

    assert torch.equal(by_reference(whole.index), by_reference(joined.index))
    assert np.array_equal(whole.index.whitening.matrix, joined.index.whitening.matrix)
    with pytest.raises(ValueError, match="raw parts"):
        ReferenceSet.concat([whole])
    whole.save(str(tmp_path / "refs"))
    loaded = ReferenceSet.load(str(tmp_path / "refs"))
    assert np.array_equal(loaded.index.whitening.mean, whole.index.whitening.mean)
    q = descriptor.describe([photo])
    assert np.array_equal(loaded.index.search(q)[0], whole.index.search(q)[0])
