"""Training and inference samples/second of L2P vs plain fine-tuning of the same ViT.

L2P runs the frozen backbone twice per sample (a query pass without prompts, then the prompted
pass) and back-propagates through the second one into the prompts; fine-tuning runs one pass
and updates every weight. Data are random tensors, so no dataset is needed.

Usage::

    python benchmarks/l2p_throughput.py                 # small random ViT, CPU
    python benchmarks/l2p_throughput.py --preset vit_b16 --device cuda
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from cl.models.vit import ViTConfig, build_vit
from cl.strategies.l2p import L2PConfig
from cl.strategies.naive import NaiveConfig
from cl.strategy import RunContext, TrainConfig, get_strategy
from cl.streams.base import Experience, StreamInfo, TensorData

PRESETS = {
    "tiny": dict(arch="vit_tiny_patch16_224", img_size=32, patch_size=4, depth=4),
    "vit_b16": dict(arch="vit_base_patch16_224", img_size=224),
}


def bench(name: str, args: argparse.Namespace, device: torch.device) -> tuple[float, float]:
    n_classes, shape = 10, (3, 32, 32)
    info = StreamInfo.of(
        "random",
        [list(range(n_classes))],
        scenario="class_il",
        modality="vision",
        input_shape=shape,
    )
    torch.manual_seed(0)
    model = build_vit(ViTConfig(**PRESETS[args.preset]), info).to(device)
    n = args.batch_size * args.steps
    x = torch.randn(n, *shape, device=device)
    data = TensorData(
        x,
        torch.randint(0, n_classes, (n,), device=device),
        torch.zeros(n, dtype=torch.long, device=device),
    )
    exp = Experience(index=0, task_id=0, classes=list(range(n_classes)), train=data, test=data)
    train = TrainConfig(epochs=1, batch_size=args.batch_size, optimizer="adam", lr=1e-4, amp=True)
    ctx = RunContext(device=device, seed=0, stream=info, train=train)
    cfg = L2PConfig() if name == "l2p" else NaiveConfig()
    strat = get_strategy(name)(config=cfg, model=model, context=ctx)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    warm = Experience(
        index=0,
        task_id=0,
        classes=exp.classes,
        train=data.subset(torch.arange(args.batch_size, device=device)),
        test=data,
    )
    strat.train_experience(warm)
    sync()
    t0 = time.perf_counter()
    strat.train_experience(exp)
    sync()
    train_sps = n / (time.perf_counter() - t0)
    model.eval()
    with torch.inference_mode(), strat.autocast():
        strat.predict(x[: args.eval_batch_size], None)
        sync()
        t0 = time.perf_counter()
        for s in range(0, n, args.eval_batch_size):
            strat.predict(x[s : s + args.eval_batch_size], None)
        sync()
    return train_sps, n / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--eval-batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=8)
    args = p.parse_args()
    device = torch.device(args.device)
    rows = {name: bench(name, args, device) for name in ("naive", "l2p")}
    print(f"device={device} preset={args.preset} batch={args.batch_size} steps={args.steps}")
    print(f"{'method':<22}{'train samples/s':>18}{'infer samples/s':>18}")
    for name, (tr, inf) in rows.items():
        label = "fine-tuning (naive)" if name == "naive" else "l2p (frozen + pool)"
        print(f"{label:<22}{tr:>18.1f}{inf:>18.1f}")
    (ft, fi), (lt, li) = rows["naive"], rows["l2p"]
    print(f"{'l2p / fine-tuning':<22}{lt / ft:>18.2f}{li / fi:>18.2f}")


if __name__ == "__main__":
    main()
