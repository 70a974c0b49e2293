"""ResNet-18 on remote_accelerator: what genie captured, what it means, and that it is exact.

    python example/resnet18_demo.py [--server] [--image 64]

Runs torchvision's ResNet-18 when torchvision can be imported (on this machine family its wheels
are CUDA builds that cannot load beside the CPU torch), the project's own otherwise, with seeded
random weights. Prints the captured program from its FX export as a table of modules and ops,
the patterns genie recognized, the phases and residency of the values, and the largest
difference from eager PyTorch. ``--server`` executes on a genie server process instead of here.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import pathlib
import sys

import torch

import genie

ROOT = pathlib.Path(__file__).resolve().parents[1]


def resnet18():
    try:
        import torchvision
        return torchvision.models.resnet18(weights=None), "torchvision"
    except Exception:  # not installed, or a build that cannot load beside this torch
        sys.path.insert(0, str(ROOT))
        from asv_benches.models import ResNet18
        return ResNet18(), "genie's asv_benches.models"


def module_table(gm: torch.fx.GraphModule) -> list[tuple[str, str, str]]:
    """(module path, module class, ops) per module, in execution order, from the FX export."""
    rows: dict = collections.OrderedDict()
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        ann = node.meta.get("genie_annotations", {})
        path = node.meta.get("nn_module_path")
        if path is None:
            continue
        key = (path or "(model)", ann.get("module_class", ""))
        rows.setdefault(key, collections.Counter())[node.meta["genie_op"].replace("aten::", "")] += 1
    return [(p, c, ", ".join(f"{op}" + (f" x{n}" if n > 1 else "") for op, n in ops.items()))
            for (p, c), ops in rows.items()]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", action="store_true", help="execute on a genie server process")
    parser.add_argument("--image", type=int, default=64, help="input image size (default 64)")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    model, source = resnet18()
    model.eval()
    x = torch.randn(2, 3, args.image, args.image)
    with torch.no_grad():
        expected = model(x)

    with contextlib.ExitStack() as stack:
        if args.server:
            srv = stack.enter_context(genie.start_server())
            stack.enter_context(genie.remote(srv))
        lazy = model.to("remote_accelerator")
        with torch.no_grad():
            out = lazy(x.to("remote_accelerator"))
        graph = genie.graph_of(out)
        analysis = genie.analyze(graph)  # before reading the value: reading it releases the graph
        table = module_table(graph.to_fx(device="cpu"))
        got = out.cpu()

    print(f"ResNet-18 ({source}), input {tuple(x.shape)}: {len(graph)} captured nodes, "
          f"{sum(1 for n in graph.nodes if n.value is None)} to run\n")
    width = max(len(p) for p, _, _ in table)
    print(f"{'module':{width}}  {'class':14}  ops")
    for path, cls, ops in table:
        print(f"{path:{width}}  {cls:14}  {ops}")

    print("\npatterns:")
    for kind, matches in analysis.by_kind().items():
        where = ", ".join(m.module or "(model)" for m in matches[:4]) + (", ..." if len(matches) > 4 else "")
        print(f"  {kind:16} {len(matches):3d}  in {where}")
    print(f"phases: {analysis.phases()}")
    print(f"residency: {analysis.residency()}")

    err = (got - expected).abs().max().item()
    print(f"\nlogits {tuple(got.shape)}, max |lazy - eager| = {err:.3g}")
    counts = analysis.counts()
    ok = torch.allclose(got, expected, rtol=1e-5, atol=1e-5) and counts.get("conv_block", 0) == 17 \
        and counts.get("residual", 0) == 8
    print("OK" if ok else f"MISMATCH: patterns {counts}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
