"""5-datasets: the L2P experiment composes with the paper's values; the stream converts images."""

import pytest
import torch

from cl.errors import ConfigError, DataNotFoundError
from cl.streams.five_datasets import FiveDatasetsConfig, five_datasets
from tests.conftest import needs_fmnist


def test_l2p_5datasets_experiment_has_paper_hyperparameters(make_cfg):
    cfg = make_cfg("experiment=l2p_5datasets")
    assert cfg.stream.name == "five_datasets"
    assert list(cfg.stream.order) == ["cifar10", "mnist", "fmnist", "svhn", "notmnist"]
    s, t = cfg.strategy, cfg.train
    assert (s.pool_size, s.prompt_length, s.top_k, s.pull_lambda) == (20, 10, 4, 0.5)
    assert (t.optimizer, t.lr, t.batch_size, t.epochs, t.grad_clip) == ("adam", 0.03, 128, 5, 1.0)
    assert cfg.model.img_size == 224 and cfg.model.arch.startswith("vit_base_patch16_224")


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
