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

METRICS = ("rank", "exact_match", "rouge_l")
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

    def chat(self, prompt: str) -> str:
        msgs = [{"role": "user", "content": prompt}]
        return str(self.tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True))


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


@dataclass
class Encoder:
    """Tokenizes tasks to the packed layout with stream-wide widths."""

    tok: Tokenizer
    max_prompt_len: int
    max_target_len: int
    chat_template: bool = False

    def prompt(self, task: TextTask, text: str) -> list[int]:
        head, body, tail = format_prompt(task.instruction, text, task.choices)
        if self.chat_template and self.tok.chat_template and isinstance(self.tok, HFTokenizer):
            ids = self.tok.encode(self.tok.chat(head + body + tail))
            return ids[-self.max_prompt_len :]
        # Inputs longer than any prompt are cut before tokenizing (a token spans >= 1 char).
        body = body[: 8 * self.max_prompt_len]
        h, b, t = self.tok.encode(head), self.tok.encode(body), self.tok.encode(tail)
        room = max(self.max_prompt_len - 1 - len(h) - len(t), 0)
        return ([self.tok.bos_id, *h, *b[:room], *t])[-self.max_prompt_len :]

    def target(self, text: str) -> list[int]:
        return [*self.tok.encode(text)[: self.max_target_len - 1], self.tok.eos_id]


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


def stream_from_config(cfg: Any, tasks: list[TextTask]) -> Stream:
    """:func:`build_text2text_stream` with a stream config's name, tokenizer, lengths,
    ``chat_template`` and ``task_labels``."""
    return build_text2text_stream(
        cfg.name,
        tasks,
        tokenizer=cfg.tokenizer,
        max_prompt_len=cfg.max_prompt_len,
        max_target_len=cfg.max_target_len,
        max_new_tokens=cfg.max_new_tokens,
        chat_template=cfg.chat_template,
        task_labels=cfg.task_labels,
    )


def build_text2text_stream(
    name: str,
    tasks: list[TextTask],
    *,
    tokenizer: str,
    max_prompt_len: int,
    max_target_len: int,
    max_new_tokens: int | None = None,
    chat_template: bool = False,
    task_labels: bool = False,
    extra: dict[str, Any] | None = None,
) -> Stream:
    """A ``domain_il`` text2text stream of ``tasks`` (one experience each)."""
    if not tasks:
        raise ConfigError("stream.tasks is empty")
    tok = make_tokenizer(tokenizer)
    enc = Encoder(tok, max_prompt_len, max_target_len, chat_template)
    coded = []
    for task in tasks:
        if task.metric not in METRICS:
            raise ValueError(f"unknown metric {task.metric!r}; valid: {', '.join(METRICS)}")
        splits = [
            ([enc.prompt(task, a) for a, _ in rows], [enc.target(b) for _, b in rows])
            for rows in (task.train, task.test)
        ]
        choices = None if task.choices is None else [enc.target(c) for c in task.choices]
        coded.append((splits, choices))
    all_p = [p for (s, _) in coded for split in s for p in split[0]]
    all_t = [t for (s, c) in coded for split in s for t in split[1]] + [
        t for (_, c) in coded for t in c or []
    ]
    lp, lt = max(map(len, all_p)), max(map(len, all_t))
    exps = []
    for i, (task, ((tr_p, tr_t), (te_p, te_t)), choices) in enumerate(
        (t, s, c) for t, (s, c) in zip(tasks, coded, strict=True)
    ):
        train = TensorData(
            _pack(tr_p, tr_t, lp, lt, tok.pad_id), _labels(tr_t, lt), torch.full((len(tr_t),), i)
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
        },
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
        chat_template: Wrap prompts in the tokenizer's chat template when it has one.
        metric: ``rank`` (score each verbalised label by likelihood), ``exact_match`` or
            ``rouge_l`` (greedy generation).
        max_prompt_len: Prompt tokens (the input is truncated; instruction and cue are kept).
        max_target_len: Target tokens, end-of-sequence included.
        max_new_tokens: Tokens generated per test example (null: the target width).
        k_shot: Training examples per class (null: all).
        max_test_per_class: Test examples per class (null: all).
        seed: Seed of the sampling.
        max_train_per_experience: Cap on an experience's training examples.
        max_test_per_experience: Cap on an experience's test examples.
        task_labels: Task ids available at test time.
    """

    name: str = "text2text_offline"
    tasks: list[str] = field(default_factory=lambda: ["bbc", "tweets", "rotten_tomatoes"])
    tokenizer: str = "byte"
    chat_template: bool = False
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

    def validate(self) -> None:
        positive("stream", self, "max_prompt_len", "max_target_len", "max_new_tokens")
        positive("stream", self, "k_shot", "max_test_per_class")
        positive("stream", self, "max_train_per_experience", "max_test_per_experience")
        one_of("stream", self, "metric", METRICS)
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
