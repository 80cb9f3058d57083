"""AGC on the data-parallel averaged gradient while ZeRO shards it across ranks (SPEC §3).

Under ZeRO 1/2/3 each rank owns, per parameter, at most one contiguous fragment
[start, start + n) of the flattened, averaged fp32 gradient and of the fp32 master weight.
AGC units are rows of the flattened parameter (row length = numel / units), so a fragment
covers a partial head row, whole rows and a partial tail row. Each rank sums squares per unit
over its own fragments; one all-reduce of a (2 x units) float32 vector completes the norms
(F0: 67.7k units, 540 kB); each rank then scales its own fragments. No rank ever gathers a full
gradient, and ZeRO keeps its partitioning: AGC does not force stage 0. The pieces of all
fragments are planned once per layout (`_Plan`): F0 under ZeRO-2 on 2 CPU workers spends 1.7% of
its step in AGC, all-reduce included (BENCHMARKS.md).

Fragment sources (`pipeline/train/worker/fragments.py`) adapt DeepSpeed's partitions and plain
replicated gradients (stage 0 / DDP) to `Fragment`; this module only does the arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from pipeline.optim.agc import UnitLayout, clip_factors, num_units


@dataclass
class Fragment:
    index: int  # the parameter's position in the AGC parameter list
    start: int  # first element of the fragment in the flattened parameter
    grad: torch.Tensor  # 1-D, the averaged gradient's local piece; scaled in place
    weight: torch.Tensor  # 1-D, the matching fp32 master-weight piece
    commit: Callable[[torch.Tensor], None] | None = None  # writes `grad` back if it is a copy


@dataclass(frozen=True)
class ClipStats:
    clipped_units: int
    total_units: int
    grad_norm: float  # global L2 norm of the clipped parameters' averaged gradient, before AGC
    skipped: bool = False  # the engine did not apply this update (a non-finite loss or gradient)

    @property
    def fraction(self) -> float:
        return self.clipped_units / max(self.total_units, 1)


def _row_pieces(start: int, n: int, row: int) -> tuple[int, int, int, int]:
    """(first unit, head elements, whole rows, tail elements) of a fragment."""
    head = min(n, (-start) % row)
    rows = (n - head) // row
    return start // row, head, rows, n - head - rows * row


@dataclass(frozen=True)
class _Plan:
    """Where each fragment's units sit, computed once per fragment layout.

    Every fragment splits into pieces of one unit ("singles": vectors, scalars, and the partial
    head / tail rows at partition edges) and blocks of whole rows. Singles of all fragments go
    through one multi-tensor norm and one multi-tensor multiply; row blocks take one row-norm
    each and are scaled only when one of their units clipped (usually a few percent).
    """

    singles: tuple[tuple[int, int, int], ...]  # (fragment position, offset, length)
    single_units: torch.Tensor  # global unit of each single
    blocks: tuple[tuple[int, int, int, int], ...]  # (fragment position, offset, rows, row length)
    block_units: torch.Tensor  # global units of all blocks' rows, concatenated
    block_ends: torch.Tensor  # cumulative row counts: block i's units end at block_ends[i]
    block_starts: tuple[int, ...]  # where block i's units start in block_units

    @classmethod
    def of(cls, frags: Sequence[Fragment], offsets: list[int], rows: list[int]) -> _Plan:
        singles, single_units, blocks, block_units = [], [], [], []
        for pos, f in enumerate(frags):
            row, base = rows[f.index], offsets[f.index]
            first, head, full, tail = _row_pieces(f.start, f.grad.numel(), row)
            if head:
                singles.append((pos, 0, head))
                single_units.append(base + first)
                first += 1
            if full:
                blocks.append((pos, head, full, row))
                block_units.extend(range(base + first, base + first + full))
                first += full
            if tail:
                singles.append((pos, f.grad.numel() - tail, tail))
                single_units.append(base + first)
        ends = torch.tensor([b[2] for b in blocks], dtype=torch.long).cumsum(0)
        starts = tuple((ends - torch.tensor([b[2] for b in blocks], dtype=torch.long)).tolist())
        return cls(tuple(singles), torch.tensor(single_units, dtype=torch.long), tuple(blocks),
                   torch.tensor(block_units, dtype=torch.long), ends, starts)  # fmt: skip

    def sq_norms(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        """Squared norms of every single, then of every block row, in plan order (fp32)."""
        parts = []
        if self.singles:
            pieces = [tensors[p][o : o + n] for p, o, n in self.singles]
            parts.append(torch.stack(torch._foreach_norm(pieces, 2, dtype=torch.float32)))
        for p, o, k, row in self.blocks:
            body = tensors[p][o : o + k * row].view(k, row)
            parts.append(torch.linalg.vector_norm(body, dim=1, dtype=torch.float32))
        return torch.cat(parts).square() if parts else torch.zeros(0)

    @property
    def units(self) -> torch.Tensor:
        return torch.cat([self.single_units, self.block_units])

    def scale_(self, tensors: Sequence[torch.Tensor], factors: torch.Tensor) -> None:
        if self.singles:
            pieces = [tensors[p][o : o + n] for p, o, n in self.singles]
            f = factors[self.single_units.to(factors.device)]
            torch._foreach_mul_(pieces, list(f.to(pieces[0].dtype).unbind()))
        if not self.blocks:
            return
        block_f = factors[self.block_units.to(factors.device)]
        hits = (block_f < 1).long().cumsum(0)[self.block_ends.to(factors.device) - 1]
        clipped = hits.diff(prepend=hits.new_zeros(1)).nonzero().flatten().tolist()  # one sync
        for i in clipped:
            p, o, k, row = self.blocks[i]
            start = self.block_starts[i]
            scale = block_f[start : start + k].to(tensors[p].dtype).unsqueeze(1)
            tensors[p][o : o + k * row].view(k, row).mul_(scale)


class ShardedAGC:
    """Clips the averaged gradient unit-wise from per-rank fragments, with one all-reduce.

    `shapes` are the full shapes of the AGC parameters (every parameter but the classifier
    weight), in the same order on every rank; `fragments()` returns this rank's fragments of
    those parameters, indexed by that order.
    """

    def __init__(
        self,
        shapes: Sequence[torch.Size],
        fragments: Callable[[], list[Fragment]],
        clipping: float = 0.01,
        eps: float = 1e-3,
        group: dist.ProcessGroup | None = None,
        reduce: bool = True,
    ) -> None:
        self.layout = UnitLayout(tuple(map(torch.Size, shapes)), tuple(map(num_units, shapes)))
        self.rows = [
            max(1, math.prod(s) // u)
            for s, u in zip(self.layout.shapes, self.layout.units, strict=True)
        ]
        offsets = torch.tensor((0, *self.layout.units)).cumsum(0)
        self.offsets = offsets.tolist()
        self.fragments = fragments
        self.clipping, self.eps, self.group = clipping, eps, group
        self.reduce = reduce  # False when every rank holds the whole averaged gradient
        self._plan_key: tuple | None = None
        self._plan_cache: _Plan | None = None

    @torch.no_grad()
    def __call__(self) -> ClipStats:
        frags = self.fragments()
        norms = self.local_norms(frags)
        if self.reduce and dist.is_available() and dist.is_initialized():
            dist.all_reduce(norms, group=self.group)
        return self.apply(frags, norms)

    def _plan(self, frags: Sequence[Fragment]) -> _Plan:
        key = tuple((f.index, f.start, f.grad.numel()) for f in frags)
        if key != self._plan_key:  # the partition layout is fixed for a run: built once
            self._plan_key, self._plan_cache = key, _Plan.of(frags, self.offsets, self.rows)
        return self._plan_cache

    def local_norms(self, frags: Sequence[Fragment]) -> torch.Tensor:
        """(2, units): this rank's partial squared norms of [gradient, weight] per unit."""
        device = frags[0].grad.device if frags else torch.device("cpu")
        norms = torch.zeros(2, self.layout.total, device=device)
        if frags:
            plan = self._plan(frags)
            units = plan.units.to(device)
            norms[0].index_add_(0, units, plan.sq_norms([f.grad for f in frags]))
            norms[1].index_add_(0, units, plan.sq_norms([f.weight for f in frags]))
        return norms

    def apply(self, frags: Sequence[Fragment], norms: torch.Tensor) -> ClipStats:
        """Scale this rank's fragments given the complete (all-reduced) norms."""
        factors = clip_factors(norms[1], norms[0], self.clipping, self.eps)
        if frags:
            self._plan(frags).scale_([f.grad for f in frags], factors)
        for f in frags:
            if f.commit is not None:
                f.commit(f.grad)
        grad_norm = float(norms[0].sum().sqrt())
        return ClipStats(int((factors < 1).sum()), self.layout.total, grad_norm)
