"""Where a captured op's time goes: ``python -m asv_benches.profile_capture``.

For each op of the capture list: eager; the *dispatcher floor* (the same call on a bare wrapper
subclass whose ``__torch_dispatch__`` only returns a new wrapper of the output's metadata, or its
input for in-place ops: what any Python device pays before doing any work); and genie's capture.
Medians of interleaved rounds in one process, one thread. Ops the operator fast path handles
(``y + 1``, ``y @ w``) do not take the dispatcher route at all.
"""

from __future__ import annotations

import contextlib
import statistics
import warnings

import torch
from torch import nn

import genie  # noqa: F401
from genie.capture import dispatch

from .common import REMOTE, median_us

_make = torch.Tensor._make_wrapper_subclass


def _wrapper(cls, shape, stride, nbytes):
    return _make(cls, shape, stride, 0, None, torch.float32, torch.strided, dispatch.DEVICE, False, False, None,
                 False, False, None, nbytes)


class Bare(torch.Tensor):
    """The floor: a handler that does no work but return a wrapper (``out`` is set per program)."""
    __torch_function__ = torch._C._disabled_torch_function_impl
    out = None

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        if Bare.out == "self":
            return args[0]
        shape, stride, nbytes = Bare.out
        return _wrapper(cls, shape, stride, nbytes)


def _bare(shape, stride=None):
    stride = stride or tuple(int(s) for s in torch.empty(shape).stride())
    return _wrapper(Bare, shape, stride, 4 * torch.empty(shape).numel())


def _programs():
    """name -> (eager callable, genie callable, floor callable or None, floor output spec)."""
    y, w = torch.randn(8, 8), torch.randn(8, 8)
    yl, wl = y.to(REMOTE), w.to(REMOTE)
    x, k = torch.randn(1, 3, 8, 8), torch.randn(4, 3, 3, 3)
    xl, kl = x.to(REMOTE), k.to(REMOTE)
    genie.materialize(yl, wl, xl, kl)
    b8 = _bare((8, 8))
    bx, bk = _bare((1, 3, 8, 8)), _bare((4, 3, 3, 3))
    return {
        "add (fast path)": (lambda: y + 1, lambda: yl + 1, None, None),
        "relu": (lambda: torch.relu(y), lambda: torch.relu(yl), lambda: torch.relu(b8), ((8, 8), (8, 1), 256)),
        "relu(mm)": (lambda: torch.relu(y @ w), lambda: torch.relu(yl @ wl), lambda: torch.relu(b8 @ b8),
                     ((8, 8), (8, 1), 256)),
        "view (t)": (lambda: y.t(), lambda: yl.t(), lambda: b8.t(), ((8, 8), (1, 8), 256)),
        "in-place (mul_)": (lambda: y.mul_(1.0), lambda: yl.mul_(1.0), lambda: b8.mul_(1.0), "self"),
        "reduction (sum)": (lambda: y.sum(0), lambda: yl.sum(0), lambda: b8.sum(0), ((8,), (1,), 32)),
        "conv2d": (lambda: nn.functional.conv2d(x, k, padding=1), lambda: nn.functional.conv2d(xl, kl, padding=1),
                   lambda: nn.functional.conv2d(bx, bk, padding=1), ((1, 4, 8, 8), (256, 64, 8, 1), 1024)),
        # the same call, with genie's kernel for it overridden by the floor's (see _factory_floor)
        "factory (zeros)": (lambda: torch.zeros(8, 8), lambda: torch.zeros(8, 8, device=REMOTE),
                            lambda: torch.zeros(8, 8, device=REMOTE), _FACTORY),
    }


_FACTORY = "factory"


@contextlib.contextmanager
def _factory_floor():
    """A factory's floor: ``aten::zeros`` on the device with genie's PrivateUse1 kernel overridden
    by one that only returns a wrapper. Every factory on a Python device takes that trip: argument
    parsing, the dispatcher, the call into a Python kernel. Destroying the library puts genie's
    kernel back (the dispatcher keeps the kernels registered for a key, newest first)."""
    lib = torch.library.Library("aten", "IMPL")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Overriding a previously registered kernel"
            lib.impl("zeros", lambda *args, **kwargs: _wrapper(Bare, (8, 8), (8, 1), 256), "PrivateUse1")
        yield
    finally:
        lib._destroy()


def measure(rounds: int = 7, number: int = 2000):
    torch.set_num_threads(1)
    rows = []
    for name, (eager, lazy, floor, out) in _programs().items():
        e, la, fl = [], [], []
        for _ in range(rounds):
            e.append(median_us(eager, number, 1))
            la.append(median_us(lazy, number, 1))
            if floor is not None:
                Bare.out = out
                with _factory_floor() if out is _FACTORY else contextlib.nullcontext():
                    fl.append(median_us(floor, number, 1))
        em, lm = statistics.median(e), statistics.median(la)
        fm = statistics.median(fl) if fl else None
        rows.append((name, em, fm, lm))
    return rows


def main() -> None:
    print(f"{'op':18s} {'eager us':>9s} {'floor us':>9s} {'genie us':>9s} {'floor/eager':>12s} {'genie/eager':>12s}")
    for name, e, f, g in measure():
        fs = f"{f:9.2f}" if f is not None else f"{'-':>9s}"
        fr = f"{f / e:11.2f}x" if f is not None else f"{'-':>12s}"
        print(f"{name:18s} {e:9.2f} {fs} {g:9.2f} {fr} {g / e:11.2f}x")


if __name__ == "__main__":
    main()
