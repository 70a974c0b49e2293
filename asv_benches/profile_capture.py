"""Where a captured op's time goes: ``python -m asv_benches.profile_capture``.

Each row is a median of interleaved rounds in one process: the eager op; the floor of the
dispatcher route (a bare ``__torch_dispatch__`` that only returns a new wrapper); the wrapper
alone; and genie's capture through the dispatcher and through the operator fast path.
"""

from __future__ import annotations

import torch

import genie  # noqa: F401
from genie.capture import dispatch

from .common import interleaved_ratio, median_us


class _Bare(torch.Tensor):
    __torch_function__ = torch._C._disabled_torch_function_impl

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        return torch.Tensor._make_wrapper_subclass(cls, (8, 8), (8, 1), 0, None, torch.float32, torch.strided,
                                                    dispatch.DEVICE, False, False, None, False, False, None, 256)


def main() -> None:
    bare = torch.Tensor._make_wrapper_subclass(_Bare, (8, 8), (8, 1), 0, None, torch.float32, torch.strided,
                                               dispatch.DEVICE, False, False, None, False, False, None, 256)
    ye, we = torch.randn(8, 8), torch.randn(8, 8)
    yl, wl = ye.to("remote_accelerator"), we.to("remote_accelerator")
    rows = [
        ("eager y + 1", median_us(lambda: ye + 1)),
        ("eager relu(y)", median_us(lambda: torch.relu(ye))),
        ("eager y @ w", median_us(lambda: ye @ we)),
        ("dispatcher floor: bare handler, relu", median_us(lambda: torch.relu(bare))),
        ("wrapper alone (_make_wrapper_subclass)", median_us(lambda: torch.Tensor._make_wrapper_subclass(
            _Bare, (8, 8), (8, 1), 0, None, torch.float32, torch.strided, dispatch.DEVICE, False, False, None,
            False, False, None, 256))),
        ("genie relu(y) (dispatcher route)", median_us(lambda: torch.relu(yl))),
        ("genie y + 1 (operator fast path)", median_us(lambda: yl + 1)),
        ("genie y @ w (operator fast path)", median_us(lambda: yl @ wl)),
        ("genie y.t() (view, dispatcher route)", median_us(lambda: yl.t())),
    ]
    for name, us in rows:
        print(f"{name:45s} {us:7.2f} us")
    for name, e, la in (("y + 1", lambda: ye + 1, lambda: yl + 1),
                        ("relu(y @ w)", lambda: torch.relu(ye @ we), lambda: torch.relu(yl @ wl))):
        ratio, eu, lu = interleaved_ratio(e, la)
        print(f"ratio {name:38s} {ratio:7.2f} x eager ({eu:.2f} us vs {lu:.2f} us)")


if __name__ == "__main__":
    main()
