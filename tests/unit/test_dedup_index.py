import json

import numpy as np
import pytest
import torch

from pipeline.dedup.index import KEYS_FILE, VECTORS_FILE, ReferenceIndex


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    refs = _unit(rng, 3000, 48)
    queries = np.concatenate([refs[[7, 1500, 2999]] + 0.01, _unit(rng, 200, 48)])
    keys = [f"ref/{i}" for i in range(len(refs))]
    return refs, queries.astype(np.float32), keys


def _brute_force(refs: np.ndarray, queries: np.ndarray) -> np.ndarray:
    # The index stores float16, so the reference answer uses the same rounded vectors.
    return queries @ refs.astype(np.float16).astype(np.float32).T


@pytest.mark.parametrize("ref_block,query_block", [(32768, 1024), (257, 50), (3, 101)])
def test_top1_equals_numpy_brute_force(data, ref_block, query_block):
    refs, queries, keys = data
    index = ReferenceIndex.build(refs, keys)
    scores, rows = index.search(queries, k=1, ref_block=ref_block, query_block=query_block)
    sims = _brute_force(refs, queries)
    assert scores.shape == rows.shape == (len(queries), 1)
    assert (rows[:, 0] == sims.argmax(axis=1)).all()
    assert np.allclose(scores[:, 0], sims.max(axis=1), atol=1e-5)
    assert list(rows[:3, 0]) == [7, 1500, 2999]


def test_topk_sorted_and_equal_to_brute_force(data):
    refs, queries, keys = data
    index = ReferenceIndex.build(refs, keys)
    scores, rows = index.search(queries, k=5, ref_block=700, query_block=64)
    sims = _brute_force(refs, queries)
    expected = np.argsort(-sims, axis=1, kind="stable")[:, :5]
    assert (rows == expected).all()
    assert (np.diff(scores, axis=1) <= 0).all()


def test_k_larger_than_index_pads_with_minus_one():
    index = ReferenceIndex.build(np.eye(3, dtype=np.float32), ["a", "b", "c"])
    scores, rows = index.search(np.eye(3, dtype=np.float32)[:1], k=5)
    assert list(rows[0]) == [0, 1, 2, -1, -1]
    assert scores[0, 0] == 1.0 and np.isinf(scores[0, 3])


def test_save_load_round_trip(tmp_path, data):
    refs, queries, keys = data
    index = ReferenceIndex.build(refs, keys)
    index.save(str(tmp_path / "idx"))
    assert json.loads((tmp_path / "idx" / KEYS_FILE).read_text()) == keys
    assert (tmp_path / "idx" / VECTORS_FILE).stat().st_size > refs.size * 2
    loaded = ReferenceIndex.load(str(tmp_path / "idx"))
    assert loaded.keys == keys and loaded.vectors.dtype == torch.float16
    assert torch.equal(loaded.vectors, index.vectors)
    for a, b in zip(loaded.search(queries, k=3), index.search(queries, k=3), strict=True):
        assert np.array_equal(a, b)


def test_save_load_through_fsspec_memory(data):
    refs, _, keys = data
    ReferenceIndex.build(refs[:10], keys[:10]).save("memory://dedup-test/idx")
    loaded = ReferenceIndex.load("memory://dedup-test/idx")
    assert loaded.keys == keys[:10] and len(loaded) == 10


def test_rejects_bad_input(data):
    refs, queries, keys = data
    with pytest.raises(ValueError, match="keys"):
        ReferenceIndex.build(refs, keys[:-1])
    bad = refs.copy()
    bad[5, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        ReferenceIndex.build(bad, keys)
    with pytest.raises(ValueError, match="queries"):
        ReferenceIndex.build(refs, keys).search(queries[:, :10])


def test_load_refuses_a_file_without_float16_vectors(tmp_path):
    from safetensors.torch import save_file

    (tmp_path / "x").mkdir()
    save_file({"vectors": torch.zeros(2, 4)}, str(tmp_path / "x" / VECTORS_FILE))  # float32
    (tmp_path / "x" / KEYS_FILE).write_text('["a", "b"]')
    with pytest.raises(ValueError, match="float16"):
        ReferenceIndex.load(str(tmp_path / "x"))


def test_several_vectors_per_key_answer_with_the_owner_and_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    vectors = _unit(rng, 12, 16)
    owners = np.array([0, 1, 2, 3, 0, 0, 1, 1, 2, 2, 3, 3])  # 4 keys, 3 vectors each
    index = ReferenceIndex.build(vectors, ["a", "b", "c", "d"], owners=owners)
    scores, rows = index.search(vectors + 0.001, k=1)
    assert list(rows[:, 0]) == list(owners)  # each vector's nearest is itself -> its owner
    assert np.allclose(scores[:, 0], (vectors * (vectors + 0.001)).sum(1), atol=1e-3)
    index.save(str(tmp_path / "idx"))
    loaded = ReferenceIndex.load(str(tmp_path / "idx"))
    assert loaded.keys == ["a", "b", "c", "d"] and loaded.owners.tolist() == owners.tolist()
    assert np.array_equal(loaded.search(vectors, k=1)[1], rows)
    with pytest.raises(ValueError, match="owners must index"):
        ReferenceIndex.build(vectors, ["a", "b"], owners=owners)
    with pytest.raises(ValueError, match="owners must be"):
        ReferenceIndex.build(vectors, ["a", "b", "c", "d"], owners=owners[:5])


def _clustered(rng: np.random.Generator, n: int, d: int, clusters: int = 400) -> np.ndarray:
    """Unit vectors around cluster centres: a crude stand-in for descriptors of real images,
    which fill a low-dimensional part of the sphere (random vectors are a harder, unreal case)."""
    centres = _unit(rng, clusters, d)
    x = centres[rng.integers(0, clusters, n)] + 0.08 * rng.standard_normal((n, d)).astype(
        np.float32
    )
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_the_ivf_finds_the_exact_top1_of_near_duplicates_and_round_trips(tmp_path):
    """Copies (cosine >= 0.9 to their reference) against 60k references: the IVF's top-1 is the
    exact search's for >= 99% of them, with exactly the exact search's score; saved and loaded
    (memory-mapped) it answers the same."""
    rng = np.random.default_rng(0)
    refs = _clustered(rng, 60_000, 64)
    noise = _unit(rng, 2000, 64)
    queries = 0.93 * refs[:2000] + np.sqrt(1 - 0.93**2) * noise
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    keys = [f"ref/{i}" for i in range(len(refs))]
    exact = ReferenceIndex.build(refs, keys)
    want_s, want_r = exact.search(queries)
    approx = ReferenceIndex.build(refs, keys)
    approx.build_ivf()
    got_s, got_r = approx.search(queries)
    decided = want_s[:, 0] >= 0.9
    assert decided.mean() > 0.9  # the copies do sit above the threshold
    same = got_r[decided, 0] == want_r[decided, 0]
    assert same.mean() >= 0.99, same.mean()
    assert np.array_equal(got_s[decided][same, 0], want_s[decided][same, 0])  # exact re-scoring
    approx.save(str(tmp_path / "ivf"))
    loaded = ReferenceIndex.load(str(tmp_path / "ivf"))
    assert loaded.kind == "ivf" and np.array_equal(loaded.search(queries)[1], got_r)
