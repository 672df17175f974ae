"""Stream normalisation and batched on-device augmentation: the crops equal torchvision's, the
loop applies them to training batches only (deterministically, so resume stays exact), the
evaluator applies the evaluation transform, and the SGD recipe trains on [0, 1] inputs."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from cl.config import build, validate_config
from cl.errors import ConfigError
from cl.run import run_experiment
from cl.strategies.naive import Naive
from cl.strategy import Batch, ExperienceStats
from cl.streams.augment import (
    ImagePipeline,
    pad_crop,
    random_hflip,
    resize_center_crop,
    resized_crop,
    rrc_params,
)
from cl.streams.base import Experience
from cl.testing import check_resume
from tests.conftest import DIGITS_1EPOCH, needs_fmnist


class OwnLoop(Naive):
    """A strategy with its own loop (like the Avalanche bridge) cannot apply the augmentation."""

    def train_experience(self, exp: Experience, **kw: Any) -> ExperienceStats:
        return super().train_experience(exp, **kw)


TINY_VIT = ("model=vit", "model.img_size=16", "model.patch_size=4", "model.depth=1")
TINY_VIT += ("model.embed_dim=16", "model.num_heads=2")


def test_random_resized_crop_equals_torchvision_per_sample():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(200, 3, 32, 24)
    top, left, h, w = rrc_params(200, 32, 24, gen, (0.05, 1.0), (3 / 4, 4 / 3))
    # Boxes lie inside the image, with the area and aspect ratio asked for (up to rounding).
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + h <= 32).all() and (left + w <= 24).all()
    area = (h * w).float() / (32 * 24)
    assert area.min() > 0.03 and area.max() <= 1.0 and area.std() > 0.1
    ratio = w.float() / h.float()
    assert ratio.min() > 0.6 and ratio.max() < 1.6
    out = resized_crop(x, top, left, h, w, 40)
    ref = torch.stack(
        [
            TF.resized_crop(x[b], int(top[b]), int(left[b]), int(h[b]), int(w[b]), [40, 40])
            for b in range(200)
        ]
    )
    assert out.shape == (200, 3, 40, 40)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_pad_crop_flip_and_resize_centre_crop():
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(500, 1, 8, 8)
    out = pad_crop(x, torch.Generator().manual_seed(1), 2, (-1.0,))
    top = torch.randint(0, 5, (500,), generator=gen)
    left = torch.randint(0, 5, (500,), generator=gen)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), value=-1.0)
    ref = torch.stack(
        [padded[b, :, top[b] : top[b] + 8, left[b] : left[b] + 8] for b in range(500)]
    )
    assert torch.equal(out, ref)
    flipped = random_hflip(x, torch.Generator().manual_seed(2))
    is_flip = (flipped == x.flip(-1)).flatten(1).all(1)
    assert ((flipped == x).flatten(1).all(1) | is_flip).all()
    assert 0.4 < is_flip.float().mean() < 0.6
    # Resize the shorter side to 224 / 0.875 = 256 (bicubic), centre crop 224, clamp to pixels.
    img = torch.rand(4, 3, 32, 40)
    got = resize_center_crop(img, 224, 0.875, (0.0,), (1.0,))
    want = TF.center_crop(TF.resize(img, [256], TF.InterpolationMode.BICUBIC), [224, 224])
    assert got.shape == (4, 3, 224, 224) and got.min() >= 0 and got.max() <= 1
    torch.testing.assert_close(got, want.clamp(0, 1), atol=1e-5, rtol=0)


def test_normalize_options_and_bad_values(make_cfg):
    std = build(make_cfg(*DIGITS_1EPOCH)).stream[0].train.x
    unit = build(make_cfg(*DIGITS_1EPOCH, "stream.normalize=unit")).stream[0].train.x
    assert unit.min() == 0 and unit.max() == 1
    torch.testing.assert_close(std, (unit - 0.5) / 0.5)
    for bad, key in (
        ("stream.normalize=minmax", "stream.normalize"),
        ("stream.augment=mixup", "stream.augment"),
        ("stream.rrc_scale=[0.5,2.0]", "stream.rrc_scale"),
        ("train.lr_scale_batch=0", "train.lr_scale_batch"),
    ):
        with pytest.raises(ConfigError, match=key):
            validate_config(make_cfg(*DIGITS_1EPOCH, bad))
    with pytest.raises(ConfigError, match="permutes pixels"):
        build(make_cfg(*DIGITS_1EPOCH, "stream=permuted_digits", "stream.augment=flip_crop"))
    built = build(make_cfg(*DIGITS_1EPOCH, "stream.augment=flip_crop"))
    with pytest.raises(ConfigError, match="own training loop"):
        OwnLoop(config=built.strategy.config, model=built.model, context=built.context)


def test_loop_augments_training_batches_only_and_resume_is_exact(make_cfg, tmp_path):
    base = (*DIGITS_1EPOCH, "stream.n_experiences=3", "checkpoint.enabled=true")
    cfg = make_cfg(*base, "stream.augment=flip_crop", "stream.crop_padding=2")
    built = build(cfg)
    seen: list[torch.Tensor] = []
    forward = built.strategy.forward
    built.strategy.forward = lambda x, t: seen.append(x.clone()) or forward(x, t)  # type: ignore[method-assign]
    exp = built.stream[0]
    built.strategy.train_experience(exp)
    raw = exp.train.x
    # Every training batch is a padded crop (maybe flipped) of its images, with the pixel
    # value of black (-1 in the digits' [-1, 1]) in the border, and not all are unchanged.
    batch = torch.cat(seen)
    assert batch.shape[1:] == raw.shape[1:] and not torch.equal(
        batch.sort(0).values, raw.sort(0).values
    )
    assert (batch == -1).float().mean() > (raw == -1).float().mean()
    # The same seed draws the same augmentation; evaluation inputs are untouched.
    gen = lambda: built.strategy.generator(0, 0, 0xA06)  # noqa: E731
    b = Batch(raw[:8], exp.train.y[:8], None)
    assert torch.equal(built.strategy.augment(b, gen()).x, built.strategy.augment(b, gen()).x)
    assert built.strategy.eval_input(raw[:8]) is raw[:8] or torch.equal(
        built.strategy.eval_input(raw[:8]), raw[:8]
    )
    ref = run_experiment(cfg, tmp_path / "ref")
    plain = run_experiment(make_cfg(*base), tmp_path / "plain")
    assert ref.acc_matrix != plain.acc_matrix  # the augmentation changed training
    check_resume(cfg, tmp_path / "run", reference=ref, kill_step=(1, 2))


def test_rrc_and_eval_transform_target_the_model_input_size(make_cfg):
    cfg = make_cfg(
        *DIGITS_1EPOCH,
        *TINY_VIT,
        "stream.normalize=unit",
        "stream.augment=rrc_flip",
        "stream.eval_transform=resize_crop",
    )
    s = build(cfg).strategy
    pipe = s.context.stream.pipeline
    assert isinstance(pipe, ImagePipeline)
    x = torch.rand(5, 1, 8, 8)
    out = s.augment(Batch(x, torch.zeros(5, dtype=torch.long), None), torch.Generator()).x
    assert out.shape == (5, 1, 16, 16)
    ev = s.eval_input(x)
    assert ev.shape == (5, 1, 16, 16) and ev.min() >= 0 and ev.max() <= 1
    # 16 / 0.875 = 18: resize to 18, crop the centre 16.
    want = TF.center_crop(TF.resize(x, [18], TF.InterpolationMode.BICUBIC), [16, 16])
    torch.testing.assert_close(ev, want.clamp(0, 1), atol=1e-5, rtol=0)


@needs_fmnist
def test_sgd_momentum_recipe_trains_on_unit_pixels(make_cfg, tmp_path):
    """Naive SGD 0.05 / momentum 0.9, batch 128, 400-400 MLP, one epoch on split_fmnist in
    [0, 1] (the recipe that turned NaN at experience 3 on standardised inputs)."""
    rec = run_experiment(
        make_cfg(
            "stream=split_fmnist",
            "stream.normalize=unit",
            "stream.max_test_per_experience=200",
            "strategy=naive",
            "model=mlp",
            "model.hidden_sizes=[400,400]",
            "train.optimizer=sgd",
            "train.lr=0.05",
            "train.momentum=0.9",
            "train.batch_size=128",
            "train.epochs=1",
            "checkpoint.enabled=false",
            "device=cpu",
        ),
        tmp_path,
    )
    assert rec.status == "complete"
    losses = [e["final_loss"] for e in rec.per_experience]
    assert all(0 <= v < 3.0 for v in losses), losses  # finite, and below chance (ln 10)
    diag = [rec.acc_matrix[i][i] for i in range(5)]
    assert min(diag) > 0.9, diag  # each experience is learnt (chance 0.5 within it)
