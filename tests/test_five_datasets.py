"""5-datasets: the L2P experiment follows its named reference; the stream converts images."""

from pathlib import Path

import pytest
import torch

from cl.errors import ConfigError, DataNotFoundError
from cl.streams.five_datasets import FiveDatasetsConfig, five_datasets
from cl.testing import check_reference_yaml
from tests.conftest import needs_fmnist

# JH-LEE-KR/l2p-pytorch f7bc994 (configs/five_datasets_l2p.py, train_five_datasets_l2p.sh,
# datasets.py): every value conf/experiment/l2p_5datasets.yaml sets, with the reference's flag.
REFERENCE = {
    "seed": 42,  # --seed
    "stream.scenario": "class_il",  # --task_inc False
    "stream.order": ["svhn", "mnist", "cifar10", "notmnist", "fmnist"],  # 5-datasets, no shuffle
    "stream.normalize": "unit",  # transforms.ToTensor(), no Normalize
    "stream.augment": "rrc_flip",  # RandomResizedCrop + RandomHorizontalFlip
    "stream.rrc_scale": [0.05, 1.0],
    "stream.rrc_ratio": [3 / 4, 4 / 3],
    "stream.eval_transform": "resize_crop",  # Resize(256, bicubic) + CenterCrop(224)
    "stream.eval_crop_pct": 224 / 256,
    "stream.image_size": None,  # --input-size 224 (the model's)
    "model.arch": "vit_base_patch16_224.orig_in21k",
    "model.img_size": 224,
    "model.pretrained": True,
    "model.pooling": "cls",  # --embedding_key cls
    "strategy.pool_size": 20,  # --size
    "strategy.prompt_length": 10,  # --length
    "strategy.top_k": 4,  # --top_k
    "strategy.init_range": 1.0,  # --initializer / --prompt_key_init uniform
    "strategy.pull_lambda": 0.5,  # --pull_constraint_coeff
    "strategy.mask_old_logits": True,  # --train_mask
    "strategy.readout": "prompt",  # --head_type prompt
    "strategy.head_init": "trunc_normal",
    "strategy.prompt_position": "cls",
    "strategy.diversify": False,
    "strategy.task_prompt_mask": True,  # --use_prompt_mask True
    "train.optimizer": "adam",  # --opt adam
    "train.lr": 0.03,  # --lr
    "train.lr_scale_batch": 256,  # --unscale_lr True: lr * batch_size / 256
    "train.batch_size": 16,  # --batch-size 16
    "train.epochs": 5,  # --epochs
    "train.weight_decay": 0.0,
    "train.grad_clip": 1.0,  # --clip-grad
    "train.lr_schedule": "constant",  # --sched constant
    "train.warmup_steps": 0,
    "train.reset_optimizer": True,  # --reinit_optimizer
    "train.amp": False,
    "train.logit_mask": "none",  # masking is strategy.mask_old_logits
}
DEVIATIONS = {"strategy.batchwise_prompt": (False, True)}  # (ours, the reference's): the yaml


def test_l2p_5datasets_follows_the_named_reference(make_cfg):

    from cl.config import to_dataclass
    from cl.strategy import TrainConfig

    cfg = make_cfg("experiment=l2p_5datasets")
    path = Path(__file__).parents[1] / "conf/experiment/l2p_5datasets.yaml"
    text = path.read_text()
    assert "JH-LEE-KR/l2p-pytorch" in text and "f7bc994365f51221e059b7be18c9b08c369444e6" in text
    check_reference_yaml(cfg, path, REFERENCE, DEVIATIONS)
    assert cfg.stream.name == "five_datasets" and cfg.stream.n_experiences == 5
    s = cfg.strategy
    assert s.top_k * cfg.stream.n_experiences == s.pool_size  # one prompt slot set per task
    tc = to_dataclass(cfg.train, TrainConfig, "train")
    assert tc.effective_lr == pytest.approx(0.03 * 16 / 256)


@needs_fmnist
def test_grey_dataset_becomes_rgb32_with_its_own_labels():
    s = five_datasets(
        FiveDatasetsConfig(
            order=["fmnist"], max_train_per_experience=64, max_test_per_experience=32
        )
    )
    e = s[0]
    assert s.n_classes == 10 and s.input_shape == (3, 32, 32)
    assert e.train.x.shape == (64, 3, 32, 32)
    assert float(e.train.x.min()) >= 0.0 and float(e.train.x.max()) <= 1.0 + 1e-6
    assert torch.equal(e.train.x[:, 0], e.train.x[:, 1])
    assert set(e.train.y.tolist()) <= set(range(10))


def test_missing_notmnist_and_bad_order(tmp_path):
    with pytest.raises(DataNotFoundError, match="notMNIST"):
        five_datasets(FiveDatasetsConfig(order=["notmnist"], data_root=str(tmp_path)))
    with pytest.raises(ConfigError):
        five_datasets(FiveDatasetsConfig(order=["cifar10", "cifar10"]))
