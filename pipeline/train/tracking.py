"""Experiment tracking behind one small interface: MLflow on rank 0, a no-op everywhere else.

The MLflow run id is kept in the run directory (`mlflow_run_id`) and in every checkpoint, so a
restarted or re-launched run keeps logging into the same MLflow run. The default store is a
sqlite file beside the run directory (`<run.dir>/../mlflow.db`), or MLFLOW_TRACKING_URI.
Secrets never reach MLflow: config keys that look like credentials are masked in params.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import fsspec

from pipeline.storage import atomic_write, is_local

RUN_ID_FILE = "mlflow_run_id"
_SECRET = re.compile(r"(token|secret|password|credential|key_id|access_key|api_key)", re.I)


class Tracker:
    """No-op tracker: what every rank but 0 uses, and what tests may pass."""

    run_id: str | None = None

    def log_params(self, params: Mapping[str, Any]) -> None: ...
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...
    def log_text(self, text: str, name: str) -> None: ...
    def close(self, status: str = "FINISHED") -> None: ...


def default_tracking_uri(run_dir: str, key: str = "run", beside: bool = True,
                         uri_key: str = "tracking.uri") -> str:  # fmt: skip
    """The one fallback when no tracking URI is configured: MLFLOW_TRACKING_URI, else a sqlite
    file in the folder that holds `run_dir` (beside=True: a run's, so a sweep's points and its
    own run share one store) or in `run_dir` itself (a sweep's folder)."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    fs, root = fsspec.core.url_to_fs(run_dir)
    if not is_local(fs):
        raise ValueError(
            f"{key}.dir={run_dir!r} is remote: set {uri_key} or MLFLOW_TRACKING_URI to a"
            " tracking server (a sqlite file cannot live in object storage)"
        )
    folder = Path(root).resolve().parent if beside else Path(root).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}"


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = "***" if _SECRET.search(k) and v else str(v)[:500]
    return out


class MlflowTracker(Tracker):
    def __init__(
        self,
        uri: str,
        experiment: str,
        run_name: str,
        run_dir: str,
        run_id: str | None = None,
        parent_run_id: str | None = None,
        system_metrics: bool = True,
    ) -> None:
        import mlflow

        self._mlflow = mlflow
        # Queued metrics go out once a second; with this set (unset: a 1 s blocking poll) a
        # flush returns at once instead of after up to 1 s, twice per close (1.5 s a run).
        os.environ.setdefault("MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS", "1")
        mlflow.set_tracking_uri(uri)
        fs, root = fsspec.core.url_to_fs(run_dir)
        id_path = f"{root.rstrip('/')}/{RUN_ID_FILE}"
        if run_id is None and fs.exists(id_path):
            run_id = fs.cat_file(id_path).decode().strip() or None
        tags = {"mlflow.parentRunId": parent_run_id} if parent_run_id else None
        # System metrics (CPU, memory, GPU) every second, each sample logged at once (psutil).
        mlflow.set_system_metrics_sampling_interval(1)
        mlflow.set_system_metrics_samples_before_logging(1)
        if run_id is None:
            mlflow.set_experiment(experiment)
        run = mlflow.start_run(
            run_id=run_id, run_name=None if run_id else run_name, tags=tags,
            log_system_metrics=system_metrics,
        )  # fmt: skip
        self.run_id = run.info.run_id
        if run_id != self.run_id:  # a new run: remember it for the next attempt
            fs.makedirs(root, exist_ok=True)
            atomic_write(fs, id_path, self.run_id.encode())

    def log_params(self, params: Mapping[str, Any]) -> None:
        flat = flatten(params)
        existing = self._mlflow.get_run(self.run_id).data.params
        new = {k: v for k, v in flat.items() if k not in existing}  # a resumed run: same values
        if new:
            self._mlflow.log_params(new)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        # Queued, written by MLflow's logging thread: the step does not wait on the store
        # (a sqlite write here is ~8 ms, 7% of a nano step); close() flushes.
        self._mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step,
                                 synchronous=False)  # fmt: skip

    def log_text(self, text: str, name: str) -> None:
        self._mlflow.log_text(text, name)

    def close(self, status: str = "FINISHED") -> None:
        self._mlflow.flush_async_logging()
        self._mlflow.end_run(status=status)
