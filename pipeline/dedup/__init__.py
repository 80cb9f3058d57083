"""Near-duplicate filtering of the pretraining pool against a reference set (ImageNet train+val).

    refs = ReferenceSet.build(reference_records)          # once; refs.save(path) / .load(path)
    report = DedupFilter(refs, DedupConfig()).run(pool_records)
    report.removed  # [{"key", "source", "match", "score", "stage"}, ...]; report.counts

Stages, cheapest first: exact sha256 -> pHash Hamming -> descriptor cosine (docs/dedup.md).
"""

from pipeline.dedup.descriptor import describe, mirror
from pipeline.dedup.features import Record
from pipeline.dedup.filter import (
    STAGES,
    BatchResult,
    DedupConfig,
    DedupFilter,
    FilterReport,
    deduplicate,
)
from pipeline.dedup.hashing import hamming_matrix, nearest_hamming, phash, sha256_hex
from pipeline.dedup.index import ReferenceIndex
from pipeline.dedup.references import ReferenceSet

__all__ = [
    "STAGES",
    "BatchResult",
    "DedupConfig",
    "DedupFilter",
    "FilterReport",
    "Record",
    "ReferenceIndex",
    "ReferenceSet",
    "deduplicate",
    "describe",
    "hamming_matrix",
    "mirror",
    "nearest_hamming",
    "phash",
    "sha256_hex",
]
