"""The ``adapters`` strategy on a tiny causal LM (AdapterSwap's setting) on the memorisation
stream: per-partition LoRA adapters with oracle routing forget nothing, the retriever routes
queries to their partition, a denied principal and a deletion see exactly a model never trained
on the partition (logits and generated text), ``cl-adapters delete`` purges checkpoints and
exports, exported adapters load with plain peft, and next-token mixtures are exact (also on a
tiny T5)."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import PeftModel

from cl.adapter_lm import adapted_hf, mixed_generate
from cl.adapter_purge import main as purge_main
from cl.config import build
from cl.evaluate_lm import generate
from cl.metrics import forgetting
from cl.models.lm import split_prompt
from cl.run import run_experiment
from cl.testing import compose, lm_setup_overrides

# LoRA on a 1-layer random Llama memorises 8 random 4-character values in 60 full-batch steps.
LM_SWAP = lm_setup_overrides(
    "adapters",
    "stream.n_experiences=2",
    "stream.task_labels=true",
    "train.epochs=60",
    "train.batch_size=8",
    "train.lr=0.02",
    "strategy.router=knn",
)
# The run on disk: exp1 restricted to alice (the evaluator predicts for the unrestricted owner).
ORACLE = (
    *LM_SWAP,
    "strategy.routing=oracle",
    "allow_task_oracle=true",
    "+strategy.access.exp1=[alice]",
)


def restored(path):
    """A strategy built from the run's config with the checkpoint ``path`` loaded."""
    b = build(compose(list(ORACLE)))
    b.strategy.load_state_dict(torch.load(path, weights_only=False)["strategy"])
    b.strategy.model.eval()
    return b


@pytest.fixture(scope="module")
def oracle_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("oracle")
    return run, run_experiment(compose(list(ORACLE)), run)


@pytest.fixture(scope="module")
def trained(oracle_run):
    """The run's final strategy: both partitions, exp1 restricted to alice."""
    return restored(oracle_run[0] / "checkpoints" / "last.pt")


@pytest.fixture(scope="module")
def never():
    """The same setup trained on exp0 only: never trained on exp1."""
    b = build(compose(list(ORACLE)))
    b.strategy.train_experience(b.stream[0])
    b.strategy.model.eval()
    return b


@torch.inference_mode()
def logits(strategy, stream, principal=None, task_ids=True):
    return [
        strategy.predict_for(e.test.x, principal, e.test.t if task_ids else None) for e in stream
    ]


@torch.inference_mode()
def texts(strategy, stream, principal=None):
    strategy.config.principal = principal
    try:
        return [generate(strategy, e.test, batch_size=64, task_aware=False) for e in stream]
    finally:
        strategy.config.principal = None


def all_equal(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_oracle_routing_forgets_nothing(oracle_run):
    _, rec = oracle_run
    r = rec.acc_matrix
    assert rec.metrics()["forgetting"] == 0.0 == forgetting(r)
    assert r[1][0] == r[0][0] and min(r[0][0], r[1][1]) >= 0.9, r


def test_retriever_routes_queries_to_their_partition(trained, capsys):
    acc = trained.strategy.routing_accuracy(list(trained.stream), ks=(1,))
    with capsys.disabled():
        print(f"\nLM adapters knn routing top-1 accuracy: {acc[1]:.4f}")
    assert acc[1] >= 0.9
    s, stream = trained.strategy, trained.stream
    em = [sum(p == t[:4] for p, t in zip(g, e.test.y.tolist(), strict=True)) / len(g)
          for g, e in zip(texts(s, stream), stream, strict=True)]  # fmt: skip
    assert min(em) >= 0.9, em  # routed generation answers every partition's keys


def test_denied_principal_and_deletion_equal_a_model_never_trained(trained, never):
    s, stream = trained.strategy, trained.stream
    ref = logits(never.strategy, stream)
    assert not all_equal(logits(s, stream), ref)  # exp1 matters to its owner
    for task_ids in (True, False):
        assert all_equal(
            logits(s, stream, "bob", task_ids), logits(never.strategy, stream, None, task_ids)
        )
    assert texts(s, stream, "bob") == texts(never.strategy, stream)
    assert texts(s, stream, "alice") == texts(s, stream) != texts(never.strategy, stream)
    gone = copy.deepcopy(s)
    gone.delete("exp1")
    assert all_equal(logits(gone, stream), ref)
    assert texts(gone, stream) == texts(never.strategy, stream)
    # Training exp1 changed nothing of exp0's adapter.
    assert all_equal(
        gone.bank.adapter_state().values(), never.strategy.bank.adapter_state().values()
    )


def test_mixture_of_next_token_distributions(trained):
    s, data = trained.strategy, trained.stream[0].test
    x = data.x[:4]
    ids, mask = split_prompt(x)
    kw = dict(max_new_tokens=data.max_new_tokens, eos_id=data.eos_id, pad_id=data.pad_id)
    rows = torch.arange(len(x))
    with torch.inference_mode():
        alone = s.model.generate_ids(ids, mask, hf=adapted_hf(s.bank, "exp0"), **kw)
        one = [(lambda: adapted_hf(s.bank, "exp0"), rows, torch.ones(len(x)))]
        two = [
            (lambda n=n: adapted_hf(s.bank, n), rows, torch.full((len(x),), 0.5))
            for n in ("exp0", "exp0")
        ]
        assert torch.equal(mixed_generate(s.model, one, ids, mask, **kw), alone)  # KV cache
        assert torch.equal(mixed_generate(s.model, two, ids, mask, **kw), alone)
        s.config.top_k = 2
        try:
            mixed = s.predict_for(x, None)
        finally:
            s.config.top_k = 1
        p = [torch.softmax(s.adapter_logits(n, x), dim=1) for n in ("exp0", "exp1")]
    # Every target position: log sum_k w_k p_k(token), the router's weights on its top 2.
    idx, w = s.router.route(s.frozen_features(x), ["exp0", "exp1"], 2)
    w = w.float()
    assert torch.allclose(w.sum(dim=1), torch.ones(len(x))) and (w[:, 1] > 0).all()
    expected = sum(w[:, k, None, None] * torch.stack(p)[idx[:, k], rows] for k in range(2))
    assert torch.allclose(mixed, expected.log(), atol=1e-5)
    assert torch.allclose(mixed.logsumexp(dim=1), torch.zeros(()), atol=1e-5)


def test_exports_load_with_plain_peft_and_cl_adapters_delete_purges_them(
    oracle_run, never, tmp_path
):
    run, _ = oracle_run
    live = restored(run / "checkpoints" / "last.pt")
    s, stream = live.strategy, live.stream
    paths = s.export(run / "exports")
    x = stream[1].test.x
    plain = PeftModel.from_pretrained(copy.deepcopy(s.model.hf), str(paths[1]), adapter_name="exp1")
    with torch.inference_mode():
        assert torch.equal(s.model(x, hf=plain), s.adapter_logits("exp1", x))
    merged = s.merged_model("exp1", run / "merged1")
    with torch.inference_mode():
        assert torch.allclose(merged(x), s.adapter_logits("exp1", x), atol=1e-5)
    assert purge_main(["delete", str(run), "exp1"]) == 0
    assert not (run / "exports" / "exp1").exists() and not (run / "merged1").exists()
    assert (run / "exports" / "exp0").exists()
    purged = restored(run / "checkpoints" / "last.pt")
    assert list(purged.strategy.meta) == ["exp0"]
    assert all_equal(logits(purged.strategy, stream), logits(never.strategy, stream))
    assert texts(purged.strategy, stream) == texts(never.strategy, stream)


def test_seq2seq_adapters_decode_with_their_cache_and_mix():
    b = build(compose([*LM_SWAP, "model=hf_seq2seq", "train.epochs=2", "strategy.top_k=2"]))
    s = b.strategy
    for e in b.stream:
        s.train_experience(e)
    s.model.eval()
    data = b.stream[0].test
    ids, mask = split_prompt(data.x)
    kw = dict(max_new_tokens=data.max_new_tokens, eos_id=data.eos_id, pad_id=data.pad_id)
    rows = torch.arange(len(ids))
    with torch.inference_mode():
        alone = s.model.generate_ids(ids, mask, hf=adapted_hf(s.bank, "exp1"), **kw)
        one = [(lambda: adapted_hf(s.bank, "exp1"), rows, torch.ones(len(ids)))]
        assert torch.equal(mixed_generate(s.model, one, ids, mask, **kw), alone)
        mixed = s.predict_for(data.x, None)  # top-2 next-token mixtures
    assert torch.allclose(mixed.logsumexp(dim=1), torch.zeros(()), atol=1e-5)
    assert s.routing_accuracy(list(b.stream), ks=(1,))[1] >= 0.9
    assert len(generate(s, data, batch_size=64, task_aware=False)) == len(data)
