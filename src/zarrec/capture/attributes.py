"""The run attributes every adapter writes, and the versions of the libraries that shape a
recording, stored with every run."""

from __future__ import annotations

import platform
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import torch

_PACKAGES = ("zarrec", "torch", "transformers", "accelerate", "zarr", "numcodecs", "numpy", "xarray")


def common_attributes(
    framework: str,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    steps: int,
    gradient_accumulation_steps: int,
    max_grad_norm: float | None,
    autocast_dtype: str | None,
    world_size: int,
) -> dict[str, Any]:
    """The run attributes every adapter writes, under one set of names (a framework adds its own
    settings beside them): ``autocast_dtype`` is mixed precision's forward dtype (None: none),
    the parameters' own dtype is ``dtype``; each recorded parameter's optimizer hyperparameters
    are in its arrays' ``optimizer_hyperparameters``."""
    return {
        "framework": framework,
        "optimizer_class": type(getattr(optimizer, "optimizer", optimizer)).__name__,
        "steps": steps,
        "gradient_accumulation_steps": gradient_accumulation_steps,
        "max_grad_norm": max_grad_norm,
        "autocast_dtype": autocast_dtype,
        "world_size": world_size,
        "device": str(next(model.parameters()).device),
        "versions": library_versions(),
    }


def optimizer_attributes(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's class and its param groups' hyperparameters (``{"0": {"lr": ..., ...}}``;
    ``lr`` is a group's base rate, ``initial_lr`` where a scheduler keeps one), compared when a
    run is resumed: a resume with another learning rate, betas or weight decay is refused."""
    optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper
    groups = {
        str(number): {"lr": group.get("initial_lr", group.get("lr")), **group_hyperparameters(group)}
        for number, group in enumerate(optimizer.param_groups)
    }
    return {"optimizer_class": type(optimizer).__name__, "optimizer_param_groups": groups}


def group_hyperparameters(group: dict[str, Any]) -> dict[str, Any]:
    """A param group's hyperparameters as JSON values (numbers, flags, strings, lists of
    numbers), its learning rates left to the caller (they change as training goes)."""
    kept = {}
    for key, value in group.items():
        if isinstance(value, tuple) and all(isinstance(v, (int, float)) for v in value):
            value = list(value)
        if key not in ("params", "lr", "initial_lr") and isinstance(value, (bool, int, float, str, list)):
            kept[key] = value
    return kept


def library_versions() -> dict[str, str]:
    """``{package: version}`` for Python and the packages zarrec's results depend on."""
    return {"python": platform.python_version(), **{package: _version(package) for package in _PACKAGES}}


def _version(package: str) -> str:
    # A module's own __version__ is instant; the installed metadata takes a scan of
    # site-packages (about 0.1 s a package), a cost paid when training starts.
    module = sys.modules.get(package)
    if module is not None and hasattr(module, "__version__"):
        return str(module.__version__)
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"
