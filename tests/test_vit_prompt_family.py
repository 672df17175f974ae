"""DualPrompt and CODA-Prompt on a tiny ViT: the backbone stays bit-identical, the ledger is
the formula of their prompts, each task trains only its own E-prompt / components (earlier
components frozen, new ones orthogonal to them), and the paper configs compose offline with
their reference's values."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cl.config import build
from cl.testing import compose, setup_overrides

CONF = Path(__file__).resolve().parents[1] / "conf" / "experiment"


@pytest.fixture(scope="module")
def trained() -> dict[str, object]:
    out = {}
    for name in ("dualprompt", "coda_prompt"):
        built = build(compose(setup_overrides(name)))
        init_backbone = {k: v.clone() for k, v in built.model.backbone.state_dict().items()}
        init_prompts = {k: v.detach().clone() for k, v in built.strategy.prompts.items()}
        stats = [built.strategy.train_experience(e) for e in list(built.stream)[:2]]
        out[name] = (built, init_backbone, init_prompts, stats)
    return out


def test_backbone_bit_identical_and_ledger_formulas(trained):
    d, c = 32, 10  # tiny ViT width, split_digits classes
    head = d * c + c
    # DualPrompt: G (1 layer, key+value, 2 tokens), E (1 layer, pool 10, key+value, 3), keys.
    dual = 1 * 2 * 2 * d + 1 * 10 * 2 * 3 * d + 10 * d
    # CODA: 2 layers x 6 components x (prompt 4 tokens + key + attention vector).
    coda = 2 * 6 * (4 * d + d + d)
    for name, n in (("dualprompt", dual), ("coda_prompt", coda)):
        built, init, _, stats = trained[name]
        state = built.model.backbone.state_dict()
        assert all(torch.equal(state[k], init[k]) for k in init), name
        assert built.strategy.extra_state_bytes() == 4 * n, name
        assert stats[-1].trainable_params == n + head, name


def test_dualprompt_trains_only_the_task_e_prompt_and_its_key(trained):
    built, _, init, _ = trained["dualprompt"]
    p = built.strategy.prompts
    changed = [not torch.equal(p["e"][:, i], init["e"][:, i]) for i in range(10)]
    assert changed == [True, True] + [False] * 8  # tasks 0 and 1 trained their own
    assert not torch.equal(p["key"][:2], init["key"][:2])
    assert torch.equal(p["key"][2:], init["key"][2:])
    assert not torch.equal(p["g"], init["g"])
    # Selection at test time is the nearest key (cosine), per sample.
    q = torch.randn(5, 32)
    idx, cos = built.strategy.select(q)
    assert torch.equal(idx, cos.argmax(1))


def test_coda_freezes_old_components_and_inits_new_ones_orthogonal(trained):
    from cl.strategies.coda_prompt import ortho_penalty

    built, _, init, _ = trained["coda_prompt"]
    strat = built.strategy
    assert strat.per_task == 2
    after = {k: v.detach() for k, v in strat.prompts.items()}
    # Task 1 trained: task 0's components (0, 1) were used frozen and did not move.
    snapshot = build(compose(setup_overrides("coda_prompt")))
    snapshot.strategy.train_experience(snapshot.stream[0])
    for k in ("p", "k", "a"):
        assert torch.equal(after[k][:, :2], snapshot.strategy.prompts[k].detach()[:, :2]), k
        assert not torch.equal(after[k][:, 2:4], init[k][:, 2:4]), k
        assert torch.equal(after[k][:, 4:], torch.zeros_like(after[k][:, 4:])), k  # unused
    # Before training task 2, its new components are unit vectors orthogonal to all earlier.
    strat.before_experience(built.stream[2])
    for k in ("p", "k", "a"):
        x = strat.prompts[k].detach()[0, :6].double()
        assert torch.allclose(x[4:] @ x[:4].T, torch.zeros(2, 4, dtype=x.dtype), atol=1e-5)
        assert torch.allclose(x[4:].norm(dim=1), torch.ones(2, dtype=x.dtype), atol=1e-5)
    assert float(ortho_penalty(torch.eye(3))) == 0.0


@pytest.mark.parametrize(
    ("experiment", "reference", "values"),
    [
        (
            "dualprompt_split_cifar100",
            ["arXiv:2204.04799", "JH-LEE-KR/dualprompt-pytorch", "967178e2", "86.51", "5.16"],
            {
                "strategy.g_prompt_layers": [0, 1],
                "strategy.e_prompt_layers": [2, 3, 4],
                "strategy.g_prompt_length": 5,
                "strategy.e_prompt_length": 5,
                "strategy.pool_size": 10,
                "strategy.style": "prefix",
                "strategy.pull_lambda": 1.0,
                "train.batch_size": 24,
                "train.epochs": 5,
                "train.lr": 0.03 * 24 / 256,
                "train.grad_clip": 1.0,
            },
        ),
        (
            "coda_prompt_split_cifar100",
            ["arXiv:2211.13218", "GT-RIPL/CODA-Prompt", "22948d28", "86.25"],
            {
                "strategy.pool_size": 100,
                "strategy.prompt_length": 8,
                "strategy.ortho_mu": 0.1,
                "strategy.layers": [0, 1, 2, 3, 4],
                "train.lr": 0.001,
                "train.lr_schedule": "cosine",
                "train.epochs": 20,
                "train.batch_size": 128,
            },
        ),
        ("simplecil_split_cifar100", ["arXiv:2303.07338", "LAMDA-PILOT"], {}),
        (
            "ranpac_split_cifar100",
            ["arXiv:2307.02251", "RanPAC/RanPAC", "cifar224_publish.csv"],
            {"strategy.projection_dim": 10000, "strategy.ridge": None},
        ),
    ],
)
def test_experiment_configs_compose_offline_and_name_their_reference(experiment, reference, values):
    from omegaconf import OmegaConf

    cfg = compose(["logger=none", f"experiment={experiment}"])
    text = (CONF / f"{experiment}.yaml").read_text()
    for ref in reference:
        assert ref in text, (experiment, ref)
    assert cfg.stream.name == "split_cifar100" and cfg.stream.n_experiences == 10
    assert cfg.stream.class_order_numpy_seed == 1993
    assert cfg.model.arch.startswith("vit_base_patch16_224")
    for key, want in values.items():
        got = OmegaConf.select(cfg, key)
        got = OmegaConf.to_container(got) if OmegaConf.is_config(got) else got
        assert got == pytest.approx(want) if isinstance(want, float) else got == want, key


def test_pycil_class_order_of_cifar100():
    from cl.streams.cifar import numpy_class_order

    order = numpy_class_order(1993, 100)
    # The order PyCIL/PILOT/RanPAC log for CIFAR-100 with seed 1993 begins so.
    assert order[:10] == [68, 56, 78, 8, 23, 84, 90, 65, 74, 76]
    assert sorted(order) == list(range(100))
