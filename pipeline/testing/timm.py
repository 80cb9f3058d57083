"""timm for tests and benchmarks, never for the library: `make timm` installs it without its
dependencies under runs/ (TIMM_DIR). timm imports torchvision at import time for its data
pipeline, and torchvision cannot load with the CPU torch on these machines; NFNet code needs none
of it, so inert stand-in modules are registered for ``torchvision.*`` before importing timm.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
import types
from pathlib import Path

# Where `make timm` puts it (the Makefile's TIMM_DIR), relative to the checkout.
TIMM_DIR = Path(
    os.environ.get("TIMM_DIR", Path(__file__).resolve().parents[2] / "runs/bench/timm-pkg")
)


class _Inert(type):
    def __getattr__(cls, name: str) -> str:
        if name.startswith("__"):
            raise AttributeError(name)
        return f"{cls.__name__}.{name}"


class _InertModule(types.ModuleType):
    __path__: tuple[str, ...] = ()  # a package, so submodule imports resolve through us

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Inert(name, (), {"__init__": lambda self, *a, **k: None})


class _TorchvisionStandIn(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path, target=None):
        if name == "torchvision" or name.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        return _InertModule(spec.name)

    def exec_module(self, module) -> None:
        pass


def import_timm(folder: Path | None = None):
    """timm from `folder` (default TIMM_DIR) or wherever Python finds it."""
    folder = Path(folder or TIMM_DIR)
    if (folder / "timm").is_dir() and str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    try:
        import torchvision  # noqa: F401
    except Exception:
        sys.meta_path.insert(0, _TorchvisionStandIn())
    import timm

    return timm
