"""PyTorch's own tools see the user's forward of a module on the device: torch.export,
torch.jit.script / trace, torch.fx, torch.compile and inspect read and compile the user's code,
and the programs they make compute eager's values; a plain call keeps its module context."""

import inspect

import pytest
import torch
from torch import nn

import genie

from conftest import DEVICE, host


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(6, 5)
        self.norm = nn.LayerNorm(5)

    def forward(self, x, scale: float = 2.0):
        """The user's forward."""
        return self.norm(self.proj(x)).relu() * scale


def _models():
    torch.manual_seed(0)
    eager = nn.Sequential(Block(), nn.Linear(5, 3))
    torch.manual_seed(0)
    lazy = nn.Sequential(Block(), nn.Linear(5, 3)).to(DEVICE)
    torch.manual_seed(1)
    x = torch.randn(4, 6)
    return eager, lazy, x, x.to(DEVICE)


def _close(got, expected):
    torch.testing.assert_close(host(got), expected, rtol=0, atol=0)


def test_export_sees_the_users_forward_and_its_program_computes_eagers_values():
    eager, lazy, x, lx = _models()
    exported = torch.export.export(lazy, (lx,))
    assert exported.graph_signature is not None
    assert {"aten.linear.default", "aten.layer_norm.default"} <= {
        str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
    _close(exported.module()(lx), eager(x))


def test_jit_script_compiles_the_users_forward():
    eager, lazy, x, lx = _models()
    scripted = torch.jit.script(lazy)
    code = getattr(scripted, "0").code
    assert "norm" in code and "scale" in code
    _close(scripted(lx), eager(x))


def test_jit_trace_and_fx_trace_the_users_forward():
    eager, lazy, x, lx = _models()
    _close(torch.jit.trace(lazy, (lx,))(lx), eager(x))
    gm = torch.fx.symbolic_trace(lazy)
    assert [n.target for n in gm.graph.nodes if n.op == "call_module"] == ["0.proj", "0.norm", "1"]
    _close(gm(lx), eager(x))


def test_torch_compile_with_the_eager_backend():
    eager, lazy, x, lx = _models()
    _close(torch.compile(lazy, backend="eager")(lx), eager(x))


def test_inspect_reads_the_users_forward():
    _, lazy, _, _ = _models()
    block = lazy[0]
    user = Block.forward.__get__(block, Block)
    assert inspect.ismethod(block.forward) and block.forward.__func__ is Block.forward
    assert block.forward.__self__ is block and block.forward.__name__ == "forward"
    assert inspect.signature(block.forward) == inspect.signature(user)
    assert inspect.getsource(block.forward) == inspect.getsource(Block.forward)
    assert block.forward.__doc__ == "The user's forward."


def test_a_user_instance_forward_is_what_the_tools_see():
    eager, lazy, x, lx = _models()

    def doubled(inp):
        return Block.forward(lazy[0], inp) * 2

    lazy[0].forward = doubled
    eager[0].forward = lambda inp: Block.forward(eager[0], inp) * 2
    assert inspect.isfunction(lazy[0].forward) and lazy[0].forward.__code__ is doubled.__code__
    _close(lazy(lx), eager(x))


def test_module_context_is_kept_after_the_tools_ran():
    eager, lazy, x, lx = _models()
    torch.export.export(lazy, (lx,))
    torch.jit.script(lazy)
    y = lazy(lx)
    paths = {n.module_path: n.module_class for n in genie.graph_of(y).nodes if n.module_path is not None}
    assert paths["0.proj"] == "Linear" and paths["0"] == "Block" and paths["1"] == "Linear"
    _close(y, eager(x))


@pytest.mark.parametrize("copy", ["deepcopy", "pickle"])
def test_copies_keep_their_own_context_forward(copy):
    import copy as copy_module
    import io
    eager, lazy, x, lx = _models()
    if copy == "deepcopy":
        other = copy_module.deepcopy(lazy)
    else:
        buf = io.BytesIO()
        torch.save(lazy, buf)
        buf.seek(0)
        other = torch.load(buf, weights_only=False)
    assert other[0].forward.__self__ is other[0]
    _close(other(lx), eager(x))
