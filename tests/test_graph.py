"""The captured graph: names, metadata, inputs, fx export, annotations."""

import torch

import genie

from conftest import DEVICE, host


def test_graph_api():
    torch.manual_seed(0)
    x = torch.randn(4, 4, device=DEVICE)
    y = torch.relu(x @ x.T) + 1
    g = genie.graph_of(y)
    names = [n.op for n in g.topological_order()]
    assert names[-4:] == ["aten::permute", "aten::mm", "aten::relu", "aten::add"]
    n = y.genie_node
    assert n.shape == (4, 4) and n.dtype == torch.float32
    assert [i.op for i in n.inputs] == ["aten::relu"]
    assert g.users(n.inputs[0]) == [n]
    assert n in genie.get_graph().nodes
    assert all("::" in name and "." not in name for name in names)


def test_to_fx_reproduces_values():
    torch.manual_seed(0)
    a = torch.randn(3, 5)
    la = a.to(DEVICE)
    out = (la.sin() * 2).sum(1).softmax(0)
    gm = genie.graph_of(out).to_fx()
    assert isinstance(gm, torch.fx.GraphModule)
    inputs = [v.cpu() if isinstance(v, torch.Tensor) else v for v in gm.genie_inputs]
    with torch.utils._mode_utils.no_dispatch():
        # the placeholder for a host snapshot is the snapshot itself
        got = gm(*inputs)
    expected = (a.sin() * 2).sum(1).softmax(0)
    torch.testing.assert_close(got[-1], expected)
    assert any(node.meta.get("genie_op") == "aten::sin" for node in gm.graph.nodes)


def test_annotations_travel_to_fx():
    lx = torch.ones(2, device=DEVICE) + 1
    lx.genie_node.annotate("module", "encoder.layer0")
    gm = genie.graph_of(lx).to_fx()
    anns = [n.meta["genie_annotations"] for n in gm.graph.nodes if n.op == "call_function"]
    assert anns[-1]["module"] == "encoder.layer0"  # a user's note
    assert all(a["residency"] == "activation" for a in anns)  # what semantics knows of every node


def test_capture_stats_by_name():
    genie.reset_capture_stats()
    x = torch.ones(3, device=DEVICE)
    y = x.add(1).add(2).mul(3)
    host(y)
    s = genie.capture_stats()
    assert s["captured"]["aten::add"] == 2 and s["captured"]["aten::mul"] == 1
    assert s["total_fallback"] == 0
