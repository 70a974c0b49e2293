"""The library-programs axis: each program of conformance/library_programs.py runs on the
execution device (eager) and on remote_accelerator from the same seed; every returned tensor is
compared within 1e-5, and the row records its bit identity (conformance/bits.py). Known failures
are strict xfails (``library_programs.XFAIL``) whose reasons say what PyTorch does."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from conformance.bits import BitRecord
from conformance.library_programs import ATOL, PROGRAMS, REMOTE, RTOL, SEED, XFAIL


def _cases():
    for name, (_, needs) in PROGRAMS.items():
        marks = [pytest.mark.genie_model(family="library", model=name, check="program", dtype="float32")]
        if needs and importlib.util.find_spec(needs) is None:
            marks.append(pytest.mark.skip(reason=f"{needs} is not installed"))
        if name in XFAIL:
            raises, reason = XFAIL[name]
            marks.append(pytest.mark.xfail(strict=True, raises=raises, reason=reason))
        yield pytest.param(name, marks=marks, id=name)


def _run(name, device):
    torch.manual_seed(SEED)
    return PROGRAMS[name][0](device)


@pytest.mark.parametrize("name", list(_cases()))
def test_library_program(name, device, record_property):
    expected = _run(name, device)
    lazy = _run(name, REMOTE)
    assert isinstance(expected, dict) and expected, f"{name}: the program returned nothing to compare"
    assert sorted(lazy) == sorted(expected), f"{name}: returned {sorted(lazy)}, eager {sorted(expected)}"
    bits = BitRecord()
    for key, e in expected.items():
        got = lazy[key]
        assert isinstance(e, torch.Tensor) and isinstance(got, torch.Tensor), key
        got = got.cpu() if got.device.type == REMOTE else got
        assert type(got) is torch.Tensor, f"{key}: a {type(got).__name__} came back, not a torch.Tensor"
        e = e.detach().to(got.device)
        assert got.dtype == e.dtype and got.shape == e.shape, f"{key}: {got.dtype}{list(got.shape)} vs {e.dtype}{list(e.shape)}"
        torch.testing.assert_close(got, e, atol=ATOL, rtol=RTOL, equal_nan=True, msg=lambda m: f"{name}: {key}: {m}")
        bits.add(key, got, e)
    record_property("genie_detail", {"tensors_compared": bits.compared, **bits.detail()})
