"""Real model code, lazy vs eager: the model zoo (conformance/models.py) and PyTorch's module_db.

Per zoo model: the forward outputs (every tensor, caches included), one training step (loss,
every gradient, every parameter and buffer after AdamW) and, for generators, greedy and seeded
sampled ``generate()`` token for token. Per module_db entry: every forward input, in eval and in
train mode. Eager runs on the execution device (``--genie-device``: cpu or cuda); the same model,
deep-copied and moved with ``.to()``, runs on remote_accelerator. Values must match within 1e-5
and come back as plain tensors; a check that compared no tensor fails, and so does an output leaf
of a type the comparison does not know. Where eager rejects a module_db input, the device must raise the same exception type. Known
failures are strict xfails in conformance/manifest.py, matched by message, as for ops.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib.util
import math

import pytest
import torch
from torch.testing._internal.common_modules import module_db
from torch.utils import _pytree as pytree

from conformance import manifest
from conformance.bits import BitRecord
from conformance.models import MODELS, ModelCase
from conformance.test_opinfo import assert_rejects_like, first_line

REMOTE = "remote_accelerator"
ATOL = RTOL = 1e-5
CHECKS = ("forward", "train_step", "generate_greedy", "generate_sampled", "semantics")
SEED = 1234


def _cases():
    for case in MODELS:
        for check in CHECKS:
            if check.startswith("generate") and not case.generates:
                continue
            marks = [pytest.mark.genie_model(family=case.family, model=case.name, check=check, dtype="float32")]
            if case.needs and importlib.util.find_spec(case.needs) is None:
                marks.append(pytest.mark.skip(reason=f"{case.needs} is not installed (the 'models' extra)"))
            yield pytest.param(case, check, marks=marks, id=f"{case.name}-{check}")


# output leaves compared by equality: values that are not tensors but are part of what a model returns
PLAIN = (type(None), bool, int, float, str, torch.dtype, torch.device)


def leaves_of(obj, prefix="out"):
    """Every leaf of a model's output, with a path: tensors and plain values (PLAIN), through tuples,
    lists, dicts, ModelOutputs and KV caches. A leaf of any other type is an error, not a silence:
    an output whose layout changes must not compare nothing."""
    if isinstance(obj, (torch.Tensor, *PLAIN)):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from leaves_of(v, f"{prefix}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from leaves_of(v, f"{prefix}[{i}]")
    elif hasattr(obj, "layers") and isinstance(obj.layers, list):  # transformers' Cache
        for i, layer in enumerate(obj.layers):
            for attr in ("keys", "values"):
                if not hasattr(layer, attr):
                    raise TypeError(f"{prefix}.layers[{i}]: a {type(layer).__name__} has no {attr}")
                yield from leaves_of(getattr(layer, attr), f"{prefix}.layers[{i}].{attr}")
    elif hasattr(obj, "self_attention_cache"):  # EncoderDecoderCache
        yield from leaves_of(obj.self_attention_cache, f"{prefix}.self_attention_cache")
        yield from leaves_of(obj.cross_attention_cache, f"{prefix}.cross_attention_cache")
    else:
        raise TypeError(f"{prefix}: a {type(obj).__module__}.{type(obj).__qualname__} leaf, which the comparison "
                        "does not know (teach leaves_of its layout)")


def tensors_of(obj, prefix="out"):
    """Every tensor in a model's output, with a path (see leaves_of)."""
    return ((path, leaf) for path, leaf in leaves_of(obj, prefix) if isinstance(leaf, torch.Tensor))


def assert_same(actual, expected, what="output", host=(), allow_empty=False) -> int:
    """Lazy's output leaf by leaf against eager's; returns how many tensors were compared, and fails
    when none was (``allow_empty``: a model's buffers, which it may not have)."""
    a = dict(leaves_of(actual, what))
    e = dict(leaves_of(expected, what))
    assert list(a) == list(e), f"{what}: leaves {sorted(set(a) ^ set(e))} differ between lazy and eager"
    compared = 0
    for name, et in e.items():
        at = a[name]
        if isinstance(et, float):  # a Python number a model computed: equal within the tensors' tolerance
            close = math.isclose(at, et, rel_tol=RTOL, abs_tol=ATOL) if isinstance(at, float) else False
            assert close or (at != at and et != et), f"{name}: {at!r}, eager {et!r}"
            continue
        if not isinstance(et, torch.Tensor):
            assert not isinstance(at, torch.Tensor) and at == et, f"{name}: {at!r}, eager {et!r}"
            continue
        assert isinstance(at, torch.Tensor), f"{name}: a {type(at).__name__}, eager a tensor"
        where = "cpu" if name in host else REMOTE
        assert at.device.type == where, f"{name}: on {at.device}, expected on {where}"
        assert (at.shape, at.dtype) == (et.shape, et.dtype), \
            f"{name}: {tuple(at.shape)} {at.dtype}, eager {tuple(et.shape)} {et.dtype}"
        value = at.detach().cpu()
        assert type(value) is torch.Tensor, f"{name}: materialized as {type(value).__name__}"
        torch.testing.assert_close(value, et.detach().cpu(), rtol=RTOL, atol=ATOL, equal_nan=True,
                                   msg=lambda m: f"{name}: {m}")
        if _bits is not None:
            _bits.add(name, value, et.detach().cpu())
        compared += 1
    assert compared or allow_empty, f"{what}: no tensor to compare (eager's output: {type(expected).__name__})"
    return compared


def _to_remote(tree):
    return pytree.tree_map(lambda x: x.to(REMOTE) if isinstance(x, torch.Tensor) and x.device.type != REMOTE
                           and not _is_host_argument(x) else x, tree)


def _to_eager(tree, device):
    return pytree.tree_map(lambda x: x.to(device) if isinstance(x, torch.Tensor) and not _is_host_argument(x)
                           else x, tree)


def _is_host_argument(t):
    return getattr(t, "_genie_host", False)


def _build(case: ModelCase, device: str):
    """The model and its inputs twice: eager on ``device`` (the execution device), and on the remote
    device; both from one seeded construction on the host, so their weights are the same."""
    torch.manual_seed(SEED)
    model, inputs = case.build()
    if "lengths" in inputs:  # pack_padded_sequence takes its lengths on the host, as eager CUDA requires
        inputs["lengths"]._genie_host = True
    lazy = copy.deepcopy(model).to(REMOTE)
    return model.to(device), lazy, _to_eager(inputs, device), _to_remote(inputs)


def _loss(out):
    if isinstance(out, dict) and out.get("loss") is not None:
        return out["loss"]
    return sum(t.float().square().mean() for _, t in tensors_of(out) if t.is_floating_point() and t.requires_grad)


# The structure a model materializes repeats from its second call on: the repeated calls are
# compiled replays (the suite compiles at first sight: GENIE_REPLAY_AFTER=1), and each is checked.
RUNS = 3


def _check_forward(case, model, lazy, inputs, l_inputs) -> int:
    model.eval()
    lazy.eval()
    compared = 0
    with torch.no_grad():
        expected = model(**inputs)
        for run in range(RUNS):
            actual = lazy(**l_inputs)
            try:
                compared += assert_same(actual, expected, host=case.host_outputs)
            except AssertionError as e:
                raise AssertionError(f"run {run + 1} of {RUNS}: {e}") from e
    return compared


def _check_train_step(model, lazy, inputs, l_inputs) -> int:
    model.train()
    lazy.train()
    sides = [(m, x, torch.optim.AdamW(m.parameters(), lr=1e-2)) for m, x in ((model, inputs), (lazy, l_inputs))]
    compared = 0
    for step in range(RUNS):
        results = []
        for m, x, opt in sides:
            opt.zero_grad()
            torch.manual_seed(SEED + 1 + step)  # dropout draws the same masks on both sides
            out = m(**x)
            loss = _loss(out)
            loss.backward()
            grads = {n: p.grad for n, p in m.named_parameters() if p.grad is not None}
            opt.step()
            results.append((loss, grads, dict(m.named_parameters()), dict(m.named_buffers())))
        (e_loss, e_grads, e_params, e_bufs), (a_loss, a_grads, a_params, a_bufs) = results
        at = f" (step {step + 1})"
        compared += assert_same(a_loss, e_loss, "loss" + at)
        assert sorted(a_grads) == sorted(e_grads), "parameters with gradients differ" + at
        compared += assert_same(a_grads, e_grads, "grad" + at)
        compared += assert_same(a_params, e_params, "param after AdamW" + at)
        compared += assert_same(a_bufs, e_bufs, "buffer after AdamW" + at, allow_empty=True)
    # tied weights stay one Parameter on the device (their gradients are summed)
    assert len(list(lazy.parameters())) == len(list(model.parameters())), "shared parameters were untied"
    return compared


def _generate(model, inputs, sampled):
    kwargs = {k: v for k, v in inputs.items() if k != "labels"}
    model.eval()
    torch.manual_seed(SEED + 2)
    return model.generate(**kwargs, max_new_tokens=6, do_sample=sampled, top_k=0 if sampled else None,
                          pad_token_id=0)


def _check_generate(model, lazy, inputs, l_inputs, sampled) -> int:
    expected = _generate(model, inputs, sampled)
    actual = _generate(lazy, l_inputs, sampled)
    return assert_same(actual, expected, "tokens")


def _check_semantics(case, model, lazy, inputs, l_inputs) -> int:
    """What the captured graph knows (genie/semantics): the patterns of an eval forward, module
    paths on them, weights resident; a training step's phases and residency, backward ops in
    the modules of their forward; a generator's prefill and decode steps and its KV cache. The
    forward's values must still be eager's (the structure is kept for analysis while it runs)."""
    import genie
    model.eval()
    lazy.eval()
    with torch.no_grad():
        expected = model(**inputs)
        with genie.keep_structure():
            actual = lazy(**l_inputs)
            analysis = genie.analyze(genie.graph_of(*[t for _, t in tensors_of(actual) if isinstance(t, genie.LazyTensor)]))
    assert analysis.counts() == case.patterns, f"patterns found {analysis.counts()}, expected {case.patterns}"
    for m in analysis.matches:
        assert m.module is not None and all(n.module_path is not None for n in m.nodes if n.phase != "backward"), \
            f"{m}: nodes without a module"
    forward_phases = {n.phase for n in analysis.graph.nodes if n.module_path is not None}
    assert forward_phases <= {"forward", "prefill"}, forward_phases
    assert all(p.genie_node.residency == "weight" for p in lazy.parameters())
    compared = assert_same(actual, expected, host=case.host_outputs)

    if case.generates:  # before the training step changes the weights
        kwargs = {k: v for k, v in l_inputs.items() if k != "labels"}
        e_kwargs = {k: v for k, v in inputs.items() if k != "labels"}
        model.eval()
        lazy.eval()
        expected = model.generate(**e_kwargs, max_new_tokens=3, min_new_tokens=3, do_sample=False, pad_token_id=0)
        with genie.keep_structure():
            tokens = lazy.generate(**kwargs, max_new_tokens=3, min_new_tokens=3, do_sample=False, pad_token_id=0)
            analysis = genie.analyze(genie.graph_of(tokens))
        steps = {(n.phase, n.phase_source) for n in analysis.graph.nodes}
        assert {("prefill", "call"), ("decode", "call")} <= steps, steps
        decode_updates = [m for m in analysis.matches if m.kind == "kv_cache_update" and m.phase == "decode"]
        assert decode_updates and any(n.residency == "kv_cache" for n in analysis.graph.nodes)
        compared += assert_same(tokens, expected, "tokens")

    # one training step: forward, backward, AdamW
    lazy.train()
    opt = torch.optim.AdamW(lazy.parameters(), lr=1e-2)
    torch.manual_seed(SEED)
    with genie.keep_structure():
        loss = _loss(lazy(**l_inputs))
        loss.backward()
        grads = [p.grad for p in lazy.parameters() if p.grad is not None]
        assert all(g.genie_node.residency == "gradient" for g in grads)
        opt.step()
        state = [t for s in opt.state.values() for t in s.values() if isinstance(t, genie.LazyTensor) and t.dim()]
        graph = genie.graph_of(loss, *lazy.parameters(), *state)
    phases = {n.phase for n in graph.nodes}
    assert {"forward", "backward", "optimizer"} <= phases, phases
    forward_modules = {n.module_path for n in graph.nodes if n.phase == "forward"}
    backward = [n for n in graph.nodes if n.phase == "backward"]
    in_modules = [n for n in backward if n.module_path is not None]
    assert len(in_modules) >= len(backward) // 2, f"{len(in_modules)} of {len(backward)} backward ops have a module"
    assert {n.module_path for n in in_modules} <= forward_modules
    assert all(p.genie_node.residency == "weight" for p in lazy.parameters())
    assert state and all(t.genie_node.residency == "optimizer_state" for t in state)
    return compared


@pytest.mark.parametrize("case, check", list(_cases()))
def test_model(case, check, record_property, pytestconfig):
    global _bits
    _bits = BitRecord()
    with _verdict(case.name, check, record_property):
        model, lazy, inputs, l_inputs = _build(case, _device(pytestconfig))
        if check == "forward":
            compared = _check_forward(case, model, lazy, inputs, l_inputs)
        elif check == "train_step":
            compared = _check_train_step(model, lazy, inputs, l_inputs)
        elif check == "semantics":
            compared = _check_semantics(case, model, lazy, inputs, l_inputs)
        else:
            compared = _check_generate(model, lazy, inputs, l_inputs, sampled=check == "generate_sampled")
        record_property("genie_detail", {"tensors_compared": compared, **_bits.detail()})


# the bit identity of the tensors the running model check compares (assert_same adds to it)
_bits: BitRecord | None = None


@contextlib.contextmanager
def _verdict(model: str, check: str, record_property):
    """Strict expected failures from the manifest, matched by message; the failure's text on the row,
    expected or not."""
    expected = manifest.lookup_model(model, check)
    try:
        yield
    except Exception as e:
        failure = f"{type(e).__name__}: {first_line(e)}"
        record_property("genie_detail", {"first_failure": failure, "failures": [failure]})
        if expected is not None and expected.expects(0, failure):
            pytest.xfail(expected.reason)
        raise
    if expected is not None:
        pytest.fail(f"[XPASS(strict)] {model}-{check} passes now: remove its manifest entry ({expected.reason})")


def _device(pytestconfig) -> str:
    device = pytestconfig.getoption("--genie-device")
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("device 'cuda': CUDA is not available on this machine")
    return device


# -- PyTorch's module database ----------------------------------------------------------------


def _module_cases():
    for info in module_db:
        if torch.float32 not in info.dtypes:
            continue
        for training in (False, True):
            mode = "train" if training else "eval"
            label = pytest.mark.genie_model(family="module_db", model=info.formatted_name, check=f"forward-{mode}",
                                            dtype="float32")
            yield pytest.param(info, training, marks=[label], id=f"{info.formatted_name}-{mode}")


@pytest.mark.parametrize("info, training", list(_module_cases()))
def test_module_db(info, training, samples, pytestconfig):
    """Each forward input of the ModuleInfo is a sample: compared, rejected as eager rejects it, or
    skipped (no forward input); known failures are matched input by input, as OpInfo samples are."""
    mode = "train" if training else "eval"
    device = _device(pytestconfig)
    torch.manual_seed(SEED)
    inputs = info.module_inputs_func(info, device=device, dtype=torch.float32, requires_grad=False, training=training)
    name = info.formatted_name
    run = samples(f"{name}-forward-{mode}", manifest.lookup_model(name, f"forward-{mode}"))
    for i, inp in enumerate(inputs):
        check = functools.partial(_check_module_input, info, training, device, i, inp)
        run.check(i, _describe_module_input(inp), check)
    run.finish()


def _check_module_input(info, training: bool, device: str, i: int, inp) -> str:
    if inp.forward_input is None:
        pytest.skip("the ModuleInput has no forward input")
    c_args, c_kwargs = inp.constructor_input.args, inp.constructor_input.kwargs
    torch.manual_seed(SEED)
    module = info.module_cls(*c_args, **c_kwargs)
    module.train(training)
    # two copies: the second one's forward (the same structure) is a compiled replay
    lazies = [copy.deepcopy(module).to(REMOTE) for _ in range(2)]
    module.to(device)
    f_args, f_kwargs = inp.forward_input.args, inp.forward_input.kwargs
    torch.manual_seed(SEED + i)
    try:
        expected = module(*copy.deepcopy(f_args), **copy.deepcopy(f_kwargs))
    except Exception as eager_error:  # eager rejects this input: the device must reject it alike
        def lazy_forward():
            torch.manual_seed(SEED + i)
            out = lazies[0](*_to_remote(f_args), **_to_remote(f_kwargs))
            [t.cpu() for _, t in tensors_of(out)]
        assert_rejects_like(eager_error, lazy_forward)
        return "rejected"
    for run, lazy in enumerate(lazies):
        torch.manual_seed(SEED + i)
        actual = lazy(*_to_remote(f_args), **_to_remote(f_kwargs))
        assert_same(actual, expected, f"input {i}" + (" (replayed)" if run else ""))
    return "compared"


def _describe_module_input(inp) -> str:
    forward = inp.forward_input
    if forward is None:
        return "no forward input"
    parts = [f"T{tuple(a.shape)}" if isinstance(a, torch.Tensor) else repr(a)[:40] for a in forward.args]
    return ", ".join(parts + [f"{k}={v!r}"[:40] for k, v in forward.kwargs.items()])[:200]
