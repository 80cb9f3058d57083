"""One worker's view of the data: its micro-batches from the global order, read through its own
shard cache, and its share of the held-out split; both from shards + manifests written by
ingest or indexed in place (any fsspec URL)."""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field

import fsspec
import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from pipeline.data.cache import CachedShards, CacheStats, ShardCache
from pipeline.data.loader import BatchPlan, CacheSettings, rank_stream
from pipeline.data.order import GlobalOrder
from pipeline.data.plan import Use, block_shards_per_rank, cache_bytes
from pipeline.data.shards import CorruptSample, ShardStore
from pipeline.data.transforms import EvalTransform, TrainTransform, normalize
from pipeline.train.config import DataSection
from pipeline.train.worker.topology import gather


def cache_dir(cfg: DataSection, url: str, split: str, rank: int) -> str:
    """This process's cache folder: one per (data, split, rank, process), so attempts and runs
    never share files; folders of processes that died are removed here."""
    root = cfg.cache_dir or os.path.join(tempfile.gettempdir(), "nfscale-cache")
    base = os.path.join(root, hashlib.sha1(url.encode()).hexdigest()[:12])
    os.makedirs(base, exist_ok=True)
    for name in os.listdir(base):
        owner = name.rsplit("-", 1)[-1]
        if name.startswith(f"{split}-") and owner.isdigit() and not _alive(int(owner)):
            shutil.rmtree(os.path.join(base, name), ignore_errors=True)
    return os.path.join(base, f"{split}-rank{rank}-{os.getpid()}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cache_capacity(cfg: DataSection, order: GlobalOrder, store: ShardStore, world: int) -> int:
    return cache_bytes(cfg.cache_bytes, order.partitions, order.block_shards, world,
                       int(store.table.bytes.max()))  # fmt: skip


@dataclass
class TrainData:
    store: ShardStore
    order: GlobalOrder
    transform: TrainTransform
    cfg: DataSection
    stats: CacheStats = field(default_factory=CacheStats)

    @classmethod
    def open(cls, cfg: DataSection, seed: int, partitions: int) -> TrainData:
        store = ShardStore(cfg.train, cfg.train_prefix, cfg.storage_options)
        order = GlobalOrder(store.table.sizes.tolist(), seed, partitions, cfg.block_shards)
        transform = TrainTransform(cfg.resolution, scale=(cfg.min_crop_scale, 1.0))
        return cls(store, order, transform, cfg)

    @property
    def num_samples(self) -> int:
        return self.store.num_samples

    def io_summary(self) -> dict:
        """This attempt's shard downloads, summed over ranks (a collective)."""
        every = gather(self.stats.as_dict())
        return {"downloads": sum(s["downloads"] for s in every),
                "bytes_fetched": sum(s["bytes_fetched"] for s in every),
                "bad_shards": sorted({b for s in every for b in s["bad_shards"]}),
                "peak_cache_bytes": max(s["peak_bytes"] for s in every)}  # fmt: skip

    def micro_batches(
        self, plan: BatchPlan, position: int, steps: int, workers: int, log=print
    ) -> Iterator[dict]:
        """This rank's micro-batches for `steps` optimizer steps from stream `position`; close
        the iterator when done (`rank_stream`)."""
        world = plan.world_size
        prefetch = self.cfg.prefetch_shards
        settings = CacheSettings(
            cache_dir(self.cfg, self.cfg.train, "train", plan.rank),
            cache_capacity(self.cfg, self.order, self.store, world),
            block_shards_per_rank(self.order, world) if prefetch is None else prefetch,
        )
        return rank_stream(self.store, self.order, self.transform, plan, position, steps,
                           workers, settings, log, on_start=self._started)  # fmt: skip

    def _started(self, cache: ShardCache) -> None:
        self.stats = cache.stats


class HeldOut:
    """The validation split in a fixed order; rank r evaluates a contiguous share of it (rank 0
    the largest), so each validation shard is downloaded by one rank."""

    def __init__(self, cfg: DataSection) -> None:
        self.cfg = cfg
        self.store = ShardStore(cfg.val, cfg.val_prefix, cfg.storage_options)
        self.transform = EvalTransform(cfg.eval_resolution or cfg.resolution)
        total = self.store.num_samples
        self.count = min(total, cfg.val_samples) if cfg.val_samples else total
        self._offsets = np.concatenate([[0], np.cumsum(self.store.table.sizes)])

    def _share(self, rank: int, world: int) -> tuple[int, int]:
        per, extra = divmod(self.count, world)
        lo = rank * per + min(rank, extra)
        return lo, lo + per + (rank < extra)

    def _batches(self, rank: int, world: int, batch: int) -> Iterator[tuple]:
        """The same number of batches on every rank (ZeRO-3 forwards are collectives); a rank
        out of samples gets an empty batch, which the caller runs as a weightless dummy."""
        lo, hi = self._share(rank, world)
        rounds = math.ceil(math.ceil(self.count / world) / batch)  # rank 0's share: largest
        ids = np.arange(lo, hi)
        largest = int(self.store.table.bytes.max())
        directory = cache_dir(self.cfg, self.cfg.val, "val", rank)
        cache = ShardCache(self.store, directory, self._uses(ids, batch),
                           self.cfg.cache_bytes or 4 * largest, 2, print).start()  # fmt: skip
        reader = CachedShards(self.store, directory)
        res = self.transform.res
        try:
            for r in range(rounds):
                mine = ids[r * batch : (r + 1) * batch]
                loaded = [self._image(reader, s, i) for s, i in self._refs(mine)]
                cache.consumed(r)
                loaded = [x for x in loaded if x is not None]
                if not loaded:
                    yield torch.zeros(1, 3, res, res, dtype=torch.uint8), torch.full((1,), -1)
                    continue
                yield torch.stack([x[0] for x in loaded]), torch.tensor([x[1] for x in loaded])
        finally:
            cache.close()

    def _uses(self, ids: np.ndarray, batch: int) -> list[Use]:
        """Each shard of this share, from the first round that reads it to the last."""
        if not len(ids):
            return []
        shards = np.searchsorted(self._offsets, ids, side="right") - 1
        starts = np.flatnonzero(np.r_[True, shards[1:] != shards[:-1]])
        ends = np.r_[starts[1:], len(ids)] - 1
        return [Use(int(a) // batch, int(b) // batch, int(shards[a]))
                for a, b in zip(starts, ends, strict=True)]  # fmt: skip

    def _refs(self, ids: np.ndarray) -> list[tuple[int, int]]:
        shards = np.searchsorted(self._offsets, ids, side="right") - 1
        return list(zip(shards.tolist(), (ids - self._offsets[shards]).tolist(), strict=True))

    def _image(
        self, reader: CachedShards, shard: int, index: int
    ) -> tuple[torch.Tensor, int] | None:
        got = reader.read(shard, [index])[0]
        if isinstance(got, CorruptSample):
            return None  # ingest and dedup report corrupt data; evaluation just skips it
        try:
            return self.transform(got[0]), got[1]
        except ValueError:
            return None

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
