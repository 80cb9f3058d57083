"""The flat config layout before 2026-12 (`train.base_lr`, `run.mlflow_uri`, ...) and where its
keys went (`train.schedule.base_lr`, `tracking.uri`, ...). A config file or override with an
old key is refused with the new name; a run directory's recorded config (run_config.yaml,
final/config.yaml) is migrated when read, so runs written before still resume."""

from __future__ import annotations

import copy

# old key -> its place in the per-component sections
RENAMED = {
    "run.experiment": "tracking.experiment",
    "run.mlflow_uri": "tracking.uri",
    "run.mlflow_parent": "tracking.parent",
    "train.base_lr": "train.schedule.base_lr",
    "train.reference_batch": "train.schedule.reference_batch",
    "train.warmup_epochs": "train.schedule.warmup_epochs",
    "train.momentum": "train.optimizer.momentum",
    "train.nesterov": "train.optimizer.nesterov",
    "train.weight_decay": "train.optimizer.weight_decay",
    "train.agc_clipping": "train.optimizer.agc.clipping",
    "train.agc_eps": "train.optimizer.agc.eps",
    "train.ema_decay": "train.ema.decay",
    "train.checkpoint_every": "train.checkpoint.every",
    "train.sam_rho": "train.sam.rho",
    "train.sam_ascent_fraction": "train.sam.ascent_fraction",
}


def _parent(tree: dict, dotted: str, create: bool = False) -> tuple[dict | None, str]:
    """(the mapping that holds `dotted`'s last part, that part); None where a level is missing."""
    *parents, leaf = dotted.split(".")
    for part in parents:
        child = tree.setdefault(part, {}) if create else tree.get(part)
        if not isinstance(child, dict):
            return None, leaf
        tree = child
    return tree, leaf


def refuse(tree: dict) -> None:
    """ValueError naming the first old key in `tree` and its new name."""
    for old, new in RENAMED.items():
        node, leaf = _parent(tree, old)
        if node is not None and leaf in node:
            raise ValueError(f"{old} is now {new}; expected the new key")


def migrate(tree: dict) -> dict:
    """A recorded config tree of the old layout in today's: the same values under their new
    keys (a tree in today's layout comes back equal)."""
    tree = copy.deepcopy(tree)
    for old, new in RENAMED.items():
        node, leaf = _parent(tree, old)
        if node is not None and leaf in node:
            value = node.pop(leaf)
            target, key = _parent(tree, new, create=True)
            target[key] = value
    return tree
