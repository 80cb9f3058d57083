"""Launch a pretraining run on Ray Train: preflight checks, then TorchTrainer(N workers).

Everything that can be wrong with the input (config, data paths, manifests, class counts, the
run directory) is checked here, in the driver, before Ray is started or any worker is placed.
Checkpoints go to `<run.dir>/checkpoints/step_<N>/` (registered by the workers themselves:
`pipeline.train.worker.registry`); re-running with the same run.dir resumes from the latest
complete one, as Ray's restarts of the worker group do.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import fsspec
import yaml
from pydantic import ValidationError

from pipeline import workdir
from pipeline.config import RunStopped, UserError
from pipeline.data.manifest import manifest_path, read_manifest
from pipeline.data.plan import cache_bytes
from pipeline.storage import STORAGE_ENV, is_local
from pipeline.train.config import PretrainConfig, resolved_partitions
from pipeline.train.driver import stopped
from pipeline.train.driver.identity import check_same_run, recipe_changes, record_run_config
from pipeline.train.estimates import memory
from pipeline.train.summary import RunSummary
from pipeline.train.tracking import default_tracking_uri
from pipeline.train.worker import callbacks, preemption
from pipeline.train.worker.warmstart import check_source

log = logging.getLogger(__name__)

# Passed through to the workers (storage emulators, credentials files, MLflow), never logged.
PASS_ENV = (*STORAGE_ENV, "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
            "GOOGLE_APPLICATION_CREDENTIALS", "MLFLOW_TRACKING_URI")  # fmt: skip


def absolute(url: str) -> str:
    """Local paths become absolute (workers may run elsewhere); URLs stay as they are."""
    return url if "://" in url else str(Path(url).expanduser().resolve())


def preflight(cfg: PretrainConfig) -> PretrainConfig:
    """Resolved paths, checked data; raises UserError with one line on bad input."""
    for key, path in (("data.train", cfg.data.train), ("data.val", cfg.data.val),
                      ("init.from_run", cfg.init.from_run)):  # fmt: skip
        workdir.check_input(key, path)
    workdir.check_output("run.dir", cfg.run.dir)
    data = cfg.data.model_copy(update={"train": absolute(cfg.data.train)})
    if data.val:
        data.val = absolute(data.val)
    cfg = cfg.model_copy(update={"data": data, "run": cfg.run.model_copy(
        update={"dir": absolute(cfg.run.dir)})})  # fmt: skip
    opts = cfg.data.storage_options
    try:
        train = read_manifest(manifest_path(data.train, data.train_prefix), opts)
        val = read_manifest(manifest_path(data.val, data.val_prefix), opts) if data.val else None
    except FileNotFoundError as e:
        raise UserError(f"data: {e}") from None
    classes = cfg.model.num_classes or len(train.classes)
    if len(train.classes) > classes:
        raise UserError(
            f"model.num_classes={classes} but {data.train} has {len(train.classes)} classes;"
            " expected at least as many outputs as classes"
        )
    if val is not None and val.classes != train.classes:
        raise UserError(f"data.val {data.val} has a different class map than data.train")
    _check_cache(cfg, train)
    _check_callbacks(cfg)
    local = not (cfg.cluster.address or os.environ.get("RAY_ADDRESS"))
    if local and not cfg.cluster.use_gpu:  # every worker on this machine, states in its memory
        try:
            memory.check_run(cfg, classes, cfg.cluster.workers, cfg.cluster.workers, "this machine")
        except MemoryError as e:
            raise UserError(str(e)) from None
    if cfg.init.from_run:
        init = cfg.init.model_copy(update={"from_run": absolute(cfg.init.from_run)})
        check_source(init, cfg.model.name, classes, cfg.model.padding)
        cfg = cfg.model_copy(update={"init": init})
    if not cfg.tracking.uri:
        try:  # a remote run.dir needs a tracking server: say so now, not from every worker
            default_tracking_uri(cfg.run.dir)
        except ValueError as e:
            raise UserError(str(e)) from None
    fs, root = fsspec.core.url_to_fs(cfg.run.dir)
    try:
        fs.makedirs(root, exist_ok=True)
    except OSError as e:
        raise UserError(f"run.dir={cfg.run.dir!r} cannot be created: {e.strerror or e}") from None
    if is_local(fs) and not os.access(root, os.W_OK):
        raise UserError(f"run.dir={cfg.run.dir!r} is not writable")
    check_same_run(cfg)
    return cfg


def _check_callbacks(cfg: PretrainConfig) -> None:
    """Each train.callbacks entry imports and builds here (the workers run the same code; a
    callback's constructor only takes its settings, its hooks do the work)."""
    for i, spec in enumerate(cfg.train.callbacks):
        try:
            target = callbacks.resolve(spec.target)
        except (ImportError, AttributeError) as e:
            raise UserError(
                f"train.callbacks[{i}].target={spec.target!r} cannot be imported ({e}); expected"
                " package.module:Name of a callback installed with the pipeline"
            ) from None
        try:
            target(**spec.args)
        except (TypeError, ValueError) as e:
            raise UserError(f"train.callbacks[{i}] ({spec.target}) refuses its args: {e}") from None


def _check_cache(cfg: PretrainConfig, train) -> None:
    """The shard cache's bound fits the blocks a worker reads at once (fewest workers: most
    partitions each); a local run with remote data has the disk for every worker's cache."""
    cl, data = cfg.cluster, cfg.data
    world = cl.min_workers or cl.workers
    largest = max(s.bytes for s in train.shards)
    try:
        need = cache_bytes(data.cache_bytes, resolved_partitions(cfg), data.block_shards, world,
                           largest)  # fmt: skip
    except ValueError as e:
        raise UserError(str(e)) from None
    local = not (cl.address or os.environ.get("RAY_ADDRESS"))
    if local and "://" in data.train and not data.train.startswith("file://"):
        root = data.cache_dir or tempfile.gettempdir()
        os.makedirs(root, exist_ok=True)
        free = shutil.disk_usage(root).free
        if free < need * cl.workers:
            raise UserError(
                f"data.cache_dir {root} has {free / 2**30:.1f} GiB free; the {cl.workers} workers'"
                f" shard caches need up to {need * cl.workers / 2**30:.1f} GiB; expected a"
                " data.cache_dir with room, or a smaller data.cache_bytes"
            )


def finished_summary(cfg: PretrainConfig) -> RunSummary | None:
    """The run's summary when run.dir holds a finished run of this recipe (operational keys
    may differ): launching it again then starts nothing. Preflight refuses another recipe."""
    fs, root = fsspec.core.url_to_fs(f"{cfg.run.dir}/final")
    try:
        written = yaml.safe_load(fs.cat_file(f"{root}/config.yaml"))
        summary = RunSummary.read(cfg.run.dir)
    except (FileNotFoundError, ValidationError):  # not finished, or by an older summary format:
        return None  # the launch resumes from the last checkpoint and writes final/ again
    return None if recipe_changes(written, cfg.model_dump(mode="json")) else summary


def init_ray(cfg: PretrainConfig) -> None:
    import ray

    if ray.is_initialized():
        return
    if cfg.cluster.address or os.environ.get("RAY_ADDRESS"):  # a cluster, e.g. under `ray job`
        ray.init(address=cfg.cluster.address, log_to_driver=True)
        return
    need = cfg.cluster.workers * cfg.cluster.cpus_per_worker
    # The dashboard serves Ray's state API (Train polls it); bound to loopback only.
    ray.init(num_cpus=max(int(need + 0.999), os.cpu_count() or 1), include_dashboard=True,
             dashboard_host="127.0.0.1", log_to_driver=True)  # fmt: skip


def prepare(cfg: PretrainConfig) -> tuple[PretrainConfig, RunSummary | None]:
    """Preflight, then the run's summary if run.dir holds it finished (nothing to start), else
    the run's config recorded and the marks of an earlier attempt cleared."""
    cfg = preflight(cfg)
    done = finished_summary(cfg)
    if done is not None:
        log.info(f"{cfg.run.dir} finished before ({done.steps} steps, same config):"
                 " nothing to do")  # fmt: skip
        return cfg, done
    record_run_config(cfg)
    stopped.clear(cfg.run.dir)
    preemption.take(cfg.run.dir)  # one left by a driver that died before reading it
    return cfg, None


def torch_trainer(cfg: PretrainConfig, loop, loop_config: dict, storage: str, max_failures: int):
    """Ray Train's worker group for `cfg.cluster`: `loop(loop_config)` on every worker, Ray's
    own records under `<storage>/ray_train`."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    cl = cfg.cluster
    backend = cl.backend if cl.backend != "auto" else ("nccl" if cl.use_gpu else "gloo")
    env = {k: os.environ[k] for k in PASS_ENV if k in os.environ}
    threads = str(max(1, int(cl.cpus_per_worker)))
    # One copy of each line: Ray already forwards worker stdout, Train's print patch would add a second.
    env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, RAY_TRAIN_ENABLE_PRINT_PATCH="0")
    if not cl.use_gpu:
        env["DS_ACCELERATOR"] = "cpu"
    env.update(cl.worker_env)
    return TorchTrainer(
        train_loop_per_worker=loop,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=(cl.min_workers, cl.workers) if cl.min_workers else cl.workers,
            use_gpu=cl.use_gpu, resources_per_worker={"CPU": cl.cpus_per_worker},
            placement_strategy=cl.placement),
        torch_config=TorchConfig(backend=backend),
        run_config=RunConfig(
            name="ray_train", storage_path=storage,
            failure_config=FailureConfig(max_failures=max_failures,
                                         max_preemption_failures=cl.max_preemptions),
            worker_runtime_env={"env_vars": env},
        ),
    )  # fmt: skip


def launch(cfg: PretrainConfig) -> RunSummary:
    """Run training to completion (resuming if run.dir has checkpoints); returns the summary."""
    import ray
    from ray.train import TrainingFailedError

    from pipeline.train.worker.trainer import train_worker

    cfg, done = prepare(cfg)
    if done is not None:
        return done
    init_ray(cfg)
    cl = cfg.cluster
    while True:
        try:
            torch_trainer(cfg, train_worker, cfg.model_dump(mode="json"), cfg.run.dir,
                          cl.max_failures).fit()  # fmt: skip
            reason = stopped.reason(cfg.run.dir)  # the run stopped itself, or None
        except TrainingFailedError as e:  # Ray's restarts are used up: the cause, in one line
            reason = stopped.failure_reason(e, cfg.run.dir, cl.max_failures)
        step = None if reason else preemption.take(cfg.run.dir)
        if step is None:
            break
        # Each launch trains at least one step before it can be preempted: this ends.
        log.info(f"preempted at step {step}: starting the workers again from its checkpoint"
                 " (not counted against cluster.max_failures)")  # fmt: skip
    if reason:
        ray.shutdown()  # flushes the workers' forwarded output: the reason stays the last line
        raise RunStopped(reason)
    return RunSummary.read(cfg.run.dir)
