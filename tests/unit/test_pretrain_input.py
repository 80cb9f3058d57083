"""jobs/pretrain.py and jobs/finetune.py before Ray starts: one-line errors for bad input, the
dry run at cluster scale, one memory model for the dry run and the preflight check, and a
run directory that refuses another recipe."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from pipeline.config import UserError, load_config
from pipeline.models import create_model
from pipeline.train.config import PretrainConfig
from pipeline.train.driver.identity import record_run_config
from pipeline.train.driver.launch import preflight
from tests.pretrain_runs import PY, ROOT, run_pretrain, tiny_args


@pytest.mark.parametrize(
    "override,expected",
    [
        ("train.global_batch=10", "train.global_batch=10"),
        ("model.name=nfnet_f99", "unknown model"),
        ("data.train=/nonexistent/shards", "no shard manifest"),
        ("train.nonsense=1", "unknown config key 'train.nonsense'"),
        ("train.micro_batch=3", "not a multiple of train.micro_batch=3"),
        (
            'train.callbacks=[{target: "nowhere.probes:Histogram"}]',
            "train.callbacks[0].target='nowhere.probes:Histogram' cannot be imported",
        ),
        ("train.callbacks=[{target: histogram}]", "train.callbacks.0.target"),
        (
            'train.callbacks=[{target: "pipeline.testing.faults:Faults", args: {kill: "midway:3"}}]',
            "refuses its args: kill: unknown kill point 'midway'; expected checkpoint or step",
        ),
    ],
)
def test_bad_input_is_one_line_before_ray_starts(tiny_data, tmp_path, override, expected):
    out = run_pretrain([*tiny_args(tiny_data, tmp_path / "run"), override])
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.startswith("error: ") and expected in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "Ray" not in out.stdout + out.stderr  # nothing was started


def test_a_shard_cache_too_small_for_its_blocks_is_refused_before_ray(tiny_data, tmp_path):
    cfg = load_config(PretrainConfig, "configs/pretrain/nano.yaml",
                      [*tiny_args(tiny_data, tmp_path / "run"), "data.cache_bytes=1000"])  # fmt: skip
    with pytest.raises(UserError, match=r"data.cache_bytes=1000 cannot hold one block of each of"
                                        r" the 4 partitions a worker owns"):  # fmt: skip
        preflight(cfg)
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_dry_run_of_the_paper_point_at_cluster_scale():
    out = run_pretrain(["--config", "configs/pretrain/nfnet_f7plus.yaml", "--dry-run",
                     "cluster.workers=64"])  # fmt: skip
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "nfnet_f7plus, 829.6M params" in text and "nothing was started" in text
    assert "global 4096 = 64 workers x 4 accumulation x 16 micro-batch" in text
    assert "peak LR 1.6" in text and "ZeRO-3" in text and "h/epoch" in text
    assert "data plane: 256 partitions, 4 per worker; shard cache up to 8 GiB per worker" in text
    bad = run_pretrain(["--config", "configs/pretrain/nfnet_f7plus.yaml", "--dry-run",
                     "cluster.workers=512"])  # fmt: skip
    assert bad.returncode == 2 and "not a multiple of train.micro_batch=16" in bad.stderr


def test_the_dry_run_and_the_preflight_check_use_one_memory_model(tiny_data, tmp_path):
    """The dry run's figure for the configured stage is the one the preflight check refuses
    runs with; --gpu-memory gives each stage's largest micro-batch, which fits where one more
    would not."""
    import re

    from pipeline.train.estimates.dryrun import dry_run
    from pipeline.train.estimates.memory import GIB, activation_bytes_per_image, check_run, estimate
    from pipeline.train.worker.engine import deepspeed_config

    cfg = load_config(PretrainConfig, "configs/pretrain/nano.yaml", tiny_args(tiny_data, tmp_path))
    text = dry_run(cfg, gpu_memory=2 * GIB)
    configured = next(line for line in text.splitlines() if "<- configured" in line)
    shown = float(re.search(r"([0-9.]+) GiB peak", configured).group(1))
    need = check_run(cfg, 4, cfg.cluster.workers, cfg.cluster.workers, "here")
    assert shown == pytest.approx(need / GIB, abs=0.005)
    assert "CPU worker (host memory)" in text and "largest micro-batch in 2 GiB" in text
    f7 = load_config(PretrainConfig, "configs/pretrain/nfnet_f7plus.yaml", ["cluster.workers=64"])
    with torch.device("meta"):
        model = create_model("nfnet_f7plus", num_classes=1000)
    params = sum(p.numel() for p in model.parameters())
    per_image = activation_bytes_per_image(model, 224, "bf16")
    gpu_text = dry_run(f7, gpu_memory=80 * GIB)
    for stage in range(4):
        line = next(x for x in gpu_text.splitlines() if x.strip().startswith(f"ZeRO-{stage}:"))
        most = int(re.search(r"fits (\d+)", line).group(1))
        peaks = [estimate(model, 224, deepspeed_config(m, 1, 64, stage, "bf16", True, params),
                          "bf16", gpu=True, per_image=per_image).peak for m in (most, most + 1)]  # fmt: skip
        assert peaks[0] <= 80 * GIB < peaks[1], (stage, most)
    bad = run_pretrain(["--dry-run", "--gpu-memory", "80Gx"])
    assert bad.returncode == 2 and "'80Gx' is not a memory size; expected e.g. 80GiB" in bad.stderr


def _finetune_args(data: Path, run_dir: Path, source: Path) -> list[str]:
    return ["--config", "configs/finetune/nano.yaml", f"data.train={data / 'train'}",
            f"data.val={data / 'val'}", f"run.dir={run_dir}", f"init.from_run={source}",
            "train.epochs=0.8", "train.global_batch=16", "train.micro_batch=4",
            "train.sam.ascent_fraction=0.5", "train.log_every=1", "data.resolution=64",
            "data.eval_resolution=80", "data.val_samples=16"]  # fmt: skip


@pytest.mark.parametrize(
    "override,expected",
    [
        (
            "init.from_run=/nonexistent/run",
            "/nonexistent/run/final/model_ema.safetensors not found",
        ),
        ("data.eval_resolution=64", "expected a higher evaluation resolution"),
        ("model.name=nfnet_nano1", "holds nfnet_nano0 weights but model.name=nfnet_nano1"),
        ("cluster.zero_stage=3", "sam.rho > 0 needs cluster.zero_stage 0, 1 or 2"),
    ],
)
def test_finetune_bad_input_is_one_line_before_ray_starts(tiny_data, tmp_path, override, expected):
    source = tmp_path / "weights.safetensors"
    torch.manual_seed(0)
    save_file(create_model("nfnet_nano0", num_classes=4).state_dict(), str(source),
              metadata={"model": "nfnet_nano0", "classes": "4"})  # fmt: skip
    args = [*_finetune_args(tiny_data, tmp_path / "ft", source), override]
    out = subprocess.run([PY, "jobs/finetune.py", *args], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.startswith("error: ") and expected in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "Ray" not in out.stdout + out.stderr


def test_a_run_dir_refuses_another_recipe_in_one_line(tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    cfg = load_config(PretrainConfig, "configs/pretrain/nano.yaml", tiny_args(tiny_data, run_dir))
    record_run_config(preflight(cfg))  # what the first launch records
    out = run_pretrain(
        [*tiny_args(tiny_data, run_dir), "train.schedule.base_lr=0.8", "train.log_every=5"]
    )
    assert out.returncode == 2, out.stderr[-2000:]
    assert "holds a run with another config (train.schedule.base_lr: 1.6 -> 0.8)" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Ray" not in out.stdout + out.stderr
