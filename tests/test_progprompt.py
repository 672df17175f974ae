"""Progressive Prompts: a task reads exactly its prompts up to itself, so with a frozen backbone
old tasks' predictions never change; the input grows by one prompt per task."""

from __future__ import annotations

import torch

from tests.test_qtuning import tiny_setup


def test_old_task_logits_unchanged_and_prompts_grow():
    strat, exps = tiny_setup(4, "progprompt", prompt_length=3, mlp_bottleneck=8)
    init = {k: v.clone() for k, v in strat.backbone.state_dict().items()}
    x0, t0 = exps[0].test.x, exps[0].test.t
    ref = None
    for i, e in enumerate(exps):
        stats = strat.train_experience(e)
        # New prompt + its MLP + the head: old prompts are frozen, not trained.
        assert stats.trainable_params == 3 * 32 + (32 * 8 + 8 + 8 * 32 + 32) + 32 * 8 + 8
        assert strat.extra_state_bytes() == 4 * (i + 1) * 3 * 32
        assert len(strat.prompts_for(i, training=False)) == 3 * (i + 1)
        strat.model.eval()
        with torch.inference_mode():
            out = strat.predict(x0, t0)[:, :2]  # task 0's classes
        if ref is None:
            ref = out
        assert torch.equal(out, ref)  # task 0 unaffected by later tasks, bit for bit
    assert all(torch.equal(v, init[k]) for k, v in strat.backbone.state_dict().items())
    # The task being trained reads its new prompt first, then all frozen ones (newest first).
    strat.before_experience(exps[3])  # (a repeated task: a fifth prompt in front)
    seq = strat.prompts_for(3, training=True)
    assert len(seq) == 15 and torch.equal(seq[3:6], strat.prompts[3])
    assert torch.equal(seq[-3:], strat.prompts[0])
