"""Decide every shard's contents before any work starts: the same input always gives the same
shards, whichever process writes them."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from pipeline.ingest.sources import Item


@dataclass(frozen=True)
class ShardPlan:
    number: int
    name: str
    keys: tuple[str, ...]
    items: tuple[Item, ...]
    fingerprint: str


def class_names(items: list[Item]) -> list[str]:
    """Class index = position in this list. Integer labels keep their value as the index."""
    labels = {it.label for it in items}
    if labels and all(lbl.isdigit() for lbl in labels):
        return [str(i) for i in range(max(int(lbl) for lbl in labels) + 1)]
    return sorted(labels)


def plan_shards(
    items: list[Item], prefix: str, shard_bytes: int, max_samples: int, settings: dict
) -> list[ShardPlan]:
    """Greedy packing in input order by source size (unknown sizes count as 0, so the sample cap
    bounds them). Keys are global sample numbers: unique within the dataset and sortable."""
    plans, current, size = [], [], 0
    for i, item in enumerate(items):
        if current and (size + item.size > shard_bytes or len(current) >= max_samples):
            plans.append(current)
            current, size = [], 0
        current.append((f"{i:09d}", item))
        size += item.size
    if current:
        plans.append(current)
    out = []
    settings_json = json.dumps(settings, sort_keys=True)
    for n, members in enumerate(plans):
        h = hashlib.sha256(settings_json.encode())
        for key, it in members:
            h.update(f"\n{key}\t{it.source}\t{it.label}\t{it.size}".encode())
        out.append(
            ShardPlan(
                number=n,
                name=f"{prefix}-{n:06d}.tar",
                keys=tuple(k for k, _ in members),
                items=tuple(it for _, it in members),
                fingerprint=h.hexdigest(),
            )
        )
    return out
