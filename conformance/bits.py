"""Bit identity of lazy values against eager's: the report's column for models and programs.

Most checks pass within 1e-5 and are in fact bit-identical; where they are not, the first tensor
(in the order a check compares them: outputs, loss, gradients, parameters) whose bits differ
names where to look, and the largest difference tells how far apart they are.
"""

from __future__ import annotations

import torch


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal bit for bit (NaN payloads and signed zeros included)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype.is_floating_point or a.is_complex():
        return torch.equal(a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))
    return torch.equal(a, b)


class BitRecord:
    """The bit identity of the tensors one check compared."""

    def __init__(self):
        self.compared = 0
        self.first_difference: str | None = None
        self.max_abs_diff = 0.0

    def add(self, name: str, got: torch.Tensor, expected: torch.Tensor) -> None:
        self.compared += 1
        if same_bits(got, expected):
            return
        if self.first_difference is None:
            self.first_difference = name
        if got.dtype != torch.bool and got.numel():
            g, e = got.double(), expected.double()
            finite = torch.isfinite(g) & torch.isfinite(e)
            if finite.any():
                self.max_abs_diff = max(self.max_abs_diff, (g[finite] - e[finite]).abs().max().item())

    def detail(self) -> dict:
        return {"bit_identical": self.compared > 0 and self.first_difference is None,
                "first_difference": self.first_difference, "max_abs_diff": self.max_abs_diff}
