"""The training loader: this rank's micro-batches, in stream order, from a cursor position.

Item ``i`` of ``RankBatches`` is this rank's ``i``-th micro-batch after the start position:
global step ``i // accum`` covers stream positions [start + step*B, start + (step+1)*B), this
rank reads its slice of them, cut into ``accum`` micro-batches. A standard DataLoader with any
number of workers delivers items in order, so batch contents never depend on workers or ranks.
Corrupt samples are skipped (the micro-batch is shorter) and counted in the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pipeline.data.order import GlobalOrder, rank_slice
from pipeline.data.reader import CorruptSample, ShardReader
from pipeline.ingest.encode import RejectedImage


@dataclass(frozen=True)
class BatchPlan:
    global_batch: int
    micro_batch: int
    world_size: int
    rank: int

    @property
    def accum(self) -> int:
        per_rank = rank_slice(self.global_batch, self.world_size, self.rank)
        span = per_rank[1] - per_rank[0]
        if span % self.micro_batch:
            raise ValueError(
                f"per-rank batch {span} (global {self.global_batch} / {self.world_size} ranks) "
                f"is not a multiple of micro-batch {self.micro_batch}"
            )
        return span // self.micro_batch


def sample_rng(seed: int, epoch: int, sample_id: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, sample_id, 0xA06])


def micro_batch_seed(seed: int, position: int) -> int:
    """The torch seed for the forward pass of the micro-batch starting at stream ``position``:
    dropout and stochastic-depth draws then belong to the micro-batch, not to the rank that
    happens to run it, so a resume on another number of workers draws the same masks."""
    return int(np.random.SeedSequence([seed, position, 0xD20]).generate_state(1)[0])


def image_member(members: dict[str, bytes]) -> bytes:
    for ext, data in members.items():
        if ext not in ("cls", "json"):
            return data
    raise CorruptSample("sample has no image member")


def load_sample(
    reader: ShardReader, order: GlobalOrder, transform, seed: int, position: int, sample_id: int
):
    """(image uint8 CHW, label) of ``sample_id``, which sits at stream ``position``; raises
    CorruptSample."""
    ref = order.locate(sample_id)
    members = reader.read(ref.shard, ref.index)
    try:
        label = int(members["cls"])
        image = transform(
            image_member(members), sample_rng(seed, position // order.num_samples, sample_id)
        )
    except (KeyError, ValueError, RejectedImage) as e:
        raise CorruptSample(f"sample {sample_id}: {e}") from None
    return image, label


class RankBatches(torch.utils.data.Dataset):
    def __init__(
        self,
        reader: ShardReader,
        order: GlobalOrder,
        transform,
        plan: BatchPlan,
        start: int,
        steps: int,
    ) -> None:
        self.reader, self.order, self.transform, self.plan = reader, order, transform, plan
        self.start, self.steps = start, steps
        self.accum = plan.accum
        self.lo, _ = rank_slice(plan.global_batch, plan.world_size, plan.rank)

    def __len__(self) -> int:
        return self.steps * self.accum

    def positions(self, i: int) -> range:
        step, micro = divmod(i, self.accum)
        first = self.start + step * self.plan.global_batch + self.lo + micro * self.plan.micro_batch
        return range(first, first + self.plan.micro_batch)

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(i)
        images, labels, ids, errors = [], [], [], []
        positions = self.positions(i)
        sample_ids = self.order.samples(positions.start, len(positions))  # one lookup per batch
        for pos, sample_id in zip(positions, sample_ids, strict=True):
            try:
                image, label = load_sample(
                    self.reader, self.order, self.transform, self.order.seed, pos, sample_id
                )
            except CorruptSample as e:
                errors.append(str(e))
                continue
            images.append(image)
            labels.append(label)
            ids.append(sample_id)
        res = getattr(self.transform, "res", 0)
        return {
            "images": torch.stack(images)
            if images
            else torch.zeros((0, 3, res, res), dtype=torch.uint8),
            "labels": torch.tensor(labels, dtype=torch.long),
            "sample_ids": torch.tensor(ids, dtype=torch.long),
            "skipped": errors,
            "index": i,
            "position": positions.start,
        }


def make_loader(
    dataset: torch.utils.data.Dataset, workers: int = 0, prefetch: int = 2
) -> torch.utils.data.DataLoader:
    """In-order delivery whatever ``workers`` is; items are whole micro-batches.

    The loader gets its own generator: creating an iterator otherwise draws from the global
    torch RNG, and a resumed run (which creates it after restoring that RNG) would shift
    dropout and stochastic depth away from the uninterrupted run. Sample randomness comes from
    ``sample_rng`` anyway."""
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        prefetch_factor=prefetch if workers > 0 else None,
        persistent_workers=False,
        generator=torch.Generator().manual_seed(0),
    )
