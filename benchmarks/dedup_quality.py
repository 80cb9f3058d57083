"""Near-duplicate filter quality on planted copies and hard negatives (benchmarks/dedup_data.py):
scikit-image's photographs, and real photographs with smooth and illustrated hard negatives.

    python -m benchmarks.dedup_quality                  # both sets, seed 0 (held out), ~60 s
    python -m benchmarks.dedup_quality --set real       # one set
    python -m benchmarks.dedup_quality --seed 1         # seeds 1-3 were used to pick thresholds

Precision counts every removal of a planted copy as correct (the audit's `match` can still name
the other reference cut from the same photo: reported as `wrong_match`); recall is per transform.
The sweep re-runs the filter with the embedding stage alone at a near-zero threshold, so every
pool image gets its best cosine, and then thresholds those scores.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from benchmarks.dedup_data import Item, build, build_real
from pipeline.dedup import DedupConfig, DedupFilter, ReferenceSet, describe, mirror
from pipeline.dedup.features import Record, decode_batch

SETS = {"skimage": build, "real": build_real}
SWEEP = (0.60, 0.65, 0.70, 0.75, 0.78, 0.80, 0.82, 0.84, 0.85, 0.86, 0.88, 0.90, 0.92, 0.95)
PHASH_SWEEP = (0, 2, 4, 6, 8, 10, 12, 16)


def _records(items: list[Item]) -> list[Record]:
    return [Record(i.key, i.source, i.data) for i in items]


def _metrics(pool: list[Item], removed: dict[str, dict]) -> dict:
    pos = [p for p in pool if p.truth]
    neg = [p for p in pool if not p.truth]
    tp = sum(p.key in removed for p in pos)
    fp = sum(p.key in removed for p in neg)
    wrong = sum(p.key in removed and removed[p.key]["match"] != p.truth for p in pos)
    return {
        "precision": tp / (tp + fp) if tp + fp else 1.0,
        "recall": tp / len(pos),
        "removed": tp + fp,
        "false_positives": fp,
        "wrong_match": wrong,
    }


def _per_label(pool: list[Item], removed: dict[str, dict]) -> dict:
    out: dict[str, dict] = {}
    for label in dict.fromkeys(p.label for p in pool):
        items = [p for p in pool if p.label == label]
        hits = [removed[p.key] for p in items if p.key in removed]
        stages = {s: sum(h["stage"] == s for h in hits) for s in ("exact", "phash", "embedding")}
        out[label] = {"n": len(items), "removed": len(hits) / len(items), **stages}
    return out


def _throughput(pool: list[Item], repeats: int = 3) -> dict:
    """Per-image cost on one core of the pool-side work (decode + pHash + descriptor), best of 3."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    records = _records(pool)
    try:
        describe(decode_batch(records[:8]).thumbs)  # warm-up: filter bank, FFT plans
        decode_s, describe_s = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            decoded = decode_batch(records)
            mid = time.perf_counter()
            describe(decoded.thumbs)
            decode_s.append(mid - start)
            describe_s.append(time.perf_counter() - mid)
    finally:
        torch.set_num_threads(threads)
    n = len(decoded.rows)
    return {
        "images": n,
        "mean_kb": float(np.mean([len(r.data) for r in records])) / 1024,
        "decode_phash_ms": 1e3 * min(decode_s) / n,
        "descriptor_ms": 1e3 * min(describe_s) / n,
        "images_per_s_1core": n / (min(decode_s) + min(describe_s)),
    }


def _unrelated_pairs(refs: list[Item], pool: list[Item], t: float, references: ReferenceSet):
    """Cosines between images cut from different photographs: the null the threshold must clear
    (descriptors whitened as the filter's are)."""
    white = references.index.whitening
    decoded = decode_batch(_records(pool))
    vectors = white.apply(describe(decoded.thumbs))
    names = [pool[i].key.split("/")[0] for i in decoded.rows]
    ref_vectors = white.apply(describe(decode_batch(_records(refs)).thumbs))  # not crop views
    x = np.concatenate([ref_vectors, vectors])
    photo = np.array([r.key.split("/")[0] for r in refs] + names)
    sims = np.maximum(x @ x.T, mirror(x) @ x.T)
    upper = np.triu(photo[:, None] != photo[None, :], k=1)
    null = sims[upper]
    return {
        "pairs": int(null.size),
        "mean": float(null.mean()),
        "p99_9": float(np.quantile(null, 0.999)),
        "max": float(null.max()),
        "above_threshold": int((null >= t).sum()),
    }


def evaluate(refs: list[Item], pool: list[Item], config: DedupConfig):
    """The filter at `config` over one set: (references, report, {key: audit}, overall)."""
    references = ReferenceSet.build(_records(refs), view_side=config.view_side)
    report = DedupFilter(references, config).run(_records(pool))
    removed = {r["key"]: r for r in report.removed}
    return references, report, removed, _metrics(pool, removed)


def run(seed: int = 0, config: DedupConfig | None = None, photos: str | None = None) -> dict:
    """One set (`photos`: skimage or real) at one seed; both sets (seed 0) when photos is None."""
    if photos is None:
        return {name: run(seed, config, name) for name in SETS}
    config = config or DedupConfig()
    start = time.perf_counter()
    refs, pool = SETS[photos](seed)
    references, report, removed, overall = evaluate(refs, pool, config)

    # Scores for the sweeps: each stage alone, at a threshold that lets everything through.
    exact = {r["key"] for r in report.removed if r["stage"] == "exact"}
    emb_cfg = config.model_copy(update={"stages": ["embedding"], "embedding_threshold": 1e-9})
    phash_cfg = config.model_copy(update={"stages": ["phash"], "phash_max_distance": 63})
    cos = {r["key"]: r for r in DedupFilter(references, emb_cfg).run(_records(pool)).removed}
    ham = {r["key"]: r for r in DedupFilter(references, phash_cfg).run(_records(pool)).removed}
    dist = {k: round((1 - r["score"]) * 64) for k, r in ham.items()}

    def combined(t_emb: float, t_ham: int) -> dict[str, dict]:
        out = {k: cos[k] for k in cos if cos[k]["score"] >= t_emb}
        out.update({k: ham[k] for k in ham if dist[k] <= t_ham})
        out.update({k: removed[k] for k in exact})
        return out

    t = config.phash_max_distance
    sweep = [{"threshold": x, **_metrics(pool, combined(x, t))} for x in SWEEP]
    phash_only = [
        {"max_distance": d, **_metrics(pool, {k: ham[k] for k in ham if dist[k] <= d})}
        for d in PHASH_SWEEP
    ]
    negatives = [p for p in pool if not p.truth]
    return {
        "set": photos,
        "seed": seed,
        "references": len(refs),
        "pool": len(pool),
        "positives": sum(1 for p in pool if p.truth),
        "negatives": len(negatives),
        "phash_max_distance": config.phash_max_distance,
        "embedding_threshold": config.embedding_threshold,
        "counts": report.counts,
        "overall": overall,
        "per_label": _per_label(pool, removed),
        "embedding_sweep": sweep,
        "phash_sweep": phash_only,
        "hardest_negative_cosine": max(
            (cos[p.key]["score"] for p in negatives if p.key in cos), default=0.0
        ),
        "closest_negative_phash": min(
            (dist[p.key] for p in negatives if p.key in dist), default=64
        ),
        "unrelated_pairs": _unrelated_pairs(refs, pool, config.embedding_threshold, references),
        "throughput": _throughput(pool),
        "seconds": time.perf_counter() - start,
    }


def markdown(result: dict) -> str:
    o = result["overall"]
    lines = [
        f"{result['set']} set, seed {result['seed']}: {result['references']} references, {result['positives']} copies,"
        f" {result['negatives']} negatives; pHash <= {result['phash_max_distance']},"
        f" cosine >= {result['embedding_threshold']}",
        "",
        f"**overall: precision {o['precision']:.3f}, recall {o['recall']:.3f}**"
        f" ({o['false_positives']} false positives, {o['wrong_match']} wrong-reference matches;"
        f" counts {result['counts']})",
        "",
        "| pool items | n | removed | by exact | by phash | by embedding |",
        "|---|---|---|---|---|---|",
    ]
    for label, r in result["per_label"].items():
        lines.append(
            f"| {label} | {r['n']} | {r['removed']:.2f} | {r['exact']} | {r['phash']} |"
            f" {r['embedding']} |"
        )
    lines += [
        "",
        "| cosine threshold | precision | recall | false positives |",
        "|---|---|---|---|",
    ]
    for r in result["embedding_sweep"]:
        lines.append(
            f"| {r['threshold']:.2f} | {r['precision']:.3f} | {r['recall']:.3f} |"
            f" {r['false_positives']} |"
        )
    lines += ["", "| pHash alone, max distance | precision | recall |", "|---|---|---|"]
    for r in result["phash_sweep"]:
        lines.append(f"| {r['max_distance']} | {r['precision']:.3f} | {r['recall']:.3f} |")
    tp = result["throughput"]
    u = result["unrelated_pairs"]
    lines += [
        "",
        f"hardest negative cosine {result['hardest_negative_cosine']:.3f}; closest negative pHash"
        f" distance {result['closest_negative_phash']}; {u['pairs']} unrelated-photo pairs:"
        f" mean cosine {u['mean']:.3f}, 99.9th pct {u['p99_9']:.3f}, max {u['max']:.3f},"
        f" {u['above_threshold']} at or above the threshold",
        f"pool-side features on 1 core: decode+pHash {tp['decode_phash_ms']:.2f} ms/img,"
        f" descriptor {tp['descriptor_ms']:.2f} ms/img -> {tp['images_per_s_1core']:.0f} img/s"
        f" ({tp['images']} pool images, mean {tp['mean_kb']:.0f} kB encoded);"
        f" benchmark wall time {result['seconds']:.1f} s",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, action="append", help="repeatable; default 0")
    parser.add_argument("--set", choices=sorted(SETS), action="append", help="default: both")
    parser.add_argument("--view-side", type=float, help="reference crop views (0: none)")
    parser.add_argument("--threshold", type=float, help="embedding cosine threshold")
    args = parser.parse_args()
    update = {"view_side": args.view_side, "embedding_threshold": args.threshold}
    config = DedupConfig(**{k: v for k, v in update.items() if v is not None})
    for photos in args.set or list(SETS):
        for seed in args.seed or [0]:
            print(markdown(run(seed, config, photos)))
            print()


if __name__ == "__main__":
    main()
