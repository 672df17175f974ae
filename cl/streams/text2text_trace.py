"""TRACE (Wang et al., "TRACE: A Comprehensive Benchmark for Continual Learning in Large
Language Models", 2023) as a text-to-text stream, read from a local copy of its data release.

The release (``LLM-CL-Benchmark_5000`` of https://github.com/BeyonderXX/TRACE) holds one folder
per task with ``train.json`` and ``test.json``: lists of ``{"prompt": ..., "answer": ...}``
whose prompts already carry the instruction. Metrics follow the paper where the platform has
them: accuracy by exact match for the classification and arithmetic tasks; ROUGE-L for
MeetingBank and, in place of edit similarity and SARI, for Py150 and 20Minuten.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cl.errors import ConfigError, DataNotFoundError, reason
from cl.streams import register_stream
from cl.streams.base import Stream
from cl.streams.text2text import CHAT_TEMPLATES, TextTask, stream_from_config
from cl.validation import one_of, positive

TRACE_METRICS: dict[str, str] = {
    "C-STANCE": "exact_match",
    "FOMC": "exact_match",
    "MeetingBank": "rouge_l",
    "Py150": "rouge_l",
    "ScienceQA": "exact_match",
    "NumGLUE-cm": "exact_match",
    "NumGLUE-ds": "exact_match",
    "20Minuten": "rouge_l",
}
HOW_TO_GET = (
    "download the TRACE data release (LLM-CL-Benchmark_5000, https://github.com/BeyonderXX/TRACE)"
    " and set stream.data_root to the folder holding C-STANCE/, FOMC/, ..."
)


@dataclass
class TraceConfig:
    """TRACE stream settings.

    Attributes:
        name: Stream name.
        data_root: Folder of the TRACE release (one subfolder per task).
        tasks: Tasks in training order (the paper's order by default).
        tokenizer: The model's tokenizer (path or hub name), or ``byte``.
        chat_template: ``auto`` (the tokenizer's chat template when it has one) or ``none``.
        max_prompt_len: Prompt tokens (longer prompts keep their end).
        max_target_len: Target tokens, end-of-sequence included.
        max_new_tokens: Tokens generated per test example (null: the target width).
        max_train_per_experience: Training examples per task (null: all 5000).
        max_test_per_experience: Test examples per task (null: all).
        seed: Seed of the subsampling.
        task_labels: Task ids available at test time.
        perplexity: Also record the held-out perplexity matrix (``matrices.perplexity``).
        packing: Pack several training examples per row of ``max_length`` tokens.
        max_length: Tokens of a packed row.
    """

    name: str = "trace"
    data_root: str | None = None
    tasks: list[str] = field(default_factory=lambda: list(TRACE_METRICS))
    tokenizer: str = "byte"
    chat_template: str = "auto"
    max_prompt_len: int = 512
    max_target_len: int = 128
    max_new_tokens: int | None = None
    max_train_per_experience: int | None = None
    max_test_per_experience: int | None = None
    seed: int = 0
    task_labels: bool = False
    perplexity: bool = False
    packing: bool = False
    max_length: int = 1024

    def validate(self) -> None:
        positive("stream", self, "max_prompt_len", "max_target_len", "max_new_tokens")
        positive("stream", self, "max_length")
        one_of("stream", self, "chat_template", CHAT_TEMPLATES)
        positive("stream", self, "max_train_per_experience", "max_test_per_experience")
        unknown = [t for t in self.tasks if t not in TRACE_METRICS]
        if unknown:
            raise ConfigError(f"unknown TRACE task(s) {unknown}; valid: {', '.join(TRACE_METRICS)}")


def read_split(root: Path, task: str, split: str) -> list[tuple[str, str]]:
    path = root / task / f"{split}.json"
    if not path.is_file():
        raise DataNotFoundError(f"TRACE data not found ({path} is missing): {HOW_TO_GET}")
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
        return [(str(r["prompt"]), str(r["answer"])) for r in rows]
    except (ValueError, KeyError, TypeError) as e:
        raise DataNotFoundError(f"cannot read TRACE file {path}: {reason(e)}") from None


def _cap(rows: list[tuple[str, str]], k: int | None, gen: torch.Generator) -> list[tuple[str, str]]:
    if k is None or k >= len(rows):
        return rows
    return [rows[int(i)] for i in torch.randperm(len(rows), generator=gen)[:k].sort().values]


@register_stream("trace", TraceConfig)
def trace(cfg: TraceConfig) -> Stream:
    if not cfg.data_root:
        raise DataNotFoundError(f"stream=trace needs stream.data_root: {HOW_TO_GET}")
    root = Path(cfg.data_root).expanduser()
    gen = torch.Generator().manual_seed(cfg.seed)
    tasks = [
        TextTask(
            name=t,
            instruction="",
            train=_cap(read_split(root, t, "train"), cfg.max_train_per_experience, gen),
            test=_cap(read_split(root, t, "test"), cfg.max_test_per_experience, gen),
            metric=TRACE_METRICS[t],
        )
        for t in cfg.tasks
    ]
    return stream_from_config(cfg, tasks)
