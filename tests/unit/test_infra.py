"""infra/: the DeepSpeed JSON files equal what the training code builds for the F7+ point, the
GCP cluster YAML passes Ray's own validation and fits the F7+ config, and the runtime_env parses
and uploads the code (pipeline/data/ included) without data/, runs/ or .venv/."""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import zipfile
from pathlib import Path

import pytest
import yaml

from pipeline.config import load_config
from pipeline.train.config import PretrainConfig, resolved_precision, solve_batch
from pipeline.train.worker.engine import deepspeed_config

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
F7PLUS = ROOT / "configs" / "pretrain" / "nfnet_f7plus.yaml"
CLUSTER = INFRA / "ray" / "cluster-gcp.yaml"
RUNTIME_ENV = INFRA / "runtime_env.yaml"


def _generator():
    spec = importlib.util.spec_from_file_location(
        "infra_deepspeed_generate", INFRA / "deepspeed" / "generate.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def generate():
    return _generator()


@pytest.fixture(scope="module")
def f7plus() -> PretrainConfig:
    return load_config(PretrainConfig, str(F7PLUS))


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load(CLUSTER.read_text())


# ---- DeepSpeed JSON ------------------------------------------------------------------------------


def test_committed_deepspeed_json_equals_the_generator(generate):
    expected = generate.configs()
    assert sorted(expected) == [f"nfnet_f7plus_zero{s}.json" for s in (1, 2, 3)]
    for name, ds_config in expected.items():
        path = INFRA / "deepspeed" / name
        assert path.exists(), f"{path} missing: run python infra/deepspeed/generate.py"
        assert path.read_text() == generate.render(ds_config), (
            f"{name} drifted from deepspeed_config(): run python infra/deepspeed/generate.py"
        )
    assert generate.main(["--check"]) == 0


def test_deepspeed_json_is_the_f7plus_batch_4096_bf16_layout(f7plus):
    cl = f7plus.cluster
    assert (f7plus.train.global_batch, cl.workers, cl.use_gpu) == (4096, 64, True)
    micro, accum = solve_batch(f7plus.train, cl.workers)
    assert (micro, accum) == (16, 4)
    assert resolved_precision(f7plus.train, cl.use_gpu) == "bf16"
    for stage in (1, 2, 3):
        on_disk = json.loads((INFRA / "deepspeed" / f"nfnet_f7plus_zero{stage}.json").read_text())
        assert on_disk == deepspeed_config(16, 4, 64, stage, "bf16", True)
        assert on_disk["train_batch_size"] == 4096 == 16 * 4 * 64
        assert on_disk["train_micro_batch_size_per_gpu"] == 16
        assert on_disk["gradient_accumulation_steps"] == 4
        assert on_disk["zero_optimization"]["stage"] == stage
        assert on_disk["bf16"] == {"enabled": True} and on_disk["fp16"] == {"enabled": False}
    assert cl.zero_stage in (1, 2, 3)  # the configured stage has its file


def test_generator_check_reports_and_fixes_drift(generate, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(generate, "OUT", tmp_path)
    assert generate.main(["--check"]) == 1  # nothing written yet
    assert not list(tmp_path.iterdir())
    assert generate.main([]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(generate.configs())
    assert generate.main(["--check"]) == 0
    stale = tmp_path / "nfnet_f7plus_zero2.json"
    stale.write_text(stale.read_text().replace('"stage": 2', '"stage": 1'))
    assert generate.main(["--check"]) == 1
    assert "nfnet_f7plus_zero2.json" in capsys.readouterr().out
    generate.main([])
    assert generate.main(["--check"]) == 0


# ---- Ray cluster YAML ----------------------------------------------------------------------------


def _gpu_types(cluster: dict) -> dict[str, dict]:
    return {
        name: node
        for name, node in cluster["available_node_types"].items()
        if node["resources"].get("GPU", 0) > 0
    }


def test_cluster_yaml_passes_rays_own_validation(cluster):
    import ray.autoscaler
    from jsonschema import validate
    from ray.autoscaler._private.util import prepare_config, validate_config

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    validate(cluster, schema)
    validate_config(prepare_config(copy.deepcopy(cluster)))  # what `ray up` runs before GCP


def test_cluster_yaml_is_gcp_with_a_cpu_head_and_gpu_workers(cluster):
    provider = cluster["provider"]
    assert provider["type"] == "gcp"
    assert provider["region"] and provider["availability_zone"].startswith(provider["region"])
    assert provider["project_id"] == "YOUR_PROJECT"  # a placeholder, never a real project
    types = cluster["available_node_types"]
    head = types[cluster["head_node_type"]]
    assert head["resources"].get("CPU") == 0 and not head["resources"].get("GPU")
    gpu = _gpu_types(cluster)
    assert len(gpu) == 1, "one GPU worker type: a run must not mix GPU kinds"
    (node,) = gpu.values()
    assert 0 <= node["min_workers"] <= node["max_workers"] <= cluster["max_workers"]
    assert "onHostMaintenance" in node["node_config"]["scheduling"]  # GPU VMs cannot migrate


def test_cluster_yaml_fits_the_f7plus_config(cluster, f7plus):
    (node,) = _gpu_types(cluster).values()
    gpus, cpus = node["resources"]["GPU"], node["resources"]["CPU"]
    cl = f7plus.cluster
    assert node["max_workers"] * gpus >= cl.workers, "the autoscaler cannot reach 64 GPUs"
    assert cpus >= gpus * cl.cpus_per_worker, "a node cannot hold one worker per GPU"


def test_cluster_yaml_starts_ray_locked_down(cluster):
    head = " ".join(cluster["head_start_ray_commands"])
    worker = " ".join(cluster["worker_start_ray_commands"])
    for commands in (head, worker):
        assert "RAY_AUTH_MODE=token" in commands
    assert "--dashboard-host=127.0.0.1" in head and "--num-cpus=0" in head
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head
    assert cluster["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"


def test_cluster_yaml_installs_the_repo_with_cuda_torch(cluster):
    setup = cluster["setup_commands"]
    assert any(re.search(r"pip install .*-e ~/nfscale", c) for c in setup)
    assert cluster["file_mounts"]["~/nfscale"] == "."
    everything = json.dumps({k: v for k, v in cluster.items() if k.endswith("commands")})
    assert "constraints-cpu" not in everything  # the CPU torch pin stays off GPU nodes
    torch_at = next(i for i, c in enumerate(setup) if re.search(r"pip install .*\btorch\b", c))
    repo_at = next(i for i, c in enumerate(setup) if "~/nfscale" in c)
    assert torch_at < repo_at, "the CUDA torch must be in place before the package resolves"


# ---- runtime_env -----------------------------------------------------------------------------------


def test_runtime_env_parses_as_ray_job_submit_reads_it():
    from ray.dashboard.modules.dashboard_sdk import parse_runtime_env_args
    from ray.runtime_env import RuntimeEnv

    env = parse_runtime_env_args(runtime_env=str(RUNTIME_ENV))
    RuntimeEnv(**env)  # Ray's own field validation
    assert env["working_dir"] == "."
    assert all(isinstance(v, str) for v in env["env_vars"].values())
    secret = re.compile(r"token|secret|password|credential|access_key|api_key", re.I)
    assert not [k for k in env["env_vars"] if secret.search(k)]


def test_runtime_env_uploads_code_but_not_data_runs_or_venv(tmp_path):
    from ray._private.runtime_env.packaging import create_package

    env = yaml.safe_load(RUNTIME_ENV.read_text())
    package = tmp_path / "working_dir.zip"
    # Without .gitignore: the excludes must hold on their own.
    create_package(str(ROOT), package, include_gitignore=False, excludes=env["excludes"])
    names = set(zipfile.ZipFile(package).namelist())
    for needed in (
        "jobs/pretrain.py",
        "configs/pretrain/nfnet_f7plus.yaml",
        "pipeline/data/loader.py",  # an unanchored "data/" exclude would drop it
        "pipeline/train/driver/launch.py",
        "infra/deepspeed/nfnet_f7plus_zero2.json",
    ):
        assert needed in names
    top = {n.split("/", 1)[0] for n in names}
    assert not top & {"data", "runs", ".venv", ".git", "mlruns"}
    assert not [n for n in names if n.endswith(".db") or "__pycache__" in n]


@pytest.mark.parametrize("stage", ["ingest", "dedup", "pretrain", "finetune", "sweep", "report"])
def test_make_submit_runs_the_stage_as_a_ray_job_with_the_runtime_env(stage):
    import subprocess

    out = subprocess.run(["make", "-n", "--no-print-directory", f"submit-{stage}",
                          "RAY_DASHBOARD=http://127.0.0.1:9999", "ARGS=a=1 'b=[2, 3]'"],
                         cwd=ROOT, capture_output=True, text=True, check=True)  # fmt: skip
    lines = out.stdout.replace("\\\n", " ").splitlines()  # after setup's, if the venv is stale
    command = next(x for x in lines if x.startswith("RAY_AUTH_MODE")).split()
    assert command[:5] == ["RAY_AUTH_MODE=token", ".venv/bin/ray", "job", "submit", "--address"]
    assert command[5:8] == ["http://127.0.0.1:9999", "--runtime-env", "infra/runtime_env.yaml"]
    assert command[8:] == ["--", "python", f"jobs/{stage}.py", "a=1", "'b=[2,", "3]'"]
    assert (ROOT / "jobs" / f"{stage}.py").exists()


def test_make_submit_refuses_an_unknown_stage():
    import subprocess

    out = subprocess.run(["make", "-n", "submit-nonsense"], cwd=ROOT, capture_output=True,
                         text=True)  # fmt: skip
    assert out.returncode != 0 and "No rule to make target 'submit-nonsense'" in out.stderr


def test_zero_buckets_are_aligned_for_odd_parameter_counts():
    """An odd number of classes makes an odd parameter count; DeepSpeed refuses buckets that
    are not a multiple of its alignment factor (2), so every run with, e.g., 3 classes failed."""
    for params in (1_000_001, 2_345_679, 99_999_999):
        zero = deepspeed_config(4, 1, 2, 2, "fp32", False, params)["zero_optimization"]
        assert zero["reduce_bucket_size"] % 32 == 0 and zero["reduce_bucket_size"] >= params
        assert zero["allgather_bucket_size"] == zero["reduce_bucket_size"]
