"""MoRA on upstream peft: parameter count, zero init, merging against the paper's operators
written out by hand, and the save/reload round trip."""

from __future__ import annotations

import math

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from cl.models.mora import load_mora_config, mora_config, save_mora_metadata

LAYERS = ((30, 50), (50, 20), (64, 64))  # d_in < d_out, d_in > d_out, square


def make_net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(*LAYERS[0]),
        nn.ReLU(),
        nn.Linear(*LAYERS[1]),
        nn.ReLU(),
        nn.Linear(20, 64),
        nn.ReLU(),
        nn.Linear(*LAYERS[2]),
    )


TARGETS = ["0", "2", "6"]


def r_hat_of(d_in: int, d_out: int, r: int, mora_type: int) -> int:
    n = int(math.sqrt((d_in + d_out) * r) + 0.5)
    return n - n % 2 if mora_type == 6 else n


def trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def randomise(model: nn.Module, scale: float = 0.05) -> None:
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=gen) * scale)


@pytest.mark.parametrize("mora_type", [1, 6])
@pytest.mark.parametrize("r", [2, 8])
def test_parameter_count_is_the_formula_and_close_to_lora(mora_type, r):
    mora = get_peft_model(make_net(), mora_config(r, TARGETS, mora_type), adapter_name="t")
    lora = get_peft_model(make_net(), LoraConfig(r=r, target_modules=TARGETS), adapter_name="t")
    dims = list(LAYERS)
    expected = sum(r_hat_of(i, o, r, mora_type) ** 2 for i, o in dims)
    assert trainable(mora) == expected
    assert trainable(lora) == sum(r * (i + o) for i, o in dims)
    # Per layer, r_hat^2 is the square nearest to LoRA's r (d_in + d_out) (one step lower for
    # type 6, which needs an even side).
    modules = dict(mora.named_modules())
    for name, (i, o) in zip(TARGETS, dims, strict=True):
        n = r_hat_of(i, o, r, mora_type)
        assert abs(n * n - r * (i + o)) <= (n if mora_type == 1 else 3 * n + 1)
        assert modules[f"base_model.model.{name}"].lora_A["t"].weight.shape == (n, n)


@pytest.mark.parametrize("mora_type", [1, 6])
def test_zero_init_leaves_the_base_model_unchanged(mora_type):
    x = torch.randn(16, 30)
    expected = make_net()(x)
    model = get_peft_model(make_net(), mora_config(4, TARGETS, mora_type), adapter_name="t")
    assert torch.equal(model(x), expected)


def reference_delta(m: torch.Tensor, d_in: int, d_out: int, mora_type: int) -> torch.Tensor:
    """The paper's operators written as explicit loops (float64), independent of the layer."""
    m = m.double()
    r_hat = m.shape[0]
    n = -(-d_in // r_hat)
    delta = torch.zeros(d_out, d_in, dtype=torch.float64)
    if mora_type == 1:
        # compress: sum of chunks of the cyclically padded input; decompress: tile to d_out
        comp = torch.zeros(r_hat, d_in, dtype=torch.float64)
        for p in range(n * r_hat):
            comp[p % r_hat, p % d_in] += 1
        for o in range(d_out):
            delta[o] = m[o % r_hat] @ comp
        return delta
    half = r_hat // 2
    theta = [10000 ** (-2 * k / r_hat) for k in range(half)]
    for o in range(d_out):
        f = o % (n * r_hat)
        q, j = divmod(f, r_hat)
        rot = torch.zeros(r_hat, r_hat, dtype=torch.float64)  # RoPE by angles q * theta_k
        for k in range(half):
            c, s = math.cos(q * theta[k]), math.sin(q * theta[k])
            rot[k, k], rot[k, k + half] = c, -s
            rot[k + half, k + half], rot[k + half, k] = c, s
        row = m[j] @ rot
        for jj in range(r_hat):
            delta[o, (q * r_hat + jj) % d_in] += row[jj]
    return delta


@pytest.mark.parametrize("mora_type", [1, 6])
def test_merged_weight_matches_operators_and_reproduces_forward(mora_type):
    model = get_peft_model(make_net(), mora_config(4, TARGETS, mora_type), adapter_name="t")
    randomise(model)
    modules = dict(model.named_modules())
    for name, (d_in, d_out) in zip(TARGETS, LAYERS, strict=True):
        layer = modules[f"base_model.model.{name}"]
        expected = reference_delta(layer.lora_A["t"].weight.detach(), d_in, d_out, mora_type)
        torch.testing.assert_close(
            layer.get_delta_weight("t").double(), expected, atol=1e-6, rtol=1e-6
        )
    x = torch.randn(64, 30)
    with torch.no_grad():
        adapted = model(x)
        merged = model.merge_and_unload()(x)
    assert isinstance(merged, torch.Tensor)
    assert torch.allclose(merged, adapted, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mora_type", [1, 6])
def test_save_and_reload_reproduce_outputs_exactly(mora_type, tmp_path):
    cfg = mora_config(4, TARGETS, mora_type, lora_dropout=0.0)
    model = get_peft_model(make_net(), cfg)
    randomise(model)
    model.save_pretrained(tmp_path)
    save_mora_metadata(tmp_path, cfg)
    x = torch.randn(32, 30)
    with torch.no_grad():
        expected = model(x)
    reloaded = PeftModel.from_pretrained(make_net(), tmp_path, config=load_mora_config(tmp_path))
    with torch.no_grad():
        assert torch.equal(reloaded(x), expected)
    # Without the registration peft rebuilds plain LoRA layers, which cannot hold MoRA's matrix.
    with pytest.raises(RuntimeError):
        PeftModel.from_pretrained(make_net(), tmp_path)


def test_mora_trains_only_the_active_adapter_beside_a_lora_one():
    model = get_peft_model(make_net(), mora_config(4, TARGETS, 6), adapter_name="ad_mora")
    model.add_adapter("ad_lora", LoraConfig(r=4, target_modules=TARGETS))
    layer = dict(model.named_modules())["base_model.model.0"]
    assert layer.lora_A["ad_lora"].weight.shape == (4, 30)  # the LoRA config stays LoRA
    assert layer.lora_A["ad_mora"].weight.shape == (18, 18)  # int(sqrt(80 * 4) + 0.5), even
    model.set_adapter("ad_mora")
    lora_before = {n: p.clone() for n, p in model.named_parameters() if "ad_lora" in n}
    # Target: the same network with its last layer shifted by a full-rank perturbation.
    teacher = make_net()
    with torch.no_grad():
        teacher[6].weight += 0.3 * torch.randn(64, 64, generator=torch.Generator().manual_seed(2))
    x = torch.randn(256, 30)
    with torch.no_grad():
        y = teacher(x)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(50):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    for n, p in model.named_parameters():
        if "ad_lora" in n:
            assert torch.equal(p, lora_before[n])


@pytest.mark.parametrize("mora_type", [1, 6])
def test_scaling_survives_peft_set_scale_and_unscale(mora_type):
    model = get_peft_model(make_net(), mora_config(4, TARGETS, mora_type, lora_alpha=8), "t")
    randomise(model)
    layers = [m for m in model.modules() if hasattr(m, "mora_type")]
    assert len(layers) == 3
    x = torch.randn(32, 30)
    with torch.no_grad():
        expected = model(x)
        deltas = [layer.get_delta_weight("t") for layer in layers]
    for layer in layers:
        layer.set_scale("t", 1.0)  # peft's formula would give lora_alpha / r_hat (8 / 18 ...)
        assert layer.scaling["t"] == 1.0
    with torch.no_grad():
        assert torch.equal(model(x), expected)
    for layer in layers:
        layer.scale_layer(3.0)
        layer.unscale_layer(3.0)
        layer.scale_layer(5.0)
        layer.unscale_layer()  # None: back to the initial scaling
        assert layer.scaling["t"] == 1.0
    with torch.no_grad():
        assert torch.equal(model(x), expected)
    for layer, delta in zip(layers, deltas, strict=True):
        layer.set_scale("t", 0.5)  # a factor on MoRA's scaling of 1
        assert layer.scaling["t"] == 0.5
        torch.testing.assert_close(layer.get_delta_weight("t"), 0.5 * delta)
    # A LoRA adapter beside the MoRA one keeps peft's own formula.
    model.add_adapter("plain", LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS))
    layers[0].set_scale("plain", 2.0)
    assert layers[0].scaling["plain"] == 2.0 * 8 / 4
