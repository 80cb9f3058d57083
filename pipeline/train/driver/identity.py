"""One run directory holds one run. Launching it again with another recipe would resume its
checkpoints under the new one, or report a finished run that trained something else; so the
driver records the config at the first launch (`<run.dir>/run_config.yaml`) and refuses a
different one in one line. Operational keys (logging, evaluation and checkpoint cadence, where
MLflow lives, the Ray address, retries) may change between launches, and so may the number of
workers and their placement: the sample order, the global batch and the dropout draws do not
depend on them, and checkpoints are re-partitioned for the new count (`reshard`). The ZeRO
stage may not change."""

from __future__ import annotations

import fsspec
import yaml

from pipeline.config import UserError, dump_config
from pipeline.storage import atomic_write

RUN_CONFIG = "run_config.yaml"
OPERATIONAL = ("tracking.", "train.log_every",
               "train.eval_every", "train.checkpoint.", "train.sample_log",
               "train.max_nonfinite_steps", "train.activation_checkpointing", "train.callbacks",
               "data.loader_workers", "data.storage_options", "data.expected_samples",
               "data.cache_dir", "data.cache_bytes", "data.prefetch_shards",
               "cluster.address", "cluster.max_failures", "cluster.max_preemptions",
               "cluster.cpus_per_worker",
               "cluster.workers", "cluster.min_workers", "cluster.placement",
               "cluster.worker_env")  # fmt: skip


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def as_today(saved: dict) -> dict:
    """A recorded config in today's layout: renamed keys moved (`migrate`), and keys added since
    it was written at their defaults (what the code that wrote it did)."""
    from pipeline.train.config import PretrainConfig
    from pipeline.train.renamed import migrate

    tree = migrate(saved)
    try:
        return PretrainConfig.model_validate(tree).model_dump(mode="json")
    except ValueError:  # a key removed since: compared as written, so it shows as a change
        return tree


def recipe_changes(before: dict, now: dict) -> list[str]:
    """'key: old -> new' for every non-operational key that differs (`before` as recorded)."""
    a, b = _flat(as_today(before)), _flat(now)
    keys = sorted(k for k in a.keys() | b.keys() if not k.startswith(OPERATIONAL))
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys if a.get(k) != b.get(k)]


def check_same_run(cfg) -> None:
    fs, root = fsspec.core.url_to_fs(f"{cfg.run.dir.rstrip('/')}/{RUN_CONFIG}")
    if not fs.exists(root):
        return
    changes = recipe_changes(yaml.safe_load(fs.cat_file(root)), cfg.model_dump(mode="json"))
    if changes:
        more = f" and {len(changes) - 2} more" if len(changes) > 2 else ""
        raise UserError(
            f"run.dir={cfg.run.dir} holds a run with another config ({'; '.join(changes[:2])}"
            f"{more}); expected the same recipe to resume it, or a new run.dir"
        )


def record_run_config(cfg) -> None:
    fs, root = fsspec.core.url_to_fs(f"{cfg.run.dir.rstrip('/')}/{RUN_CONFIG}")
    if not fs.exists(root):
        atomic_write(fs, root, dump_config(cfg).encode())
