"""Activation checkpointing on the device: the recomputed forward draws exactly the numbers the
first forward drew, so gradients equal eager's (torch.utils.checkpoint stashes the device's RNG
state through the device module and restores it around the recomputation)."""

import pytest
import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint, checkpoint_sequential

from conftest import DEVICE, host


def _blocks(n=3, width=16, p=0.3):
    torch.manual_seed(0)
    return nn.ModuleList([nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Dropout(p)) for _ in range(n)])


def _assert_same_training(program, *, atol=0.0):
    """Runs ``program(device)`` on CPU and on the device from the same seed; every returned
    tensor and every parameter's gradient must match eager's."""
    expected_out, expected_params = program("cpu")
    got_out, got_params = program(DEVICE)
    assert len(expected_out) == len(got_out) and len(expected_params) == len(got_params)
    for e, g in zip(expected_out, got_out):
        torch.testing.assert_close(host(g), e, rtol=0, atol=atol)
    for (name, e), (_, g) in zip(expected_params, got_params):
        assert (e.grad is None) == (g.grad is None), name
        if e.grad is not None:
            torch.testing.assert_close(host(g.grad), e.grad, rtol=0, atol=atol, msg=name)


@pytest.mark.parametrize("reentrant", [False, True])
@pytest.mark.parametrize("between", [False, True], ids=["back-to-back", "random-ops-between"])
def test_checkpointed_dropout_blocks_give_eagers_gradients(reentrant, between):
    def program(device):
        blocks = _blocks().to(device)
        torch.manual_seed(1)
        x = torch.randn(4, 16, device=device, requires_grad=True)
        h = x
        for block in blocks:
            h = checkpoint(block, h, use_reentrant=reentrant)
            if between:  # draws between regions advance the chain the recomputation must skip over
                h = nn.functional.dropout(h, 0.1) + torch.rand(4, 16, device=device)
        loss = h.square().sum()
        loss.backward()
        return [loss.detach(), x.grad], list(blocks.named_parameters())

    _assert_same_training(program)


@pytest.mark.parametrize("reentrant", [False, True])
def test_checkpoint_sequential_with_dropout(reentrant):
    def program(device):
        torch.manual_seed(0)
        model = nn.Sequential(*[m for _ in range(4) for m in (nn.Linear(8, 8), nn.GELU(), nn.Dropout(0.5))]).to(device)
        torch.manual_seed(2)
        x = torch.randn(3, 8, device=device, requires_grad=True)
        out = checkpoint_sequential(model, 2, x, use_reentrant=reentrant)
        out.sum().backward()
        return [out.detach(), x.grad], list(model.named_parameters())

    _assert_same_training(program)


def test_two_steps_of_checkpointed_training_with_an_optimizer():
    # the state stashed at the second step's forward is the chain after the first step's backward
    def program(device):
        blocks = _blocks(2).to(device)
        opt = torch.optim.SGD(blocks.parameters(), lr=0.1)
        torch.manual_seed(3)
        losses = []
        for _ in range(2):
            x = torch.randn(4, 16, device=device)
            h = x
            for block in blocks:
                h = checkpoint(block, h, use_reentrant=False)
            loss = h.sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.detach())
        return losses + [p.detach() for p in blocks.parameters()], list(blocks.named_parameters())

    _assert_same_training(program)


@pytest.mark.parametrize("reentrant", [False, True])
def test_transformers_gradient_checkpointing_with_dropout(reentrant):
    transformers = pytest.importorskip("transformers")

    def program(device):
        torch.manual_seed(0)
        config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=16, vocab_size=50, n_positions=16,
                                         resid_pdrop=0.2, embd_pdrop=0.2, attn_pdrop=0.2)
        model = transformers.GPT2LMHeadModel(config).to(device)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
        model.train()
        ids = torch.arange(24).reshape(2, 12).remainder(50).to(device)
        torch.manual_seed(4)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        return [loss.detach()], list(model.named_parameters())

    _assert_same_training(program, atol=1e-6)


def test_fork_rng_restores_the_chain_as_eager_restores_the_generator():
    def program(device):
        torch.manual_seed(9)
        a = torch.randn(3, device=device)
        # on CPU, fork_rng forks the host generator (which CPU draws use); on the device, the device's
        fork = torch.random.fork_rng(devices=[]) if device == "cpu" else torch.random.fork_rng(device_type=DEVICE)
        with fork:
            inside = torch.rand(5, device=device)
        return [a, inside, torch.randn(3, device=device)]

    for e, g in zip(program("cpu"), program(DEVICE)):
        torch.testing.assert_close(host(g), e, rtol=0, atol=0)


def test_state_read_mid_program_and_restored_later_replays_the_same_draws():
    # get_rng_state between captured, unread draws; set_rng_state after more draws: the draws that
    # follow the restore repeat exactly those that followed the read, as with a CPU generator
    def draws(device, get_state, set_state):
        torch.manual_seed(5)
        pending = [torch.randn(4, device=device) for _ in range(3)]  # captured, not read yet
        state = get_state()
        after_read = [torch.rand(2, device=device), torch.randint(0, 9, (3,), device=device)]
        pending.append(torch.randn(6, device=device))
        set_state(state)
        repeated = [torch.rand(2, device=device), torch.randint(0, 9, (3,), device=device)]
        return pending + after_read + repeated, state

    expected, cpu_state = draws("cpu", torch.get_rng_state, torch.set_rng_state)
    module = torch.remote_accelerator
    got, state = draws(DEVICE, module.get_rng_state, module.set_rng_state)
    assert type(state) is torch.Tensor and state.dtype == torch.uint8 and torch.equal(state, cpu_state)
    for e, g in zip(expected, got):
        torch.testing.assert_close(host(g), e, rtol=0, atol=0)


def test_a_malformed_state_is_refused_at_the_call_as_eager_refuses_it():
    bad = torch.zeros(7, dtype=torch.uint8)
    with pytest.raises(RuntimeError) as eager:
        torch.set_rng_state(bad)
    with pytest.raises(type(eager.value)) as lazy:
        torch.remote_accelerator.set_rng_state(bad)
    assert str(lazy.value) == str(eager.value)
    # the chain is untouched: the next draws are still the seeded ones
    torch.manual_seed(1)
    expected = torch.randn(3)
    torch.manual_seed(1)
    with pytest.raises(RuntimeError):
        torch.remote_accelerator.set_rng_state(bad)
    torch.testing.assert_close(host(torch.randn(3, device=DEVICE)), expected, rtol=0, atol=0)
