"""Text-to-text task streams for language models: every example is (instruction, input) -> target.

Tensor layout (what :mod:`cl.models.lm` takes): ``TensorData.x`` is a LongTensor ``[N, 2, Lp +
Lt]``: row 0 holds the prompt ids left-padded to ``Lp`` followed by the target ids (ending with
the end-of-sequence token) right-padded to ``Lt``; row 1 a segment code per column (0 padding,
1 prompt, 2 target). ``y`` ``[N, Lt]`` holds the target ids with ``-100`` on padding, so the loss
runs on target tokens only. ``Lp`` and ``Lt`` are the same for every experience of a stream
(replay mixes experiences in one batch). The stream's ``n_classes`` is its tokenizer's
vocabulary size; its modality is ``text2text``.

Test splits are :class:`TextTaskData`, which also carry what each task's metric needs and an
``evaluate`` hook the evaluator calls: rank classification over the verbalised labels
(``rank``), greedy generation scored by exact match (``exact_match``) or ROUGE-L (``rouge_l``);
see :mod:`cl.evaluate_lm`.

Streams: ``text2text_offline`` (the offline classification corpora with verbalised labels),
``text2text_standard`` and ``text2text_long`` (the 4-task and 15-task standard CL sequences,
online through ``datasets``) and ``trace`` (TRACE, from a local copy); ``memorize`` is in
:mod:`cl.streams.memorize`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from cl.errors import ConfigError, DataNotFoundError, reason
from cl.streams import register_stream
from cl.streams.base import Experience, Stream, TensorData
from cl.validation import one_of, positive

METRICS = ("rank", "exact_match", "rouge_l", "token_accuracy")
IGNORE = -100


# ---------------------------------------------------------------- tokenizers
class ByteTokenizer:
    """UTF-8 bytes as tokens (ids 3..258) after padding (0), begin (1) and end (2) of sequence."""

    pad_id, bos_id, eos_id, offset = 0, 1, 2, 3
    vocab_size = 259
    chat_template = None

    def encode(self, text: str) -> list[int]:
        return [b + self.offset for b in text.encode("utf-8")]

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(i - self.offset for i in ids if i >= self.offset).decode(errors="replace")


class HFTokenizer:
    """A Hugging Face tokenizer with the ids the streams need."""

    def __init__(self, path: str) -> None:
        from transformers import AutoTokenizer

        try:
            self.tok = AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError) as e:
            raise DataNotFoundError(f"cannot load tokenizer {path!r}: {reason(e)}") from None
        t = self.tok
        self.eos_id = _first_id(t.eos_token_id, t.sep_token_id)
        self.bos_id = _first_id(t.bos_token_id, t.cls_token_id, self.eos_id)
        self.pad_id = _first_id(t.pad_token_id, self.eos_id)
        self.vocab_size = len(t)
        self.chat_template = getattr(t, "chat_template", None)

    def encode(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.tok.decode(list(ids), skip_special_tokens=True))

    def chat(self, prompt: str, answer: str | None = None) -> str:
        """The chat template's text of a user turn, with ``answer`` as the assistant's turn
        (None: the prompt for the assistant's turn)."""
        msgs = [{"role": "user", "content": prompt}]
        if answer is not None:
            msgs.append({"role": "assistant", "content": answer})
        text = self.tok.apply_chat_template(
            msgs, tokenize=False, add_generation_prompt=answer is None
        )
        return str(text)


def _first_id(*ids: int | None) -> int:
    for i in ids:
        if i is not None:
            return int(i)
    raise ConfigError("the tokenizer has no end-of-sequence, separator or padding token")


Tokenizer = ByteTokenizer | HFTokenizer


@functools.lru_cache(maxsize=4)
def make_tokenizer(spec: str) -> Tokenizer:
    """``byte``, ``minilm`` (the offline MiniLM tokenizer) or a tokenizer path / hub name."""
    if spec == "byte":
        return ByteTokenizer()
    if spec == "minilm":
        from cl.models.hf import default_text_model_path

        return HFTokenizer(default_text_model_path())
    return HFTokenizer(spec)


# ------------------------------------------------------------------- tasks
@dataclass
class TextTask:
    """One task before tokenization.

    Attributes:
        name: Task name.
        instruction: Instruction prepended to every input ("" for none).
        train: (input, target) pairs.
        test: (input, target) pairs.
        metric: ``rank``, ``exact_match`` or ``rouge_l``.
        choices: Verbalised labels (rank classification; every target is one of them).
    """

    name: str
    instruction: str
    train: list[tuple[str, str]]
    test: list[tuple[str, str]]
    metric: str = "exact_match"
    choices: list[str] | None = None


@dataclass
class TextTaskData(TensorData):
    """A test split of a text-to-text task, with what its metric needs.

    Attributes:
        metric: ``rank``, ``exact_match`` or ``rouge_l``.
        choices: Token ids of the verbalised labels ``[K, Lt]`` (``-100`` padding), for rank.
        gold: Index of each example's label in ``choices`` ``[N]``, for rank.
        max_new_tokens: Tokens generated per example (exact match, ROUGE-L).
        eos_id: End-of-sequence id.
        pad_id: Padding id.
        tokenizer: The tokenizer's spec (decodes text for ROUGE-L).
    """

    metric: str = "exact_match"
    choices: Tensor | None = None
    gold: Tensor | None = None
    max_new_tokens: int = 16
    eos_id: int = ByteTokenizer.eos_id
    pad_id: int = ByteTokenizer.pad_id
    tokenizer: str = "byte"

    def to(self, device: torch.device | str) -> TextTaskData:
        return replace(
            self,
            x=self.x.to(device),
            y=self.y.to(device),
            t=self.t.to(device),
            choices=None if self.choices is None else self.choices.to(device),
            gold=None if self.gold is None else self.gold.to(device),
        )

    def subset(self, idx: Tensor) -> TextTaskData:
        gold = None if self.gold is None else self.gold[idx]
        return replace(self, x=self.x[idx], y=self.y[idx], t=self.t[idx], gold=gold)

    def evaluate(self, strategy: Any, *, batch_size: int, task_aware: bool) -> float:
        """The task's metric for ``strategy`` (the evaluator's hook)."""
        from cl.evaluate_lm import score

        return score(strategy, self, batch_size=batch_size, task_aware=task_aware)


def format_prompt(instruction: str, text: str, choices: list[str] | None) -> tuple[str, str, str]:
    """(head, input, tail) of a prompt; only the input is truncated to fit."""
    head = f"{instruction}\n" if instruction else ""
    if choices:
        head += f"Options: {', '.join(choices)}.\n"
    return head, text, ("\nAnswer:" if instruction else "")


CHAT_TEMPLATES = ("auto", "none")
# The user turn the assistant's turn of a target is rendered after (chat templates).
_CHAT_PLACEHOLDER = "?"


@dataclass
class Encoder:
    """Tokenizes tasks to the packed layout with stream-wide widths.

    With ``chat_template="auto"`` and a tokenizer that has a chat template, the prompt
    (instruction and input) is the user turn and the target the assistant's turn: the prompt
    ids end with the template's cue for the assistant, the target ids are the rest of the
    rendered conversation up to its end-of-sequence token (the loss stays on those).
    """

    tok: Tokenizer
    max_prompt_len: int
    max_target_len: int
    chat_template: str = "none"

    @property
    def chat(self) -> HFTokenizer | None:
        """The tokenizer when prompts go through its chat template, else None."""
        tok = self.tok
        if self.chat_template == "auto" and tok.chat_template and isinstance(tok, HFTokenizer):
            return tok
        return None

    def prompt(self, task: TextTask, text: str) -> list[int]:
        head, body, tail = format_prompt(task.instruction, text, task.choices)
        # Inputs longer than any prompt are cut before tokenizing (a token spans >= 1 char).
        body = body[: 8 * self.max_prompt_len]
        chat = self.chat
        if chat is not None:
            return chat.encode(chat.chat(head + body + tail))[-self.max_prompt_len :]
        h, b, t = self.tok.encode(head), self.tok.encode(body), self.tok.encode(tail)
        room = max(self.max_prompt_len - 1 - len(h) - len(t), 0)
        return ([self.tok.bos_id, *h, *b[:room], *t])[-self.max_prompt_len :]

    def target(self, text: str) -> list[int]:
        eos = self.tok.eos_id
        chat = self.chat
        if chat is None:
            ids = self.tok.encode(text)
        else:
            cue = chat.chat(_CHAT_PLACEHOLDER)
            full = chat.chat(_CHAT_PLACEHOLDER, text)
            if not full.startswith(cue):
                raise ConfigError(
                    "the tokenizer's chat template does not render the assistant's turn after "
                    "its generation prompt; set stream.chat_template=none"
                )
            ids = chat.encode(full[len(cue) :])
            ids = ids[: ids.index(eos)] if eos in ids else ids
        return [*ids[: self.max_target_len - 1], eos]


def _pack(prompts: list[list[int]], targets: list[list[int]], lp: int, lt: int, pad: int) -> Tensor:
    x = torch.full((len(prompts), 2, lp + lt), pad, dtype=torch.long)
    x[:, 1] = 0
    for n, (p, t) in enumerate(zip(prompts, targets, strict=True)):
        x[n, 0, lp - len(p) : lp] = torch.tensor(p)
        x[n, 1, lp - len(p) : lp] = 1
        x[n, 0, lp : lp + len(t)] = torch.tensor(t)
        x[n, 1, lp : lp + len(t)] = 2
    return x


def _labels(targets: list[list[int]], lt: int) -> Tensor:
    y = torch.full((len(targets), lt), IGNORE, dtype=torch.long)
    for n, t in enumerate(targets):
        y[n, : len(t)] = torch.tensor(t)
    return y


def pack_examples(
    prompts: list[list[int]], targets: list[list[int]], width: int, pad: int
) -> tuple[Tensor, Tensor]:
    """Several examples per row (``stream.packing``): ``x [R, 3, width]``, ``y [R, width]``.

    Examples (prompt then target, unpadded) fill rows of ``width`` tokens first-fit in order.
    Row 2 of ``x`` numbers the examples of a row (1, 2, ...; 0 on padding): the model lets a
    token attend only to earlier tokens of its own example and restarts positions at each
    example, so every example is computed exactly as alone. ``y[r, p]`` is the label of the
    logits at position ``p``, the next token when it is a target token of the same example
    (``-100`` elsewhere), so the loss is the unpacked loss over the same target tokens.

    Raises:
        ConfigError: An example is longer than ``width`` (``stream.max_length``).
    """
    rows: list[list[tuple[list[int], list[int]]]] = []
    room: list[int] = []
    for p, t in zip(prompts, targets, strict=True):
        n = len(p) + len(t)
        if n > width:
            raise ConfigError(
                f"stream.max_length={width} is shorter than an example ({n} tokens); raise it "
                "or lower stream.max_prompt_len / stream.max_target_len"
            )
        r = next((i for i, free in enumerate(room) if free >= n), None)
        if r is None:
            rows.append([])
            room.append(width)
            r = len(rows) - 1
        rows[r].append((p, t))
        room[r] -= n
    x = torch.zeros((len(rows), 3, width), dtype=torch.long)
    x[:, 0] = pad
    y = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for r, examples in enumerate(rows):
        at = 0
        for k, (p, t) in enumerate(examples, start=1):
            n = len(p) + len(t)
            x[r, 0, at : at + n] = torch.tensor([*p, *t])
            x[r, 1, at : at + len(p)] = 1
            x[r, 1, at + len(p) : at + n] = 2
            x[r, 2, at : at + n] = k
            # Logits at the prompt's last token predict the first target token, and so on.
            y[r, at + len(p) - 1 : at + n - 1] = torch.tensor(t)
            at += n
    return x, y


def stream_from_config(cfg: Any, tasks: list[TextTask]) -> Stream:
    """:func:`build_text2text_stream` with a stream config's name, tokenizer, lengths,
    ``chat_template``, ``task_labels``, ``perplexity``, ``packing`` and ``max_length``."""
    return build_text2text_stream(
        cfg.name,
        tasks,
        tokenizer=cfg.tokenizer,
        max_prompt_len=cfg.max_prompt_len,
        max_target_len=cfg.max_target_len,
        max_new_tokens=cfg.max_new_tokens,
        chat_template=cfg.chat_template,
        task_labels=cfg.task_labels,
        perplexity=cfg.perplexity,
        packing=cfg.max_length if cfg.packing else None,
    )


Coded = tuple[list[list[int]], list[list[int]]]  # prompts and targets of one split


def build_text2text_stream(
    name: str,
    tasks: list[TextTask],
    *,
    tokenizer: str,
    max_prompt_len: int,
    max_target_len: int,
    max_new_tokens: int | None = None,
    chat_template: str = "none",
    task_labels: bool = False,
    perplexity: bool = False,
    packing: int | None = None,
    extra: dict[str, Any] | None = None,
) -> Stream:
    """A ``domain_il`` text2text stream of ``tasks`` (one experience each).

    Args:
        chat_template: ``auto`` (the tokenizer's chat template when it has one) or ``none``.
        perplexity: Also record the held-out perplexity matrix (``matrices.perplexity``).
        packing: Pack training examples into rows of this many tokens (None: one per row).
    """
    if not tasks:
        raise ConfigError("stream.tasks is empty")
    tok = make_tokenizer(tokenizer)
    enc = Encoder(tok, max_prompt_len, max_target_len, chat_template)
    coded: list[tuple[Coded, Coded, list[list[int]] | None]] = []
    for task in tasks:
        if task.metric not in METRICS:
            raise ValueError(f"unknown metric {task.metric!r}; valid: {', '.join(METRICS)}")
        train, test = (
            ([enc.prompt(task, a) for a, _ in rows], [enc.target(b) for _, b in rows])
            for rows in (task.train, task.test)
        )
        choices = None if task.choices is None else [enc.target(c) for c in task.choices]
        coded.append((train, test, choices))
    return assemble_stream(
        name,
        tasks,
        coded,
        tokenizer=tokenizer,
        max_new_tokens=max_new_tokens,
        task_labels=task_labels,
        perplexity=perplexity,
        packing=packing,
        extra=extra,
    )


def assemble_stream(
    name: str,
    tasks: list[TextTask],
    coded: Sequence[tuple[Coded, Coded, list[list[int]] | None]],
    *,
    tokenizer: str,
    max_new_tokens: int | None,
    task_labels: bool,
    perplexity: bool,
    packing: int | None,
    extra: dict[str, Any] | None = None,
) -> Stream:
    """The stream of tokenized tasks: (train, test, choices) ids per task, at shared widths."""
    tok = make_tokenizer(tokenizer)
    lp = max(len(p) for tr, te, _ in coded for p in tr[0] + te[0])
    lt = max(len(t) for tr, te, c in coded for t in tr[1] + te[1] + (c or []))
    exps = []
    for i, (task, ((tr_p, tr_t), (te_p, te_t), choices)) in enumerate(
        zip(tasks, coded, strict=True)
    ):
        if packing is not None:
            x, y = pack_examples(tr_p, tr_t, packing, tok.pad_id)
            train = TensorData(x, y, torch.full((len(y),), i))
        else:
            train = TensorData(
                _pack(tr_p, tr_t, lp, lt, tok.pad_id),
                _labels(tr_t, lt),
                torch.full((len(tr_t),), i),
            )
        gold = None
        if choices is not None:
            assert task.choices is not None
            gold = torch.tensor([task.choices.index(b) for _, b in task.test], dtype=torch.long)
        test = TextTaskData(
            _pack(te_p, te_t, lp, lt, tok.pad_id),
            _labels(te_t, lt),
            torch.full((len(te_t),), i),
            metric=task.metric,
            choices=None if choices is None else _labels(choices, lt),
            gold=gold,
            max_new_tokens=max_new_tokens or lt,
            eos_id=tok.eos_id,
            pad_id=tok.pad_id,
            tokenizer=tokenizer,
        )
        exps.append(Experience(index=i, task_id=i, classes=[], train=train, test=test))
    return Stream(
        name=name,
        scenario="domain_il",
        n_classes=tok.vocab_size,
        experiences=exps,
        modality="text2text",
        has_task_ids=task_labels,
        extra={
            **(extra or {}),
            "tokenizer": tokenizer,
            "tasks": [t.name for t in tasks],
            "task_metrics": [t.metric for t in tasks],
            "matrices": ["perplexity"] if perplexity else [],
            "packing": packing,
        },
    )


def check_run(stream: Stream, model: Any, train: Any, strategy_cls: Any) -> None:
    """Refuse settings that would be silent no-ops (or wrong) on a text-to-text stream.

    Raises:
        ConfigError: ``train.logit_mask`` is set (it masks class logits; these logits are over
            the vocabulary and the stream has no classes), or ``stream.packing`` is on for a
            model that cannot restrict attention to each packed example (seq2seq) or a strategy
            that does not declare ``packed_rows``.
    """
    if stream.modality != "text2text":
        return
    if train.logit_mask != "none":
        raise ConfigError(
            f"train.logit_mask={train.logit_mask} masks class logits; stream {stream.name!r} is "
            "text-to-text (logits over the vocabulary, no classes): leave it at none"
        )
    if stream.extra.get("packing") and getattr(model, "kind", None) != "causal":
        raise ConfigError(
            "stream.packing=true needs a causal LM (model=hf_causal_lm): a seq2seq model cannot "
            "keep packed examples apart exactly; set stream.packing=false"
        )
    if stream.extra.get("packing") and not strategy_cls.packed_rows:
        raise ConfigError(
            f"strategy {strategy_cls.name!r} does not train on packed rows (several examples "
            "per row); set stream.packing=false"
        )


# ------------------------------------------------- classification corpora
INSTRUCTIONS: dict[str, str] = {
    "bbc": "What is the topic of this news article?",
    "tweets": "What is the sentiment of this tweet?",
    "rotten_tomatoes": "Is this critic's review fresh or rotten?",
    "20ng": "Which newsgroup was this post written to?",
    "reuters": "What is the topic of this Reuters article?",
    "reuters52": "What is the topic of this Reuters article?",
    "ag_news": "What is the topic of this news article?",
    "dbpedia": "What is the category of this Wikipedia entity?",
    "yahoo": "What is the topic of this question and answer?",
    "yelp": "How many stars (1-5) does this restaurant review give?",
    "amazon": "How many stars (1-5) does this product review give?",
    "imdb": "Is this movie review negative or positive?",
    "sst2": "Is the sentiment of this sentence negative or positive?",
    "mnli": "Does the premise entail the hypothesis?",
    "qqp": "Are these two questions duplicates?",
    "rte": "Does the first sentence entail the second?",
    "wic": "Is the word used with the same meaning in both sentences?",
    "cb": "Does the premise entail the hypothesis?",
    "copa": "Which alternative is more plausible?",
    "multirc": "Is the answer to the question correct?",
    "boolq": "Is the answer to the question yes or no?",
}


def verbalise(label: str) -> str:
    """A class name as answer text (``not_entailment`` -> ``not entailment``)."""
    return label.replace("_", " ")


def classification_task(
    spec: str,
    *,
    k_shot: int | None,
    max_test_per_class: int | None,
    max_train: int | None,
    max_test: int | None,
    gen: torch.Generator,
    metric: str,
) -> TextTask:
    """A ``source`` or ``source:class,class`` classification task with verbalised labels."""
    from cl.streams.text import parse_task
    from cl.streams.text_sources import load_source

    source, names = parse_task(spec)
    tr_x, tr_y, te_x, te_y, classes = load_source(source)
    names = names or list(classes)
    unknown = sorted(set(names) - set(classes))
    if unknown:
        raise ConfigError(f"task {spec!r}: unknown classes {unknown}; {source} has {classes}")
    splits = []
    for xs, ys, k, cap in (
        (tr_x, tr_y, k_shot, max_train),
        (te_x, te_y, max_test_per_class, max_test),
    ):
        rows: list[int] = []
        for n in names:
            idx = [i for i, y in enumerate(ys) if y == n]
            rows += _pick(idx, k, gen)
        rows = sorted(_pick(rows, cap, gen))
        splits.append([(_flat(xs[i]), verbalise(ys[i])) for i in rows])
    instruction = INSTRUCTIONS.get(source, f"Classify this text ({source}).")
    return TextTask(
        name=spec,
        instruction=instruction,
        train=splits[0],
        test=splits[1],
        metric=metric,
        choices=[verbalise(n) for n in names] if metric == "rank" else None,
    )


def _pick(rows: list[int], k: int | None, gen: torch.Generator) -> list[int]:
    if k is None or k >= len(rows):
        return rows
    order = torch.randperm(len(rows), generator=gen)[:k].sort().values
    return [rows[int(i)] for i in order]


def _flat(text: str | tuple[str, ...]) -> str:
    return text if isinstance(text, str) else "\n".join(text)


@dataclass
class Text2TextConfig:
    """Text-to-text stream over classification corpora, labels verbalised.

    Attributes:
        name: Stream name.
        tasks: Task specs ``"source"`` or ``"source:class,class"`` (sources as in the text
            streams: ``bbc``, ``tweets``, ``rotten_tomatoes``, ``20ng``, ``reuters``, ...).
        tokenizer: ``byte`` (a byte-level tokenizer, for random models), ``minilm`` (the
            offline MiniLM tokenizer) or the model's tokenizer path / hub name.
        chat_template: ``auto``: the prompt is the user turn and the target the assistant's
            turn of the tokenizer's chat template, when it has one; ``none``: plain text.
        metric: ``rank`` (score each verbalised label by likelihood), ``exact_match`` or
            ``rouge_l`` (greedy generation), or ``token_accuracy`` (teacher-forced next-token
            accuracy on the target).
        max_prompt_len: Prompt tokens (the input is truncated; instruction and cue are kept).
        max_target_len: Target tokens, end-of-sequence included.
        max_new_tokens: Tokens generated per test example (null: the target width).
        k_shot: Training examples per class (null: all).
        max_test_per_class: Test examples per class (null: all).
        seed: Seed of the sampling.
        max_train_per_experience: Cap on an experience's training examples.
        max_test_per_experience: Cap on an experience's test examples.
        task_labels: Task ids available at test time.
        perplexity: Also record each task's held-out perplexity after each experience (the
            matrix ``matrices.perplexity`` of results.json).
        packing: Pack several training examples per row of ``max_length`` tokens (causal
            LMs; attention and positions restricted to each example, so the loss is the
            unpacked one); ``train.batch_size`` then counts rows.
        max_length: Tokens of a packed row.
    """

    name: str = "text2text_offline"
    tasks: list[str] = field(default_factory=lambda: ["bbc", "tweets", "rotten_tomatoes"])
    tokenizer: str = "byte"
    chat_template: str = "auto"
    metric: str = "rank"
    max_prompt_len: int = 128
    max_target_len: int = 16
    max_new_tokens: int | None = None
    k_shot: int | None = 16
    max_test_per_class: int | None = 20
    seed: int = 0
    max_train_per_experience: int | None = None
    max_test_per_experience: int | None = None
    task_labels: bool = False
    perplexity: bool = False
    packing: bool = False
    max_length: int = 512

    def validate(self) -> None:
        positive("stream", self, "max_prompt_len", "max_target_len", "max_new_tokens")
        positive("stream", self, "k_shot", "max_test_per_class", "max_length")
        positive("stream", self, "max_train_per_experience", "max_test_per_experience")
        one_of("stream", self, "metric", METRICS)
        one_of("stream", self, "chat_template", CHAT_TEMPLATES)
        if self.max_new_tokens is not None and self.metric in ("rank", "token_accuracy"):
            raise ConfigError(
                f"stream.max_new_tokens applies to generation (metric exact_match or rouge_l); "
                f"stream.metric={self.metric} generates nothing: leave it null"
            )
        if self.max_prompt_len < 8:
            raise ConfigError(f"stream.max_prompt_len must be >= 8, got {self.max_prompt_len}")


def build_classification_stream(cfg: Text2TextConfig) -> Stream:
    gen = torch.Generator().manual_seed(cfg.seed)
    tasks = [
        classification_task(
            spec,
            k_shot=cfg.k_shot,
            max_test_per_class=cfg.max_test_per_class,
            max_train=cfg.max_train_per_experience,
            max_test=cfg.max_test_per_experience,
            gen=gen,
            metric=cfg.metric,
        )
        for spec in cfg.tasks
    ]
    return stream_from_config(cfg, tasks)


@register_stream("text2text_offline", Text2TextConfig)
def text2text_offline(cfg: Text2TextConfig) -> Stream:
    return build_classification_stream(cfg)


@dataclass
class Text2TextStandardConfig(Text2TextConfig):
    """The 4-task standard CL sequence (order 1 of Qin & Joty 2022 / O-LoRA), online."""

    name: str = "text2text_standard"
    tasks: list[str] = field(default_factory=lambda: ["dbpedia", "amazon", "yahoo", "ag_news"])
    max_prompt_len: int = 256


@dataclass
class Text2TextLongConfig(Text2TextConfig):
    """The 15-task long sequence (order 4 of Razdaibiedina et al. 2023), online."""

    name: str = "text2text_long"
    tasks: list[str] = field(default_factory=lambda: list(_long_order()))
    max_prompt_len: int = 256


def _long_order() -> list[str]:
    from cl.streams.text import LONG_STANDARD_ORDERS

    return LONG_STANDARD_ORDERS[4]


@register_stream("text2text_standard", Text2TextStandardConfig)
def text2text_standard(cfg: Text2TextStandardConfig) -> Stream:
    return build_classification_stream(cfg)


@register_stream("text2text_long", Text2TextLongConfig)
def text2text_long(cfg: Text2TextLongConfig) -> Stream:
    return build_classification_stream(cfg)
