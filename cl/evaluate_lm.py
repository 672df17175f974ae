"""Metrics of text-to-text tasks, each a number in [0, 1] for the accuracy matrix R[i][j].

- ``rank``: rank classification. Every verbalised label is scored by its log-likelihood given
  the prompt (the sum over its tokens, end-of-sequence included) through the strategy's
  ``predict``; the prediction is the best label. Rows are scored independently at fixed
  widths, so the result does not depend on the evaluation batch size.
- ``exact_match``: greedy generation (batched, KV cache, left-padded prompts) must reproduce
  the target tokens and then stop.
- ``rouge_l``: ROUGE-L F1 (Lin, 2004) between the generated and the target text, over
  lower-cased word tokens, averaged over examples.
- ``token_accuracy``: teacher-forced next-token accuracy over all target tokens (continual
  pre-training streams, where the whole chunk is the target).

The extra matrix ``perplexity`` (:func:`perplexity`, the streams' ``stream.perplexity``) is
exp of the teacher-forced mean negative log-likelihood per target token of a task's test set.

Generation goes through ``strategy.generate(ids, mask, ...)`` when a strategy defines it (a
prompt or adapter strategy that changes the model's inputs), else through the model's
``generate_ids``.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from cl.streams.text2text import TextTaskData


def score(strategy: Any, data: TextTaskData, *, batch_size: int, task_aware: bool) -> float:
    """The metric ``data.metric`` of ``strategy`` on the test split ``data``."""
    if data.metric == "rank":
        return rank_accuracy(strategy, data, batch_size=batch_size, task_aware=task_aware)
    if data.metric == "token_accuracy":
        return token_stats(strategy, data, batch_size=batch_size, task_aware=task_aware)[1]
    preds = generate(strategy, data, batch_size=batch_size, task_aware=task_aware)
    targets = [_until_eos(row[row != -100].tolist(), data.eos_id) for row in data.y]
    if data.metric == "exact_match":
        hits = sum(p == t for p, t in zip(preds, targets, strict=True))
        return hits / max(len(targets), 1)
    from cl.streams.text2text import make_tokenizer

    tok = make_tokenizer(data.tokenizer)
    scores = [rouge_l(tok.decode(p), tok.decode(t)) for p, t in zip(preds, targets, strict=True)]
    return sum(scores) / max(len(scores), 1)


def _until_eos(ids: list[int], eos: int) -> list[int]:
    return ids[: ids.index(eos)] if eos in ids else ids


def prompt_width(data: TextTaskData) -> int:
    return data.x.shape[-1] - data.y.shape[-1]


@torch.inference_mode()
def rank_accuracy(strategy: Any, data: TextTaskData, *, batch_size: int, task_aware: bool) -> float:
    """Fraction of examples whose gold label has the highest log-likelihood."""
    assert data.choices is not None and data.gold is not None, "rank needs choices and gold"
    choices = data.choices
    k, _lt = choices.shape
    lp = prompt_width(data)
    valid = choices != -100
    tgt_ids = choices.masked_fill(~valid, data.pad_id)
    tgt_code = valid.long() * 2
    per = max(1, batch_size // k)  # examples per batch: batch_size sequences
    correct = torch.zeros((), dtype=torch.long, device=data.x.device)
    for s in range(0, len(data), per):
        prompt = data.x[s : s + per, :, :lp]
        b = len(prompt)
        rows = prompt.repeat_interleave(k, dim=0)
        tgt = torch.stack([tgt_ids, tgt_code], dim=1).repeat(b, 1, 1)
        x = torch.cat([rows, tgt], dim=2)
        t = data.t[s : s + per].repeat_interleave(k) if task_aware else None
        with strategy.autocast(evaluation=True):
            logits = strategy.predict(x, t)
        logp = logits.float().log_softmax(dim=1)
        ll = logp.gather(1, tgt_ids.repeat(b, 1)[:, None]).squeeze(1)
        ll = (ll * valid.repeat(b, 1)).sum(dim=1).view(b, k)
        correct += (ll.argmax(dim=1) == data.gold[s : s + per]).sum()
    return int(correct) / max(len(data), 1)


@torch.inference_mode()
def token_stats(
    strategy: Any, data: TextTaskData, *, batch_size: int, task_aware: bool
) -> tuple[float, float]:
    """(mean negative log-likelihood, next-token accuracy) over every target token of
    ``data``, teacher-forced (rows scored independently: batch-size invariant)."""
    nll = torch.zeros((), dtype=torch.float64, device=data.x.device)
    hits = torch.zeros((), dtype=torch.long, device=data.x.device)
    count = 0
    for s in range(0, len(data), batch_size):
        x, y = data.x[s : s + batch_size], data.y[s : s + batch_size]
        t = data.t[s : s + batch_size] if task_aware else None
        with strategy.autocast(evaluation=True):
            logits = strategy.predict(x, t)
        logp = logits.float().log_softmax(dim=1)
        valid = y != -100
        ll = logp.gather(1, y.clamp(min=0)[:, None]).squeeze(1)
        nll -= ll[valid].double().sum()
        hits += (logits.argmax(dim=1) == y)[valid].sum()
        count += int(valid.sum())
    n = max(count, 1)
    return float(nll) / n, int(hits) / n


def perplexity(strategy: Any, data: TextTaskData, *, batch_size: int, task_aware: bool) -> float:
    """exp(mean negative log-likelihood per target token) of ``strategy`` on ``data``."""
    return math.exp(token_stats(strategy, data, batch_size=batch_size, task_aware=task_aware)[0])


def extra_rows(strategy: Any, stream: Any, *, batch_size: int) -> dict[str, list[float]]:
    """The stream's extra matrices' rows (``stream.extra["matrices"]``, e.g. perplexity) on
    every experience, under the protocol of the primary matrix."""
    names = list(stream.extra.get("matrices") or [])
    if not names:
        return {}
    from cl.evaluate import protocol

    aware = protocol(strategy, stream.scenario) == "task_aware"
    strategy.model.eval()
    fns = {"perplexity": perplexity}
    return {
        name: [
            fns[name](strategy, e.test, batch_size=batch_size, task_aware=aware)
            for e in stream.experiences
        ]
        for name in names
    }


@torch.inference_mode()
def generate(
    strategy: Any, data: TextTaskData, *, batch_size: int, task_aware: bool
) -> list[list[int]]:
    """Greedy continuations of every prompt, cut at the end-of-sequence token."""
    lp = prompt_width(data)
    gen = getattr(strategy, "generate", None) or strategy.model.generate_ids
    out: list[list[int]] = []
    for s in range(0, len(data), batch_size):
        ids = data.x[s : s + batch_size, 0, :lp]
        mask = data.x[s : s + batch_size, 1, :lp] == 1
        kw: dict[str, Any] = dict(
            max_new_tokens=data.max_new_tokens, eos_id=data.eos_id, pad_id=data.pad_id
        )
        if task_aware:
            kw["task_ids"] = data.t[s : s + batch_size]
        with strategy.autocast(evaluation=True):
            new: Tensor = gen(ids, mask, **kw)
        out += [_until_eos(row.tolist(), data.eos_id) for row in new]
    return out


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 of two texts over lower-cased word tokens (1.0 when both are empty)."""
    p, r = _words(prediction), _words(reference)
    if not p or not r:
        return float(p == r)
    prev = [0] * (len(r) + 1)
    for a in p:  # longest common subsequence, one row at a time
        cur = [0]
        for j, b in enumerate(r):
            cur.append(prev[j] + 1 if a == b else max(prev[j + 1], cur[j]))
        prev = cur
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    prec, rec = lcs / len(p), lcs / len(r)
    return 2 * prec * rec / (prec + rec)
