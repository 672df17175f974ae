"""Tokens/second of language-model training and greedy generation, and peak memory.

Random Llama models through the platform's :class:`~cl.models.lm.LanguageModel`: ``tiny`` (the
test size) and ``100m`` (a ~110M-parameter Llama: width 768, 12 layers, 32k vocabulary). Data
are random tokens in the text-to-text layout (a prompt and a target per row; the loss runs on
target tokens). Training counts every token the model reads (prompt and target) per second;
generation counts new tokens per second (batched, KV cache, left-padded prompts). On CUDA the
run uses bf16 autocast (``--dtype bfloat16`` puts the weights in bf16 too) and reports the peak
memory.

Usage::

    python benchmarks/lm_throughput.py                       # both models, CPU
    python benchmarks/lm_throughput.py --models tiny --steps 20
    python benchmarks/lm_throughput.py --device cuda --batch 32 --prompt-len 256
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from torch.nn import functional as F

from cl.models.lm import LanguageModel, LMConfig, build_causal_lm
from cl.streams.base import StreamInfo

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, vocab=259),
    "100m": dict(hidden_size=768, intermediate_size=2048, num_layers=12, num_heads=12, vocab=32000),
}


def build(name: str, args: argparse.Namespace, device: torch.device) -> LanguageModel:
    p = dict(PRESETS[name])
    vocab = p.pop("vocab")
    info = StreamInfo(
        name="random",
        scenario="domain_il",
        n_classes=vocab,
        n_experiences=1,
        classes=[[]],
        task_classes=[[]],
        modality="text2text",
        input_shape=None,
        has_task_ids=False,
    )
    cfg = LMConfig(
        **p,
        dtype=args.dtype,
        gradient_checkpointing=args.gradient_checkpointing,
        max_positions=args.prompt_len + args.target_len + args.new_tokens,
    )
    torch.manual_seed(0)
    return build_causal_lm(cfg, info).to(device)


def batch(
    vocab: int, args: argparse.Namespace, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    b, lp, lt = args.batch, args.prompt_len, args.target_len
    ids = torch.randint(3, vocab, (b, lp + lt), device=device)
    code = torch.cat(
        [torch.ones(b, lp, dtype=torch.long), torch.full((b, lt), 2, dtype=torch.long)], dim=1
    ).to(device)
    return torch.stack([ids, code], dim=1), ids[:, lp:]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench(name: str, args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    model = build(name, args, device)
    n_params = sum(p.numel() for p in model.parameters())
    vocab = PRESETS[name]["vocab"]
    x, y = batch(vocab, args, device)
    amp = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.type == "cuda"
        else contextlib.nullcontext()
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda" or None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with amp:
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        opt.step()

    model.train()
    step()  # warm-up
    sync(device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync(device)
    train_tps = args.steps * x.shape[0] * x.shape[-1] / (time.perf_counter() - t0)

    model.eval()
    lp = args.prompt_len
    prompt, mask = x[:, 0, :lp], x[:, 1, :lp] == 1
    mask[: args.batch // 2, : lp // 4] = False  # left padding on half the rows
    with amp:
        model.generate_ids(prompt, mask, max_new_tokens=2, eos_id=-1, pad_id=0)
        sync(device)
        t0 = time.perf_counter()
        out = model.generate_ids(prompt, mask, max_new_tokens=args.new_tokens, eos_id=-1, pad_id=0)
        sync(device)
    gen_tps = out.numel() / (time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else float("nan")
    return {"params": n_params, "train_tps": train_tps, "gen_tps": gen_tps, "peak": peak}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="tiny,100m", help="comma-separated: tiny, 100m")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=96)
    ap.add_argument("--target-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--steps", type=int, default=3, help="timed training steps")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--gradient-checkpointing", action="store_true")
    args = ap.parse_args()
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # eos_id=-1 (never stop) is intended here
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    print(
        f"device={device} batch={args.batch} prompt={args.prompt_len} target={args.target_len} "
        f"new_tokens={args.new_tokens} dtype={args.dtype}"
        + (" (bf16 autocast)" if device.type == "cuda" else "")
    )
    print(f"{'model':>6} {'params':>12} {'train tok/s':>12} {'gen tok/s':>10} {'peak MiB':>9}")
    for name in args.models.split(","):
        r = bench(name.strip(), args, device)
        print(
            f"{name:>6} {r['params']:>12,} {r['train_tps']:>12,.0f} {r['gen_tps']:>10,.0f} "
            f"{r['peak'] / 2**20:>9.0f}"
        )


if __name__ == "__main__":
    main()
