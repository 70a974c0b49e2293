"""Bad input fails loudly, naming the op, at capture where metadata shows it."""

import pytest
import torch

import genie

from conftest import DEVICE, host


def test_mixing_devices_like_cuda():
    lx = torch.ones(3, device=DEVICE)
    with pytest.raises(RuntimeError, match=r"aten::add.*remote_accelerator:0 and cpu"):
        lx + torch.ones(3)
    with pytest.raises(RuntimeError, match="remote_accelerator:0 and cpu"):
        torch.mm(torch.ones(3, 3, device=DEVICE), torch.ones(3, 3))
    # 0-dim host tensors are scalars, as on CUDA
    assert torch.equal(host(lx * torch.tensor(3.0)), torch.full((3,), 3.0))
    # CPU indices are accepted, as on CUDA
    assert torch.equal(host(lx[torch.tensor([0, 2])]), torch.ones(2))


@pytest.mark.parametrize("bad,match", [
    (lambda: torch.ones(2, 3, device=DEVICE) + torch.ones(4, device=DEVICE), "aten::add"),
    (lambda: torch.ones(2, 3, device=DEVICE) @ torch.ones(2, 3, device=DEVICE), "aten::mm"),
    (lambda: torch.ones(2, device=DEVICE, dtype=torch.int64).add_(torch.ones(2, device=DEVICE) * 0.5), "aten::add_"),
    (lambda: torch.ones(4, device=DEVICE).view(3), "aten::view"),
    (lambda: torch.cat([torch.ones(2, 2, device=DEVICE), torch.ones(3, 3, device=DEVICE)], 1), "aten::cat"),
    # layer_norm without grad is one node; its kernel's dtype checks still run at the call, as eager's
    (lambda: torch.nn.functional.layer_norm(torch.ones(2, 5, device=DEVICE), (5,),
                                            torch.ones(5, device=DEVICE, dtype=torch.float64)), "aten::layer_norm"),
])
def test_rejected_at_capture(bad, match):
    with pytest.raises(RuntimeError, match=match):
        bad()


def test_dtype_rejected_by_kernel_fails_at_the_call_as_in_eager():
    # meta kernels do not know which dtypes a backend implements; for small pointwise signatures the
    # CPU kernel is asked once, at capture, and its error is eager's, raised where eager raises it
    with pytest.raises(RuntimeError, match=r"aten::bitwise_and.*not implemented for 'Float'"):
        torch.ones(2, device=DEVICE).bitwise_and(torch.ones(2, device=DEVICE))


def test_dtype_rejected_by_kernel_on_large_inputs_fails_at_execution_naming_the_op():
    from genie.capture.meta import KERNEL_CHECK_MAX_BYTES
    n = KERNEL_CHECK_MAX_BYTES // 4 + 1
    bad = torch.ones(n, device=DEVICE).bitwise_and(torch.ones(n, device=DEVICE))
    with pytest.raises(RuntimeError, match=r"aten::bitwise_and.*not implemented for 'Float'"):
        host(bad)


def test_error_is_repeated_for_the_same_signature():
    for _ in range(2):
        with pytest.raises(RuntimeError, match="aten::add"):
            torch.ones(2, 3, device=DEVICE) + torch.ones(4, device=DEVICE)


def test_unsupported_storage_ops_fail_loudly():
    lx = torch.ones(3, device=DEVICE)
    with pytest.raises(NotImplementedError, match="aten::set_"):
        lx.set_(torch.UntypedStorage(12))
    # like every storage-less wrapper subclass (FakeTensor, DTensor), data_ptr() is 0: torch's own
    # code (Tensor.__deepcopy__) relies on that to choose clone() over a storage copy
    assert lx.data_ptr() == 0


def test_other_device_index_is_rejected():
    with pytest.raises(RuntimeError, match="device index 1"):
        torch.ones(2, device="remote_accelerator:1")


_lib = torch.library.Library("genie_test", "DEF")
_lib.define("explode(Tensor x) -> Tensor")
_lib.impl("explode", lambda x: (_ for _ in ()).throw(ValueError("kernel exploded")), "CPU")


@pytest.mark.in_process  # genie_test::explode exists in this process only
@pytest.mark.parametrize("run", ["first (interpreted)", "second (compiled, checked)", "third (compiled, fast)"])
def test_execution_errors_name_the_op(run):
    # the same structure materialized once, twice or three times: every execution path names the
    # op and the node, and keeps the kernel's exception type
    for _attempt in range(["first (interpreted)", "second (compiled, checked)", "third (compiled, fast)"].index(run) + 1):
        lx = torch.ones(3, device=DEVICE) * 2
        node = lx.genie_node
        node.target = torch.ops.genie_test.explode.default
        node.args = node.args[:1]
        with pytest.raises(ValueError, match=r"genie_test::explode \(node %\d+\) failed: kernel exploded"):
            host(lx)
        assert lx.genie_node.value is None  # nothing stale left behind


def test_execution_device_validation(monkeypatch):
    with pytest.raises(ValueError, match="unsupported execution device"):
        genie.config._validate("mps")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            genie.config._validate("cuda")


@pytest.mark.in_process
def test_metadata_disagreement_is_an_error():
    from genie.execution.local import LocalExecutor
    from genie.graph.node import intern_spec
    base = torch.ones(3, device=DEVICE)
    host(base)
    lx = base + 1
    node = lx.genie_node
    node.spec = intern_spec((4,), (1,), 0, torch.float32, 16)
    with pytest.raises(RuntimeError, match="capture inferred"):
        LocalExecutor(torch.device("cpu")).run_node(node)


def test_errors_that_depend_on_a_float_value_are_raised_for_that_value_only():
    # pointwise ops key small floats by sign (one cache entry for AdamW's changing step sizes);
    # a verdict that depends on the value must still follow the value
    h = torch.ones(4, dtype=torch.half)
    lh = h.to(DEVICE)
    m = torch.tensor([True, False, True, False])
    lm = m.to(DEVICE)
    with pytest.raises(RuntimeError, match="overflow"):
        lh.clamp_min(1e30)
    assert torch.equal(host(lh.clamp_min(2.0)), h.clamp_min(2.0))
    assert torch.equal(host(lh.masked_fill(lm, -1e4)), h.masked_fill(m, -1e4))
    with pytest.raises(RuntimeError, match="overflow"):
        lh.masked_fill(lm, -1e9)
    x = torch.randn(5)
    with pytest.raises(RuntimeError, match="lambda"):
        torch.nn.functional.softshrink(x.to(DEVICE), -0.5)
    assert torch.equal(host(torch.nn.functional.softshrink(x.to(DEVICE), 0.3)),
                       torch.nn.functional.softshrink(x, 0.3))
    u = torch.full((3,), 5, dtype=torch.uint8)
    with pytest.raises(RuntimeError):
        torch.ones(3, dtype=torch.uint8).masked_fill(torch.ones(3, dtype=torch.bool), -1.0)
    with pytest.raises(RuntimeError):
        u.to(DEVICE).masked_fill(torch.ones(3, dtype=torch.bool, device=DEVICE), -1.0)
    assert torch.equal(host(u.to(DEVICE).masked_fill(torch.ones(3, dtype=torch.bool, device=DEVICE), 2.0)),
                       torch.full((3,), 2, dtype=torch.uint8))
