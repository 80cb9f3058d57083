"""The end of a finished run, on every rank: held-out loss of the live and the EMA weights,
the consolidated safetensors (streamed, one parameter at a time), config and `RunSummary` in
`<run.dir>/final/`, and the same to MLflow."""

from __future__ import annotations

from typing import TYPE_CHECKING

import fsspec
import torch

from pipeline.config import dump_config
from pipeline.storage import atomic_write
from pipeline.train.estimates import memory
from pipeline.train.summary import RunSummary
from pipeline.train.worker.export import save_safetensors, write_weights
from pipeline.train.worker.warmstart import source_path

if TYPE_CHECKING:
    from pipeline.train.worker.trainer import Trainer


def finish_run(trainer: Trainer) -> RunSummary:
    cfg, rank, state = trainer.cfg, trainer.rank, trainer.state
    evaluation = trainer.evaluate()
    fs, root = fsspec.core.url_to_fs(f"{cfg.run.dir.rstrip('/')}/final")
    if rank == 0:
        fs.makedirs(root, exist_ok=True)
    meta = {"model": cfg.model.name, "classes": str(trainer.classes), "step": str(state.step),
            "padding": cfg.model.padding or "symmetric"}  # fmt: skip
    # A collective (every rank); rank 0 streams the weights to the file, one parameter at a time.
    buffers = write_weights(trainer.engine.engine, fs, f"{root}/model.safetensors", meta,
                            write=rank == 0)  # fmt: skip
    ema_eval = {}
    if trainer.ema is not None:
        plain = trainer.new_model()
        averaged = {**trainer.ema.gathered(), **buffers}  # a collective: every rank evaluates
        plain.load_state_dict(averaged)
        ema_eval = trainer.evaluate(plain.to(trainer.device), torch.float32)
    images = state.step * cfg.train.global_batch
    summary = RunSummary(**{
        "model": cfg.model.name, "params": trainer.params, "classes": trainer.classes,
        "steps": trainer.steps, "global_batch": cfg.train.global_batch, "images_seen": images,
        "epochs": images / state.cursor.num_samples, "flops_per_image": trainer.flops_per_image,
        "train_flops": trainer.flops_per_image * images, "train_seconds": state.elapsed_s,
        "device_hours": state.elapsed_s * trainer.world / 3600,
        "final_train_loss": trainer.mean(torch.stack(trainer.losses).mean()) if trainer.losses else None,
        "heldout_loss": evaluation.get("loss"), "heldout_top1": evaluation.get("top1"),
        "heldout_top5": evaluation.get("top5"), "heldout_loss_ema": ema_eval.get("loss"),
        "heldout_top1_ema": ema_eval.get("top1"), "heldout_top5_ema": ema_eval.get("top5"),
        "resolution": cfg.data.resolution,
        "eval_resolution": cfg.data.eval_resolution or cfg.data.resolution,
        "init_from": source_path(cfg.init) if cfg.init.from_run else None,
        "heldout_history": state.history, "skipped_samples": state.skipped_samples,
        "skipped_steps": state.skipped_steps,
        "peak_rss_gib": memory.gathered_peaks(), "step_seconds": state.elapsed_s / trainer.steps,
        "memory_estimate_gib": trainer.memory_need / memory.GIB if trainer.memory_need else None,
        "workers": trainer.world, "placement": trainer.ctx.placement,
        "zero_stage": cfg.cluster.zero_stage, "data_io": trainer.data.io_summary(),
        "run_dir": cfg.run.dir,
        "mlflow_run_id": state.mlflow_run_id, "deepspeed": trainer.ds_config,
    })  # fmt: skip
    if rank == 0:
        if trainer.ema is not None:
            save_safetensors(fs, f"{root}/model_ema.safetensors", averaged, meta)
        atomic_write(fs, f"{root}/config.yaml", dump_config(cfg).encode())
        summary.write(cfg.run.dir)
        trainer.say(f"done: held-out loss {summary.heldout_loss}, {images} images,"
                 f" {summary.train_flops:.3g} FLOPs -> {cfg.run.dir}/final")  # fmt: skip
    tracker = trainer.tracker
    tracker.log_metrics({k: v for k, v in summary.model_dump().items()
                         if k.startswith("heldout_") and isinstance(v, float)}, state.step)  # fmt: skip
    tracker.log_metrics({"train_flops": summary.train_flops,
                         "device_hours": summary.device_hours}, state.step)  # fmt: skip
    tracker.log_text(summary.to_json(), "summary.json")
    tracker.log_text(dump_config(cfg), "config.yaml")
    tracker.close()
    return summary
