"""One worker's view of the data: its micro-batches from the global order, and its share of the
held-out split, both from shards + manifests written by ingest (any fsspec URL)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import fsspec
import torch
import torch.distributed as dist
import torch.nn.functional as F

from pipeline.data.loader import BatchPlan, RankBatches, image_member, make_loader
from pipeline.data.manifest import Manifest
from pipeline.data.order import GlobalOrder
from pipeline.data.reader import CorruptSample, ShardReader
from pipeline.data.transforms import EvalTransform, TrainTransform, normalize
from pipeline.train.config import DataSection


@dataclass
class TrainData:
    reader: ShardReader
    order: GlobalOrder
    transform: TrainTransform

    @classmethod
    def open(cls, cfg: DataSection, seed: int) -> TrainData:
        reader = ShardReader(cfg.train, cfg.train_prefix, cfg.storage_options)
        order = GlobalOrder(reader.manifest.shard_sizes(), seed, cfg.block_shards)
        transform = TrainTransform(cfg.resolution, scale=(cfg.min_crop_scale, 1.0))
        return cls(reader, order, transform)

    @property
    def manifest(self) -> Manifest:
        return self.reader.manifest

    def micro_batches(
        self, plan: BatchPlan, position: int, steps: int, workers: int
    ) -> Iterator[dict]:
        """This rank's micro-batches for `steps` optimizer steps from stream `position`."""
        dataset = RankBatches(self.reader, self.order, self.transform, plan, position, steps)
        return iter(make_loader(dataset, workers))


class HeldOut:
    """The validation split in a fixed order; rank r evaluates samples r, r + W, r + 2W, ..."""

    def __init__(self, cfg: DataSection) -> None:
        self.reader = ShardReader(cfg.val, cfg.val_prefix, cfg.storage_options)
        self.transform = EvalTransform(cfg.eval_resolution or cfg.resolution)
        refs = [(s, i) for s, n in enumerate(self.reader.manifest.shard_sizes()) for i in range(n)]
        self.refs = refs[: cfg.val_samples] if cfg.val_samples else refs

    def _image(self, shard: int, index: int) -> tuple[torch.Tensor, int] | None:
        try:
            members = self.reader.read(shard, index)
            return self.transform(image_member(members)), int(members["cls"])
        except (CorruptSample, KeyError, ValueError):
            return None  # ingest and dedup report corrupt data; evaluation just skips it

    def _batches(self, rank: int, world: int, batch: int) -> Iterator[tuple]:
        """The same number of batches on every rank (ZeRO-3 forwards are collectives); a rank
        out of samples gets an empty batch, which the caller runs as a weightless dummy."""
        mine = self.refs[rank::world]
        rounds = math.ceil(math.ceil(len(self.refs) / world) / batch)  # rank 0's share: largest
        res = self.transform.res
        for r in range(rounds):
            loaded = [self._image(*ref) for ref in mine[r * batch : (r + 1) * batch]]
            loaded = [x for x in loaded if x is not None]
            if not loaded:
                yield torch.zeros(1, 3, res, res, dtype=torch.uint8), torch.full((1,), -1)
                continue
            yield torch.stack([x[0] for x in loaded]), torch.tensor([x[1] for x in loaded])

    @torch.no_grad()
    def loss(
        self, model: torch.nn.Module, rank: int, world: int, batch: int, device, dtype
    ) -> dict[str, float]:
        """Mean cross-entropy, top-1 and top-5 over the whole split (summed across ranks)."""
        was_training = model.training
        model.eval()
        totals = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top-1, count, top-5
        for images, labels in self._batches(rank, world, batch):
            logits = model(normalize(images.to(device), dtype)).float()
            labels = labels.to(device)
            real = labels >= 0  # -1 marks a dummy batch
            if real.any():
                logits, labels = logits[real], labels[real]
                totals[0] += F.cross_entropy(logits, labels, reduction="sum").double()
                totals[1] += (logits.argmax(1) == labels).sum()
                totals[2] += len(labels)
                top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
                totals[3] += (top5 == labels[:, None]).any(1).sum()
        if dist.is_initialized():
            dist.all_reduce(totals)
        model.train(was_training)
        n = max(totals[2].item(), 1.0)
        return {"loss": totals[0].item() / n, "top1": totals[1].item() / n,
                "top5": totals[3].item() / n, "count": int(n)}  # fmt: skip


def open_sample_log(run_dir: str, rank: int):
    """`<run.dir>/samples/rank<r>.jsonl`, appended to: every step's sample ids on this rank
    (train.sample_log), the exactly-once audit trail."""
    fs, root = fsspec.core.url_to_fs(f"{run_dir.rstrip('/')}/samples")
    fs.makedirs(root, exist_ok=True)
    return fs.open(f"{root}/rank{rank}.jsonl", "a")
