"""Exponential moving average of the weights (SPEC §4), in fp32, where the weights are, and
partitioned across the data-parallel ranks.

The decay warms up as min(decay, (1 + step) / (10 + step)), so short runs (a 0.25-epoch sweep
point is a few hundred steps) get an average of trained weights, not of the initialisation.

Each rank averages its own slice of every parameter: the slice ZeRO-3 gives it (`p.ds_tensor`),
and under ZeRO 0-2 (every rank holds the whole updated model) the same contiguous range of the
flattened parameter. One flat fp32 buffer per rank holds the slices, updated with one foreach
lerp on the device: no per-step gather, no copy to the host, 1/world of the model per rank.
The full average is gathered only for checkpoints, evaluation and export (`gathered`), and a
checkpoint holds it whole, so it resumes on any world size.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class Ema:
    def __init__(self, engine, decay: float) -> None:
        self.decay = decay
        self.rank, self.world = _rank_world()
        self.zero3 = engine.zero_optimization_stage() == 3
        named = list(engine.module.named_parameters())
        self.names = [n for n, _ in named]
        self.shapes = {n: _full_shape(p) for n, p in named}
        # Slice length per parameter (ceil(numel / world), ZeRO-3's partition size), and this
        # rank's real elements in it (the last ranks' slices end in padding, or are empty).
        self.slice = {n: -(-self.shapes[n].numel() // self.world) for n in self.names}
        self.start = {n: self.rank * self.slice[n] for n in self.names}  # in the whole parameter
        if self.zero3:
            for n, p in named:
                if p.ds_tensor.numel() != self.slice[n]:
                    raise RuntimeError(f"{n}: ZeRO-3 partition of {p.ds_tensor.numel()} elements,"
                                       f" expected {self.slice[n]}")  # fmt: skip
        self.flat = torch.zeros(sum(self.slice.values()), dtype=torch.float32,
                                device=_device(named))  # fmt: skip
        self.views, offset = [], 0
        for n in self.names:
            mine = max(0, min(self.slice[n], self.shapes[n].numel() - self.start[n]))
            self.views.append(self.flat.narrow(0, offset, mine))
            offset += self.slice[n]
        with torch.no_grad():
            torch._foreach_copy_(self.views, [s.float() for s in self._sources(engine)])

    def _sources(self, engine) -> list[torch.Tensor]:
        """This rank's slice of each live parameter, as a view (read every step: cheap)."""
        out = []
        for (name, p), view in zip(engine.module.named_parameters(), self.views, strict=True):
            if self.zero3:
                out.append(p.ds_tensor.detach().narrow(0, 0, view.numel()))
            else:
                out.append(p.detach().reshape(-1).narrow(0, self.start[name], view.numel()))
        return out

    def rate(self, step: int) -> float:
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, engine, step: int) -> None:
        sources = [s if s.dtype == torch.float32 else s.float() for s in self._sources(engine)]
        torch._foreach_lerp_(self.views, sources, 1.0 - self.rate(step))

    def gathered(self, dst: int | None = None) -> dict[str, torch.Tensor] | None:
        """The full averaged parameters (fp32, on the CPU): on every rank, or on rank `dst`
        only (None elsewhere). A collective: every rank calls it."""
        if self.world == 1:
            parts = [self.flat]
        elif dst is None:
            parts = [torch.empty_like(self.flat) for _ in range(self.world)]
            dist.all_gather(parts, self.flat)
        else:
            parts = (
                [torch.empty_like(self.flat) for _ in range(self.world)]
                if self.rank == dst
                else None
            )
            dist.gather(self.flat, parts, dst=dst)
            if parts is None:
                return None
        stacked = torch.stack(parts).cpu()  # [world, flat]
        out, offset = {}, 0
        for n in self.names:
            size, shape = self.slice[n], self.shapes[n]
            whole = stacked[:, offset : offset + size].reshape(-1)[: shape.numel()]
            out[n] = whole.reshape(shape).clone()
            offset += size
        return out

    # A checkpointed component (checkpoint.Stateful): whole, gathered on rank 0.
    per_rank = False
    required = False

    def state_dict(self) -> dict[str, torch.Tensor] | None:
        return self.gathered(dst=0)

    def load_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        self.load(tensors)

    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        missing = set(self.names) - set(tensors)
        if missing:
            raise ValueError(f"EMA checkpoint lacks {len(missing)} tensors, e.g. {min(missing)}")
        with torch.no_grad():
            for n, view in zip(self.names, self.views, strict=True):
                mine = tensors[n].reshape(-1).narrow(0, self.start[n], view.numel())
                view.copy_(mine.to(view.device, torch.float32))


def _full_shape(p: torch.Tensor) -> torch.Size:
    return p.ds_shape if hasattr(p, "ds_shape") else p.shape


def _device(named) -> torch.device:
    p = named[0][1]
    return p.ds_tensor.device if hasattr(p, "ds_tensor") else p.device
