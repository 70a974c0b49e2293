"""Library programs: code from the libraries people run on an accelerator, as a table.

Each program is a function of the device it runs on. It runs once on the execution device
(eager) and once on remote_accelerator from the same seed, and returns every tensor worth
comparing: outputs, gradients, parameters after optimizer steps, sampled tokens. Every returned
tensor is compared (a program that returns none fails), within 1e-5, and the row records whether
the values are bit-identical and the largest difference. Random programs draw from the device's
generator on the device and from the host's in eager, seeded alike: a CUDA-like device keeps a
generator of its own, and its streams equal a CPU generator's with the same seed.

Known failures are strict xfails whose reasons say what PyTorch does and genie does not yet.
"""

from __future__ import annotations

import io

import torch
from torch import nn
from torch.nn import functional as F

REMOTE = "remote_accelerator"
ATOL = RTOL = 1e-5
SEED = 4321

PROGRAMS: dict = {}
XFAIL: dict = {}  # program -> (exception type, reason)


def program(name, *, xfail=None, needs=None):
    def register(fn):
        PROGRAMS[name] = (fn, needs)
        if xfail is not None:
            XFAIL[name] = xfail
        return fn
    return register


def _made(factory):
    """A module built on the host without advancing the host's generator: in eager the program's
    draws then come from the seeded host generator, as on the device from its seeded generator
    (building draws its initial weights from a fork of the same seed, alike in both runs)."""
    with torch.random.fork_rng(devices=[]):
        return factory()


def _mlp(width=8, p=0.0):
    return _made(lambda: nn.Sequential(nn.Linear(width, 16), nn.Tanh(), nn.Dropout(p), nn.Linear(16, 4)))


def _trained(model, device, steps, opt_factory, x_shape=(6, 8), sched=None):
    """A few training steps; the losses, gradients and parameters after them."""
    model = model.to(device)
    opt = opt_factory(model.parameters())
    scheduler = sched(opt) if sched is not None else None
    out = {}
    for step in range(steps):
        x = torch.randn(*x_shape, device=device)
        loss = model(x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if scheduler is not None:
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step(loss.item())  # reads the loss: a data-dependent host value
            else:
                scheduler.step()
            out[f"lr{step}"] = torch.tensor(opt.param_groups[0]["lr"], dtype=torch.float64)
        out[f"loss{step}"] = loss.detach()
    out.update({f"grad.{n}": p.grad for n, p in model.named_parameters()})
    out.update({f"param.{n}": p.detach() for n, p in model.named_parameters()})
    for i, state in enumerate(opt.state.values()):
        out.update({f"state{i}.{k}": v for k, v in state.items() if isinstance(v, torch.Tensor)})
    return out


# -- torch.utils.checkpoint ------------------------------------------------------------------------

def _checkpointed(device, reentrant):
    from torch.utils.checkpoint import checkpoint
    blocks = _made(lambda: nn.ModuleList([nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Dropout(0.3))
                                          for _ in range(3)])).to(device)
    x = torch.randn(4, 8, device=device, requires_grad=True)
    h = x
    for block in blocks:
        h = checkpoint(block, h, use_reentrant=reentrant)
        h = F.dropout(h, 0.1)
    loss = h.square().sum()
    loss.backward()
    return {"loss": loss.detach(), "x.grad": x.grad, **{f"grad.{n}": p.grad for n, p in blocks.named_parameters()}}


@program("checkpoint_non_reentrant_dropout")
def _(device):
    return _checkpointed(device, reentrant=False)


@program("checkpoint_reentrant_dropout")
def _(device):
    return _checkpointed(device, reentrant=True)


@program("transformers_gradient_checkpointing", needs="transformers")
def _(device):
    import transformers
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=16, vocab_size=64, n_positions=16,
                                     resid_pdrop=0.2, embd_pdrop=0.2, attn_pdrop=0.2)
    model = _made(lambda: transformers.GPT2LMHeadModel(config)).to(device)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    ids = torch.randint(0, 64, (2, 10), device=device)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return {"loss": loss.detach(), **{f"grad.{n}": p.grad for n, p in model.named_parameters()}}


# -- torch.func ------------------------------------------------------------------------------------

@program("func_grad")
def _(device):
    from torch.func import grad
    x = torch.randn(5, device=device)
    return {"grad": grad(lambda t: (t.sin() * t).sum())(x)}


@program("func_vmap_per_sample_grads")
def _(device):
    from torch.func import functional_call, grad, vmap
    model = _mlp().to(device)
    params = {k: v.detach() for k, v in model.named_parameters()}
    x, y = torch.randn(6, 8, device=device), torch.randn(6, 4, device=device)

    def loss(p, xi, yi):
        return F.mse_loss(functional_call(model, p, (xi.unsqueeze(0),)), yi.unsqueeze(0))

    grads = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    return {f"per_sample.{k}": v for k, v in grads.items()}


@program("func_jacrev_jacfwd_hessian")
def _(device):
    from torch.func import hessian, jacfwd, jacrev
    x = torch.randn(4, device=device)

    def f(t):
        return (t.sin() * t.cos().sum()).tanh()

    return {"jacrev": jacrev(f)(x), "jacfwd": jacfwd(f)(x), "hessian": hessian(lambda t: f(t).sum())(x)}


# -- torch.distributions ---------------------------------------------------------------------------

@program("distributions")
def _(device):
    from torch import distributions as D
    loc = torch.randn(3, device=device, requires_grad=True)
    scale = torch.rand(3, device=device) + 0.5
    normal = D.Normal(loc, scale)
    sample = normal.rsample((4,))
    log_prob = normal.log_prob(sample).sum()
    kl = D.kl_divergence(normal, D.Normal(torch.zeros(3, device=device), torch.ones(3, device=device))).sum()
    (log_prob + kl).backward()
    cat = D.Categorical(logits=torch.randn(2, 5, device=device))
    mvn = D.MultivariateNormal(torch.zeros(2, device=device), scale_tril=torch.eye(2, device=device) * 2)
    mv_sample = mvn.rsample((3,))
    return {"rsample": sample.detach(), "log_prob": log_prob.detach(), "kl": kl.detach(), "loc.grad": loc.grad,
            "cat.sample": cat.sample((6,)), "cat.entropy": cat.entropy(), "mvn.rsample": mv_sample,
            "mvn.log_prob": mvn.log_prob(mv_sample)}


# -- device generators -------------------------------------------------------------------------------

@program("device_generator")
def _(device):
    g = torch.Generator(device=device).manual_seed(7)
    a = torch.randn(3, generator=g, device=device)
    b = torch.rand(3, device=device)  # the default generator, independent of g
    state = g.get_state()
    c = torch.randint(0, 9, (4,), generator=g, device=device)
    g.set_state(state)
    again = torch.randint(0, 9, (4,), generator=g, device=device)
    w = torch.nn.init.kaiming_uniform_(torch.empty(4, 4, device=device), generator=g)
    keep = F.dropout(torch.ones(8, device=device), 0.5)
    perm = torch.randperm(6, generator=g, device=device)
    return {"a": a, "b": b, "c": c, "again": again, "init": w, "dropout": keep, "perm": perm, "state": state}


# -- parametrizations ------------------------------------------------------------------------------

def _parametrized(device, apply):
    model = _made(lambda: apply(nn.Linear(6, 5))).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    out = {}
    for step in range(2):
        loss = model(torch.randn(3, 6, device=device)).square().sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        out[f"loss{step}"] = loss.detach()
    out["weight"] = model.weight.detach()
    out.update({f"grad.{n}": p.grad for n, p in model.named_parameters()})
    return out


@program("parametrize_weight_norm")
def _(device):
    return _parametrized(device, nn.utils.parametrizations.weight_norm)


@program("parametrize_spectral_norm")
def _(device):
    return _parametrized(device, nn.utils.parametrizations.spectral_norm)


@program("parametrize_orthogonal")
def _(device):
    return _parametrized(device, nn.utils.parametrizations.orthogonal)


# -- optimizers and schedulers ---------------------------------------------------------------------

@program("adamw_amsgrad")
def _(device):
    return _trained(_mlp(), device, 3, lambda p: torch.optim.AdamW(p, lr=1e-2, amsgrad=True))


# torch.optim picks its implementation by device type when ``foreach`` is not given: the for-loop
# on CPU, the foreach kernels on CUDA and on a PrivateUse1 device. Nesterov's foreach path adds the
# momentum into ``p.grad`` in place and the for-loop does not, so after a step ``p.grad`` differs
# between CPU and CUDA eager too (parameters agree). The programs name the implementation.
@program("sgd_nesterov")
def _(device):
    return _trained(_mlp(), device, 3, lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9, nesterov=True,
                                                                 foreach=False))


@program("sgd_nesterov_foreach")
def _(device):
    return _trained(_mlp(), device, 3, lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9, nesterov=True,
                                                                 foreach=True))


@program("adam_foreach")
def _(device):
    return _trained(_mlp(), device, 3, lambda p: torch.optim.Adam(p, lr=1e-2, foreach=True))


@program("adam_fused")
def _(device):
    return _trained(_mlp(), device, 3, lambda p: torch.optim.Adam(p, lr=1e-2, fused=True))


@program("one_cycle_lr")
def _(device):
    return _trained(_mlp(), device, 4, lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
                    sched=lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.5, total_steps=10))


@program("reduce_lr_on_plateau")
def _(device):
    return _trained(_mlp(), device, 4, lambda p: torch.optim.SGD(p, lr=0.1),
                    sched=lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(o, patience=0, factor=0.5))


@program("grad_accumulation_clip_grad_norm")
def _(device):
    model = _mlp().to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for _ in range(3):  # three micro-batches, one step
        loss = model(torch.randn(2, 8, device=device)).square().mean() / 3
        loss.backward()
        losses.append(loss.detach())
    norm = nn.utils.clip_grad_norm_(model.parameters(), max_norm=0.05)
    opt.step()
    return {"norm": norm, **{f"loss{i}": v for i, v in enumerate(losses)},
            **{f"param.{n}": p.detach() for n, p in model.named_parameters()}}


# -- modules: hooks, state_dict, inference_mode ----------------------------------------------------

@program("forward_hooks_and_pre_hooks")
def _(device):
    model = _mlp().to(device)
    seen = {}
    model[0].register_forward_pre_hook(lambda m, args: (args[0] * 2,))
    model[1].register_forward_hook(lambda m, args, out: out + 1)
    model[3].register_forward_hook(lambda m, args, out: seen.update(last=out.detach().clone()))
    model[3].register_full_backward_hook(lambda m, gin, gout: seen.update(gout=gout[0].clone()))
    out = model(torch.randn(3, 8, device=device))
    out.sum().backward()
    return {"out": out.detach(), "hooked": seen["last"], "grad_output": seen["gout"],
            **{f"grad.{n}": p.grad for n, p in model.named_parameters()}}


@program("state_dict_save_load")
def _(device):
    model = _mlp().to(device)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    other = _mlp().to(device)
    other.load_state_dict(torch.load(buf))
    x = torch.randn(3, 8, device=device)
    return {"out": other(x).detach(), **{f"loaded.{k}": v for k, v in other.state_dict().items()}}


@program("inference_mode")
def _(device):
    model = _mlp().to(device)
    with torch.inference_mode():
        out = model(torch.randn(3, 8, device=device))
        flags = torch.tensor([out.is_inference(), out.requires_grad])
    return {"out": out, "flags": flags}


# -- nested tensors --------------------------------------------------------------------------------

@program("transformer_encoder_fast_path")
def _(device):
    encoder = _made(lambda: nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True, dropout=0.0),
                                                  2, enable_nested_tensor=True)).to(device).eval()
    x = torch.randn(3, 5, 8, device=device)
    mask = torch.tensor([[False] * 5, [False] * 3 + [True] * 2, [False] * 2 + [True] * 3], device=device)
    with torch.no_grad():  # the inference fast path: a strided nested tensor between the layers
        out = encoder(x, src_key_padding_mask=mask)
    with torch.inference_mode():
        again = encoder(x, src_key_padding_mask=mask)
    return {"out": out, "inference_mode": again}


@program("nested_jagged")
def _(device):
    lin = _made(lambda: nn.Linear(4, 3)).to(device)
    parts = [torch.randn(2, 4, device=device), torch.randn(3, 4, device=device)]
    nt = torch.nested.nested_tensor(parts, layout=torch.jagged)
    out = lin((nt * 2).sin())
    padded = torch.nested.to_padded_tensor(torch.softmax(out, dim=-1), 0.0)
    padded.sum().backward()
    return {"padded": padded.detach(), "values": out.values().detach(), "offsets": nt.offsets(),
            "grad.weight": lin.weight.grad, "grad.bias": lin.bias.grad}


# -- mixed precision -------------------------------------------------------------------------------

@program("autocast_bf16_training")
def _(device):
    model = _mlp().to(device)
    x, target = torch.randn(3, 8, device=device), torch.randint(0, 4, (3,), device=device)
    kind = "cpu" if device == "cpu" else REMOTE
    with torch.autocast(device_type=kind, dtype=torch.bfloat16):
        out = model(x)
        again = model[0](x)  # a layer used twice in a region shares one cast of its weight
        loss = F.cross_entropy(out, target) + again.float().mean()
        with torch.autocast(device_type=kind, enabled=False):
            plain = out.float() @ torch.ones(4, 2, device=device)
    loss.backward()
    return {"out": out, "again": again, "loss": loss.detach(), "plain": plain,
            **{f"grad.{n}": p.grad for n, p in model.named_parameters()}}


@program("grad_scaler_fp16")
def _(device):
    model = _mlp().to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    kind = "cpu" if device == "cpu" else REMOTE
    scaler = torch.amp.GradScaler(kind, init_scale=2.0 ** 16, growth_interval=2)
    out = {}
    for step in range(4):
        x = torch.randn(5, 8, device=device)
        if step == 1:
            x[0, 0] = float("inf")  # an overflow: the step is skipped and the scale backs off
        with torch.autocast(device_type=kind, dtype=torch.float16):
            loss = model(x).float().square().mean()
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        scaler.step(opt)
        scaler.update()
        out[f"loss{step}"] = loss.detach()
        out[f"scale{step}"] = torch.tensor(scaler.get_scale())
    out.update({f"param.{n}": p.detach() for n, p in model.named_parameters()})
    return out


# -- PyTorch's own tools on modules on the device --------------------------------------------------

@program("torch_export")
def _(device):
    model = _mlp().to(device).eval()
    x = torch.randn(3, 8, device=device)
    return {"out": torch.export.export(model, (x,)).module()(x)}


@program("jit_script_and_trace")
def _(device):
    model = _mlp().to(device).eval()
    x = torch.randn(3, 8, device=device)
    return {"script": torch.jit.script(model)(x), "trace": torch.jit.trace(model, (x,))(x)}


@program("fx_symbolic_trace")
def _(device):
    model = _mlp().to(device)
    gm = torch.fx.symbolic_trace(model)
    x = torch.randn(3, 8, device=device)
    out = gm(x)
    out.sum().backward()
    return {"out": out.detach(), **{f"grad.{n}": p.grad for n, p in gm.named_parameters()}}


# -- transformers generation strategies ------------------------------------------------------------

def _gpt2(device):
    import transformers
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=16, vocab_size=64, n_positions=32,
                                     bos_token_id=0, eos_token_id=1, pad_token_id=1)
    return _made(lambda: transformers.GPT2LMHeadModel(config)).to(device).eval()


def _generate(device, **kwargs):
    model = _gpt2(device)
    ids = torch.randint(2, 64, (2, 5), device=device)
    torch.manual_seed(SEED + 1)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, min_new_tokens=6, **kwargs)
    return {"tokens": out}


@program("generate_beam_search", needs="transformers")
def _(device):
    return _generate(device, num_beams=3, do_sample=False)


@program("generate_top_k_top_p_temperature_repetition_penalty", needs="transformers")
def _(device):
    return _generate(device, do_sample=True, top_k=10, top_p=0.9, temperature=0.7, repetition_penalty=1.3)


@program("generate_static_cache", needs="transformers")
def _(device):
    return _generate(device, do_sample=False, cache_implementation="static")


# -- transformers families beyond the zoo: a forward and one AdamW step each ---------------------------
# Code that differs from the zoo's: windowed attention in a hierarchical vision encoder (Swin),
# two towers with a contrastive loss (CLIP), an encoder with an upsampling decode head (Segformer),
# disentangled relative-position attention (DeBERTa-v2), and newer decoders (Qwen2 with grouped
# heads and qkv bias; Gemma2 with logit soft-capping and sliding-window layers).

def _train_hf(device, build, inputs):
    model = _made(build).to(device)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = inputs(device)
    out = model(**batch)
    out.loss.backward()
    result = {"loss": out.loss.detach()}
    for key in ("logits", "logits_per_image", "logits_per_text", "text_embeds", "image_embeds"):
        value = getattr(out, key, None)
        if isinstance(value, torch.Tensor):
            result[key] = value.detach()
    result.update({f"grad.{n}": p.grad for n, p in model.named_parameters() if p.grad is not None})
    opt.step()
    result.update({f"param.{n}": p.detach() for n, p in model.named_parameters()})
    return result


def _tokens(device, shape=(2, 8), vocab=64):
    ids = torch.randint(0, vocab, shape, device=device)
    return {"input_ids": ids, "labels": ids}


@program("hf_swin_image_classification", needs="transformers")
def _(device):
    import transformers
    config = transformers.SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2],
                                     window_size=4, num_labels=3)
    return _train_hf(device, lambda: transformers.SwinForImageClassification(config),
                     lambda d: {"pixel_values": torch.randn(2, 3, 32, 32, device=d),
                                "labels": torch.randint(0, 3, (2,), device=d)})


@program("hf_clip_contrastive", needs="transformers")
def _(device):
    import transformers
    config = transformers.CLIPConfig(
        text_config={"vocab_size": 64, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 16},
        vision_config={"image_size": 16, "patch_size": 8, "hidden_size": 16, "intermediate_size": 32,
                       "num_hidden_layers": 1, "num_attention_heads": 2},
        projection_dim=8)
    return _train_hf(device, lambda: transformers.CLIPModel(config),
                     lambda d: {"input_ids": torch.randint(0, 64, (3, 6), device=d),
                                "pixel_values": torch.randn(3, 3, 16, 16, device=d), "return_loss": True})


@program("hf_segformer_semantic_segmentation", needs="transformers")
def _(device):
    import transformers
    config = transformers.SegformerConfig(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16],
                                          patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 2],
                                          mlp_ratios=[2, 2], decoder_hidden_size=16, num_labels=3)
    return _train_hf(device, lambda: transformers.SegformerForSemanticSegmentation(config),
                     lambda d: {"pixel_values": torch.randn(2, 3, 32, 32, device=d),
                                "labels": torch.randint(0, 3, (2, 32, 32), device=d)})


@program("hf_deberta_v2_relative_attention", needs="transformers")
def _(device):
    import transformers
    config = transformers.DebertaV2Config(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                          intermediate_size=32, max_position_embeddings=32, relative_attention=True,
                                          position_buckets=8, pos_att_type=["p2c", "c2p"])
    return _train_hf(device, lambda: transformers.DebertaV2ForMaskedLM(config), _tokens)


@program("hf_qwen2_decoder", needs="transformers")
def _(device):
    import transformers
    config = transformers.Qwen2Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    return _train_hf(device, lambda: transformers.Qwen2ForCausalLM(config), _tokens)


@program("hf_gemma2_softcap_sliding_window", needs="transformers")
def _(device):
    import transformers
    config = transformers.Gemma2Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                       num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                                       max_position_embeddings=32, sliding_window=4)
    return _train_hf(device, lambda: transformers.Gemma2ForCausalLM(config), _tokens)


# -- diffusers (the 'diffusers' extra) -----------------------------------------------------------------

@program("diffusers_unet2d_sampling_loop", needs="diffusers")
def _(device):
    import diffusers
    unet = _made(lambda: diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
                                               block_out_channels=(8, 16), norm_num_groups=4,
                                               down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                               up_block_types=("AttnUpBlock2D", "UpBlock2D"))).to(device).eval()
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=50)
    scheduler.set_timesteps(4)
    sample = torch.randn(1, 3, 8, 8, device=device)
    steps = {}
    with torch.no_grad():
        for i, t in enumerate(scheduler.timesteps):
            noise_pred = unet(sample, t).sample
            sample = scheduler.step(noise_pred, t, sample).prev_sample  # draws its variance noise
            steps[f"sample{i}"] = sample
    return steps


@program("diffusers_unet2d_condition_training_step", needs="diffusers")
def _(device):
    import diffusers
    unet = _made(lambda: diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        norm_num_groups=4, cross_attention_dim=12, attention_head_dim=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))).to(device)
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=50)
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-3)
    latents = torch.randn(2, 4, 8, 8, device=device)
    noise = torch.randn_like(latents)
    timesteps = torch.randint(0, 50, (2,), device=device)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    text = torch.randn(2, 5, 12, device=device)
    pred = unet(noisy, timesteps, encoder_hidden_states=text).sample
    loss = F.mse_loss(pred, noise)
    loss.backward()
    out = {"loss": loss.detach(), "pred": pred.detach(),
           **{f"grad.{n}": p.grad for n, p in unet.named_parameters() if p.grad is not None}}
    opt.step()
    out.update({f"param.{n}": p.detach() for n, p in unet.named_parameters()})
    return out
