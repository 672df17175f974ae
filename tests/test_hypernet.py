"""Tests of the task-conditioned hypernetwork (HNET / HNET+ENT, von Oswald et al., ICLR 2020)."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.nn import functional as F

from cl.checkpoint import load_checkpoint
from cl.config import build
from cl.lookahead import Scratch, optimizer_delta, sgd_delta
from cl.models.hypernet import HyperNetwork, normalized_entropy
from cl.run import run_experiment
from cl.strategy import Batch
from cl.streams.base import TensorData
from tests.conftest import compose_cfg, needs_fmnist

ADAM = ["train.optimizer=adam", "train.batch_size=64"]
# Permuted Fashion-MNIST with task ids at test (task_il), subsampled to stay fast on a CPU.
PFMNIST = [
    "stream=permuted_fmnist",
    "stream.scenario=task_il",
    "stream.max_train_per_experience=1000",
    "stream.max_test_per_experience=1000",
    "model.hidden_sizes=[100,100]",
    "train.epochs=5",
    "train.lr=0.003",
    *ADAM,
]
HNET = ["strategy=hypernet", "strategy.hidden_sizes=[10,10]", "strategy.beta=0.2"]
# Compressive chunked hypernetwork: ~58k trainable parameters for a 89.6k-weight target.
CHUNKED = [
    "strategy=hypernet",
    "strategy.hidden_sizes=[64,64]",
    "strategy.chunk_size=700",
    "strategy.chunk_emb_dim=32",
    "strategy.emb_dim=32",
    "strategy.beta=1.0",
]
# Tiny runs on the embedded digits for the invariants.
DIGITS = [
    "strategy=hypernet",
    "strategy.hidden_sizes=[8,8]",
    "train.epochs=2",
    "train.lr=0.003",
    *ADAM,
]
SPLIT = [
    "stream=split_fmnist",
    "stream.max_train_per_experience=2000",
    "stream.max_test_per_experience=1000",
    "model.hidden_sizes=[100,100]",
    "train.epochs=3",
    "train.lr=0.002",
    *ADAM,
]


def _run(tmp: Path, *overrides: str) -> tuple[Any, Any]:
    cfg = compose_cfg(["logger=none", "checkpoint.keep_all=true", *overrides])
    return cfg, run_experiment(cfg, tmp)


def _diag_mean(rec: Any) -> float:
    r = rec.acc_matrix
    return sum(r[i][i] for i in range(len(r))) / len(r)


def _restored(cfg: Any, run_dir: Path) -> Any:
    """Stream, model and strategy rebuilt from the run's last checkpoint (a state round-trip)."""
    built = build(cfg)
    ckpt = load_checkpoint(run_dir / "checkpoints")
    assert ckpt is not None
    built.strategy.load_state_dict(ckpt["strategy"])
    return built


# --------------------------------------------------------------- invariants (digits, fast)
def test_generated_weights_run_the_model(tmp_path: Path) -> None:
    """Loading h(e_t) into the model itself reproduces the strategy's logits for task t."""
    b = build(compose_cfg(["logger=none", "strategy=hypernet", "stream=split_digits"]))
    s, exp = b.strategy, b.stream[2]
    s.model.eval()
    x = exp.test.x[:50]
    flat = s.generate([2])[0].detach()
    w = s.spec.unflatten(flat)
    model = copy.deepcopy(s.model)
    model.backbone.load_state_dict({k: v for k, v in w.items() if not k.startswith("head.")})
    ref = F.linear(model.backbone(x), w["head.weight"], w["head.bias"])
    out = s.predict(x, torch.full((50,), 2))
    assert torch.allclose(out[:, exp.classes], ref, atol=1e-5)
    assert torch.isinf(out[:, [c for c in range(10) if c not in exp.classes]]).all()
    # Generated weights have the size of a standard init, not of the raw hnet output.
    first = w["0.weight"] if "0.weight" in w else w["1.weight"]
    assert 0.3 * (2 / 64) ** 0.5 < first.std().item() < 3 * (2 / 64) ** 0.5


def test_ledger_and_trainable_parameters(tmp_path: Path) -> None:
    cfg, rec = _run(tmp_path, *DIGITS, "stream=permuted_digits", "model.hidden_sizes=[32]")
    s = _restored(cfg, tmp_path).strategy
    hnet = sum(p.numel() for p in s.hnet.parameters())
    assert rec.budget.trainable_params == hnet + s.config.emb_dim  # hnet + current embedding
    # The model's own parameters are never trained: they still equal a fresh build's init.
    fresh = build(cfg).model.state_dict()
    assert all(torch.equal(v, fresh[k]) for k, v in s.model.state_dict().items())
    # Everything kept beyond the model: the hypernetwork (weights and its output scale and
    # offset buffers), every task embedding, the targets.
    n, t = s.spec.numel, len(s.learned)
    n_emb = len(s.embeddings) * s.config.emb_dim
    assert t == 5 and rec.budget.extra_state_bytes == 4 * (hnet + 2 * n + n_emb + t * n)


def test_regulariser_keeps_old_outputs_and_lookahead_subset(tmp_path: Path) -> None:
    """h(e_0) barely moves under the regulariser (with look-ahead and a task subset)."""
    common = [
        *DIGITS,
        "stream=permuted_digits",
        "stream.n_experiences=3",
        "model.hidden_sizes=[32]",
    ]
    drift = {}
    for beta in (1.0, 0.0):
        d = tmp_path / f"b{beta}"
        _run(
            d,
            *common,
            f"strategy.beta={beta}",
            "strategy.lookahead=true",
            "strategy.reg_tasks_per_step=1",
        )
        first = torch.load(d / "checkpoints" / "exp0.pt", weights_only=False)["strategy"]
        last = load_checkpoint(d / "checkpoints")
        assert last is not None
        t0, t_end = first["targets"][0], last["strategy"]["targets"][0]
        drift[beta] = ((t_end - t0).norm() / t0.norm()).item()
    print("relative drift of h(e_0):", drift)
    assert drift[1.0] < 0.05
    assert drift[0.0] > 5 * drift[1.0]


def test_per_task_batch_norm_statistics(tmp_path: Path) -> None:
    cfg, _ = _run(
        tmp_path,
        *DIGITS,
        "stream=split_digits",
        "stream.n_experiences=2",
        "model=cnn",
        "model.channels=[4]",
        "model.hidden_size=16",
        "model.batch_norm=true",
    )
    first = torch.load(tmp_path / "checkpoints" / "exp0.pt", weights_only=False)["strategy"]
    s = _restored(cfg, tmp_path).strategy
    mean = next(k for k in s.bn_stats[0] if k.endswith("running_mean"))
    # Task 0's statistics were frozen while task 1 trained; task 1 has its own.
    assert torch.equal(s.bn_stats[0][mean], first["bn_stats"][0][mean])
    assert not torch.allclose(s.bn_stats[0][mean], s.bn_stats[1][mean])
    assert s.extra_state_bytes() > 4 * 2 * s.spec.numel


# ---------------------------------------------------- formulas (look-ahead, entropy)
@pytest.mark.parametrize(
    "make",
    [
        lambda p: torch.optim.SGD(p, lr=0.1),
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, dampening=0.2, weight_decay=0.01),
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, maximize=True),
        lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=0.1),
        lambda p: torch.optim.Adam(p, lr=0.01, amsgrad=True),
        lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1),
    ],
)
def test_lookahead_previews_the_optimizer_step(make: Any) -> None:
    """dtheta is exactly the change the optimiser's next step makes (its state included)."""
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(5, 3, generator=gen)) for _ in range(2)]
    opt = make(params)
    scratch = Scratch()  # kept tensors reused step after step give the same previews
    for step in range(4):  # the first preview has no state yet; later ones do
        grads = [torch.randn(p.shape, generator=gen) for p in params]
        before = [p.detach().clone() for p in params]
        delta = optimizer_delta(opt, params, grads)
        kept = optimizer_delta(opt, params, grads, scratch=scratch, add_param=True)
        ahead = [a.clone() for a in kept if a is not None]  # sgd_delta reuses the scratch
        sgd_ahead = sgd_delta(opt, params, grads, scratch=scratch, add_param=True)
        lr = opt.param_groups[0]["lr"]
        for p, g, a in zip(params, grads, sgd_ahead, strict=True):
            assert a is not None and torch.allclose(a, p.detach() - lr * g, atol=1e-7)
        if step == 2:  # the plain SGD step, at the group's lr
            lr = opt.param_groups[0]["lr"]
            sgd = sgd_delta(opt, params, grads)
            assert all(torch.equal(d, -lr * g) for d, g in zip(sgd, grads, strict=True))
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        opt.step()
        for p, b, d, a in zip(params, before, delta, ahead, strict=True):
            assert d is not None
            assert torch.allclose(p.detach() - b, d, atol=1e-6, rtol=1e-4)
            assert torch.allclose(p.detach(), a, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("chunk_size", [None, 7])
def test_lookahead_forward_and_inplace_gradients_match_plain_autograd(chunk_size: Any) -> None:
    """``hnet(e, ahead)``: outputs and gradients of plain autograd on
    ``theta + detach(ahead - theta)``; weight gradients accumulate in a kept tensor."""
    torch.manual_seed(0)
    h = HyperNetwork(n_out=30, emb_dim=4, hidden_sizes=[5, 6], chunk_size=chunk_size)
    ref = copy.deepcopy(h)
    emb, w1, w2 = torch.randn(3, 4), torch.randn(3, 30), torch.randn(3, 30)
    ahead = {n: p.detach() + 0.1 * torch.randn_like(p) for n, p in h.named_parameters()}
    ptrs = []
    for _ in range(2):  # twice: the second round reuses the first round's gradient tensor
        h.zero_grad(set_to_none=True)
        ref.zero_grad(set_to_none=True)
        (h(emb) * w1).sum().backward()  # the task loss at theta, then the regulariser ahead
        out = h(emb, ahead)
        (out * w2).sum().backward()
        params = dict(ref.named_parameters())  # plain autograd: non-leaf weights
        plain0 = torch.func.functional_call(ref, {n: p.clone() for n, p in params.items()}, emb)
        at = {n: p + (ahead[n] - p).detach() for n, p in params.items()}
        plain = torch.func.functional_call(ref, at, emb)
        ((plain0 * w1).sum() + (plain * w2).sum()).backward()
        assert torch.allclose(out, plain, atol=1e-6)
        for (n, p), q in zip(h.named_parameters(), ref.parameters(), strict=True):
            assert p.grad is not None and torch.allclose(p.grad, q.grad, atol=1e-5), n
        assert h.out.weight.grad is not None
        ptrs.append(h.out.weight.grad.data_ptr())
    assert ptrs[0] == ptrs[1]


def test_normalized_entropy() -> None:
    """Entropy / log(k): uniform is 1 for any class count, so tasks compare fairly."""
    for k in (2, 5, 10):
        assert torch.allclose(normalized_entropy(torch.zeros(3, k)), torch.ones(3))
    z = torch.tensor([[2.0, 0.0, -1.0, 0.5]])
    p = torch.softmax(z / 2.0, 1)
    raw = -(p * p.log()).sum(1)
    assert torch.allclose(normalized_entropy(z, temperature=2.0), raw / math.log(4))
    assert torch.allclose(normalized_entropy(z, temperature=2.0, normalize=False), raw)
    assert normalized_entropy(torch.tensor([[3.0]])).item() == 0.0
    # A confident 10-class network has more raw entropy than an unsure 2-class one, less
    # normalised: normalising makes the confident one win task inference.
    confident = torch.tensor([[4.0] + [0.0] * 9])
    unsure = torch.tensor([[0.3, 0.0]])
    assert normalized_entropy(confident, normalize=False) > normalized_entropy(
        unsure, normalize=False
    )
    assert normalized_entropy(confident) < normalized_entropy(unsure)


@pytest.mark.parametrize("lookahead,step", [(False, "sgd"), (True, "sgd"), (True, "optimizer")])
def test_batched_regulariser_equals_per_task_sum(lookahead: bool, step: str) -> None:
    """One batched pass gives beta/(T-1) sum_t ||h(e_t, theta + dtheta) - target_t||^2, and
    the gradient of that sum (dtheta detached), as a plain loop over the old tasks does."""
    cfg = compose_cfg(
        [
            *DIGITS,
            "logger=none",
            "stream=permuted_digits",
            "stream.n_experiences=4",
            "model.hidden_sizes=[16]",
            "strategy.beta=0.5",
            f"strategy.lookahead={lookahead}",
            f"strategy.lookahead_step={step}",
        ]
    )
    b = build(cfg)
    s = b.strategy
    with torch.no_grad():  # pretend tasks 0-2 were learned, with targets away from h(e_t)
        s.learned = [0, 1, 2]
        s.targets = {t: s.generate([t])[0] + 0.1 * (t + 1) for t in s.learned}
    exp = b.stream[3]
    s.before_experience(exp)
    s.optimizer = s.build_optimizer(s.trainable_parameters())
    batch = Batch(exp.train.x[:16], exp.train.y[:16], exp.train.t[:16])
    logits = s.forward(batch.x, batch.task_ids)
    task_loss = s.loss(logits, batch)
    params = dict(s.hnet.named_parameters())
    theta = {n: p.clone() for n, p in params.items()}  # non-leaf: plain autograd
    if lookahead:  # the task loss was backpropagated: dtheta previewed from its gradients
        preview = optimizer_delta if step == "optimizer" else sgd_delta
        delta = preview(s.optimizer, list(params.values()), [p.grad for p in params.values()])
        assert all(d is not None for d in delta)
        theta = {n: p + d for (n, p), d in zip(params.items(), delta, strict=True)}  # type: ignore[operator]
    reg = s.extra_loss(batch, logits)
    assert reg is not None
    loop = sum(
        (torch.func.functional_call(s.hnet, theta, (s.embeddings[t].detach(),)) - s.targets[t])
        .pow(2)
        .sum()
        for t in (0, 1, 2)
    )
    assert torch.allclose(reg.detach(), 0.5 / 3 * loop.detach(), rtol=1e-5)
    want = torch.autograd.grad(0.5 / 3 * loop, list(params.values()))
    if not lookahead:  # the task loss's gradient first, as the look-ahead has it
        task_loss.backward(retain_graph=True)
    before = {n: p.grad.clone() if p.grad is not None else 0.0 for n, p in params.items()}
    reg.backward()  # the regulariser's gradient adds to it
    for (n, p), w in zip(params.items(), want, strict=True):
        assert p.grad is not None
        torch.testing.assert_close(p.grad - before[n], w, rtol=1e-4, atol=1e-5, msg=n)
    assert task_loss.requires_grad != lookahead  # with look-ahead, already backpropagated


# ------------------------------------------------------- Fashion-MNIST criteria (slower)
@pytest.fixture(scope="module")
def pfmnist(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    runs = {
        "hnet": [*PFMNIST, *HNET],
        "chunked": [*PFMNIST, *CHUNKED],
        "beta0": [*PFMNIST, *HNET, "strategy.beta=0"],
        "naive": [*PFMNIST, "strategy=naive"],
    }
    out = {}
    for name, ov in runs.items():
        d = tmp_path_factory.mktemp(name)
        out[name] = (*_run(d, *ov), d)
    return out


@needs_fmnist
def test_hnet_does_not_forget_permuted_fmnist(pfmnist: dict[str, Any]) -> None:
    _, rec, _ = pfmnist["hnet"]
    m = rec.metrics()
    print(
        f"hnet: avg_acc={m['avg_acc']:.4f} diag={_diag_mean(rec):.4f} "
        f"forgetting={m['forgetting']:.4f}"
    )
    assert m["forgetting"] <= 0.02
    assert abs(m["avg_acc"] - _diag_mean(rec)) <= 0.03
    assert m["avg_acc"] > 0.65  # it learned every task (10 classes: chance is 0.1)


@needs_fmnist
def test_compressive_chunked_hnet(pfmnist: dict[str, Any]) -> None:
    cfg, rec, d = pfmnist["chunked"]
    target = _restored(cfg, d).strategy.spec.numel
    m = rec.metrics()
    print(
        f"chunked: trainable={rec.budget.trainable_params} target={target} "
        f"avg_acc={m['avg_acc']:.4f} forgetting={m['forgetting']:.4f}"
    )
    assert rec.budget.trainable_params < 0.8 * target
    assert m["forgetting"] <= 0.03
    assert m["avg_acc"] > 0.6


@needs_fmnist
def test_beta_zero_forgets_like_naive(pfmnist: dict[str, Any]) -> None:
    f = {k: pfmnist[k][1].metrics()["forgetting"] for k in ("hnet", "beta0", "naive")}
    print("forgetting:", {k: round(v, 4) for k, v in f.items()})
    assert f["naive"] >= 0.08
    # Without the regulariser it forgets like naive (neither far less nor far more) ...
    assert 0.5 * f["naive"] <= f["beta0"] <= 1.5 * f["naive"]
    # ... and far more than with it.
    assert f["beta0"] >= f["hnet"] + 0.05 and f["beta0"] >= 4 * f["hnet"]


@needs_fmnist
def test_hnet_ent_beats_naive_without_task_ids(tmp_path: Path) -> None:
    cfg, rec = _run(tmp_path / "hnet", *SPLIT, *HNET, "strategy.beta=0.05")
    _, naive = _run(tmp_path / "naive", *SPLIT, "strategy=naive")
    built = _restored(cfg, tmp_path / "hnet")
    s, stream = built.strategy, built.stream
    ti = [s.task_inference_accuracy(e.test) for e in stream]
    all_test = TensorData.cat([e.test for e in stream])
    ti_all = s.task_inference_accuracy(all_test)
    hnet_acc, naive_acc = rec.metrics()["avg_acc"], naive.metrics()["avg_acc"]
    print(
        f"HNET+ENT avg_acc={hnet_acc:.4f} naive={naive_acc:.4f} task inference={ti_all:.4f} "
        f"per task={[round(a, 3) for a in ti]}"
    )
    assert hnet_acc > naive_acc + 0.05
    assert ti_all > 1 / len(stream) + 0.05  # better than guessing the task
    # Class-IL accuracy is bounded by task inference: a sample needs its task right first.
    assert all(a <= t + 1e-6 for a, t in zip(rec.acc_matrix[-1], ti, strict=True))


@pytest.mark.parametrize(
    "name",
    ["hnet_permuted_mnist10", "hnet_split_mnist", "hnet_permuted_fmnist", "hnet_split_fmnist"],
)
def test_experiment_configs_compose(name: str) -> None:
    from cl.config import to_dataclass
    from cl.strategies.hypernet import HypernetConfig

    cfg = compose_cfg(["logger=none", f"experiment={name}"])
    strat = to_dataclass(cfg.strategy, HypernetConfig, "strategy")
    assert strat.name == "hypernet" and cfg.stream.name.endswith("mnist")
    if name == "hnet_permuted_mnist10":
        assert cfg.stream.n_experiences == 10 and strat.chunk_size == 78000 and strat.lookahead


@needs_fmnist
def test_paper_config_smoke(tmp_path: Path) -> None:
    """The Split MNIST paper settings (chunked, look-ahead) run end to end, shrunk by debug=fast
    (on the offline Fashion-MNIST copy: MNIST itself needs a download)."""
    _, rec = _run(tmp_path, "experiment=hnet_split_mnist", "stream=split_fmnist", "debug=fast")
    assert rec.status == "complete"
    assert all(math.isfinite(e["final_loss"]) for e in rec.per_experience)
