"""Where captured graphs execute. CPU by default; CUDA when asked and present.

``GENIE_EXECUTION_DEVICE=cuda`` (or ``genie.set_execution_device("cuda")``) selects CUDA; asking
for CUDA where there is none is an error, not a silent fallback.
"""

from __future__ import annotations

import os

import torch

_device: torch.device | None = None


def execution_device() -> torch.device:
    global _device
    if _device is None:
        _device = _validate(os.environ.get("GENIE_EXECUTION_DEVICE", "cpu"))
    return _device


def set_execution_device(device) -> None:
    """Only the setting: ``genie.set_execution_device`` (the facade) is the one owner of a switch,
    which also drops the executor and every decision made for the previous device."""
    global _device
    _device = _validate(device)


def _validate(device) -> torch.device:
    d = torch.device(device)
    if d.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("genie: execution device 'cuda' was requested but CUDA is not available")
        if d.index is None:
            d = torch.device("cuda", torch.cuda.current_device())
    elif d.type != "cpu":
        raise ValueError(f"genie: unsupported execution device {d}; use 'cpu' or 'cuda'")
    return d
