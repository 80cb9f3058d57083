"""Our NFNet-F0 against timm's (the most used public PyTorch NFNets), same run, same inputs.

timm is not a dependency: `make bench-timm` installs it without dependencies under runs/.
timm imports torchvision at import time for its data pipeline, and torchvision cannot load with
the CPU torch on these machines; NFNet code needs none of it, so we register inert stand-in
modules for ``torchvision.*`` before importing timm. Benchmark-only; never used by the library.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import statistics
import sys
import time
import types

import torch

from pipeline.models import create_model


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


def import_timm():
    try:
        import torchvision  # noqa: F401
    except Exception:
        sys.meta_path.insert(0, _TorchvisionStandIn())
    import timm

    return timm


def run(res: int = 192, batch: int = 8, repeats: int = 3) -> dict:
    timm = import_timm()
    torch.manual_seed(0)
    x = torch.randn(batch, 3, res, res)
    y = torch.randint(0, 1000, (batch,))
    models = {
        "ours_nfnet_f0": create_model("nfnet_f0"),
        "timm_dm_nfnet_f0": timm.create_model("dm_nfnet_f0"),
        "timm_nfnet_f0": timm.create_model("nfnet_f0"),
    }

    def step(model):
        model.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()

    for m in models.values():
        m.train()
        step(m)  # warm-up
    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(repeats):  # interleaved: machine noise hits all alike
        for name, m in models.items():
            start = time.perf_counter()
            step(m)
            times[name].append(time.perf_counter() - start)
    result: dict = {"timm": timm.__version__, "res": res, "batch": batch}
    for name, samples in times.items():
        result[f"{name}_step_s"] = statistics.median(samples)
        result[f"{name}_params"] = sum(p.numel() for p in models[name].parameters())
    result["speedup_vs_timm_dm"] = (
        result["timm_dm_nfnet_f0_step_s"] / result["ours_nfnet_f0_step_s"]
    )
    return result
