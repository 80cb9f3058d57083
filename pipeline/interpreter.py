"""Is this interpreter the project's? A job started by a `python` that lacks the dependencies
(a Ray head started outside the project's venv runs jobs with whatever `python` is first on
its PATH) would die on its first third-party import with a traceback that names one module.
This check runs when `pipeline` is imported, before any such import, and names the cause.

Standard library only, and it changes nothing: `importlib.util.find_spec` looks modules up
without importing them (~1 ms for the list)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

# import name -> distribution (pyproject.toml's dependencies; tests/unit/test_interpreter.py
# keeps the two lists equal)
DEPENDENCIES = {
    "torch": "torch", "deepspeed": "deepspeed", "ray": "ray", "fsspec": "fsspec",
    "gcsfs": "gcsfs", "s3fs": "s3fs", "mlflow": "mlflow", "pydantic": "pydantic",
    "yaml": "pyyaml", "numpy": "numpy", "PIL": "pillow", "scipy": "scipy",
    "matplotlib": "matplotlib", "tqdm": "tqdm", "safetensors": "safetensors",
    "braceexpand": "braceexpand", "simplejpeg": "simplejpeg", "psutil": "psutil",
    "faiss": "faiss-cpu",
}  # fmt: skip


def missing() -> list[str]:
    """Distributions of the project's dependencies that this interpreter cannot import."""
    return [dist for name, dist in DEPENDENCIES.items() if importlib.util.find_spec(name) is None]


def message(absent: list[str]) -> str:
    return (
        f"{sys.executable} lacks the project's dependencies (missing: {', '.join(absent)});"
        " expected the project's venv: `make setup`, then run jobs with .venv/bin/python, or"
        " start the Ray head from the venv (`make head`; on a cluster, infra/runtime_env.yaml)"
    )


# Set by `benchmarks.gpu_check`, which runs on a GPU machine's own image with torch and no
# cluster stack (no DeepSpeed, Ray, MLflow): it imports only the torch-level modules (models,
# optim, EMA, estimates, transforms), so the rest of the list does not apply there.
TORCH_ONLY_ENV = "NFSCALE_TORCH_ONLY"


def check() -> None:
    """A job (a script in jobs/) exits with one `error:` line; any other importer gets an
    ImportError with the same words."""
    if os.environ.get(TORCH_ONLY_ENV) == "1":
        return
    absent = missing()
    if not absent:
        return
    if Path(sys.argv[0] if sys.argv else "").resolve().parent.name == "jobs":
        print(f"error: {message(absent)}", file=sys.stderr)
        raise SystemExit(2)  # bad input, as every job's one-line errors
    raise ImportError(message(absent))
