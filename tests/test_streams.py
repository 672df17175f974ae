"""Streams: partitions, permutations, sizes and config fields."""

import pytest
import torch

from cl.errors import ConfigError, DataNotFoundError
from cl.streams.vision import (
    PermutedStreamConfig,
    SplitStreamConfig,
    permuted_digits,
    split_digits,
    split_fmnist,
)
from tests.conftest import needs_fmnist


def test_split_digits_partitions_classes():
    s = split_digits(SplitStreamConfig(name="split_digits"))
    assert s.scenario == "class_il" and s.has_task_ids and len(s) == 5
    assert s.classes == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    total_train = sum(len(e.train) for e in s)
    total_test = sum(len(e.test) for e in s)
    assert total_train + total_test == 1797
    for e in s:
        assert set(e.train.y.unique().tolist()) == set(e.classes)
        assert set(e.test.y.unique().tolist()) == set(e.classes)
        assert (e.train.t == e.index).all() and e.task_id == e.index
        assert e.train.x.shape[1:] == (1, 8, 8)


def test_split_class_order_and_seed():
    order = [3, 1, 4, 0, 5, 9, 2, 6, 8, 7]
    s = split_digits(SplitStreamConfig(name="split_digits", class_order=order, n_experiences=2))
    assert s.classes == [sorted(order[:5]), sorted(order[5:])]
    a = split_digits(SplitStreamConfig(name="split_digits", class_order_seed=1))
    b = split_digits(SplitStreamConfig(name="split_digits", class_order_seed=1))
    assert a.classes == b.classes and a.classes != [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    with pytest.raises(ConfigError):
        split_digits(SplitStreamConfig(name="split_digits", class_order=[0, 1, 2]))


def test_permuted_digits_is_a_permutation_per_experience():
    s = permuted_digits(PermutedStreamConfig(name="permuted_digits", n_experiences=3))
    assert s.scenario == "domain_il" and len(s) == 3
    base = permuted_digits(PermutedStreamConfig(name="permuted_digits", n_experiences=1))
    x0 = s[0].train.x.flatten(1)
    for e in s:
        assert e.classes == list(range(10))
        # Same pixel multiset per sample: a permutation of the same image.
        assert torch.equal(e.train.x.flatten(1).sort(1).values, x0.sort(1).values)
        assert torch.equal(e.train.y, s[0].train.y)
    assert not torch.equal(s[0].train.x, s[1].train.x)
    assert torch.equal(base[0].train.x, s[0].train.x)  # seeded: reproducible
    other = permuted_digits(PermutedStreamConfig(name="permuted_digits", permutation_seed=5))
    assert not torch.equal(other[0].train.x, s[0].train.x)


def test_subsampling_and_bad_values():
    s = split_digits(
        SplitStreamConfig(
            name="split_digits", max_train_per_experience=50, max_test_per_experience=20
        )
    )
    assert all(len(e.train) == 50 and len(e.test) == 20 for e in s)
    with pytest.raises(ConfigError):
        split_digits(SplitStreamConfig(name="split_digits", scenario="domain_il"))
    with pytest.raises(ConfigError):
        split_digits(SplitStreamConfig(name="split_digits", n_experiences=0))


@needs_fmnist
def test_split_fmnist_sizes():
    s = split_fmnist(SplitStreamConfig(name="split_fmnist"))
    assert [len(e.train) for e in s] == [12000] * 5
    assert [len(e.test) for e in s] == [2000] * 5
    assert s.input_shape == (1, 28, 28)
    x = s[0].train.x
    assert abs(float(x.mean())) < 0.5 and 0.5 < float(x.std()) < 1.5  # normalised


def test_missing_fmnist_says_how_to_get_it(tmp_path):
    cfg = SplitStreamConfig(name="split_fmnist", data_root=str(tmp_path), download=False)
    with pytest.raises(DataNotFoundError, match="apt-get install dataset-fashion-mnist"):
        split_fmnist(cfg)


@needs_fmnist
def test_fmnist_without_the_debian_package_reads_the_data_cache(tmp_path, monkeypatch):
    """Where apt is not available the test script downloads into the data cache; the streams
    then find it there (and say how to get it when neither copy exists)."""
    import shutil

    from cl.streams import vision

    system = vision.fmnist_folder()
    assert system is not None
    raw = tmp_path / "data" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for f in system.iterdir():
        shutil.copy(f, raw / f.name)
    monkeypatch.setattr(vision, "FMNIST_SYSTEM_DIR", tmp_path / "absent")
    monkeypatch.setenv("CL_CACHE_DIR", str(tmp_path))
    assert vision.fmnist_folder() == raw
    s = split_fmnist(SplitStreamConfig(name="split_fmnist"))
    assert [len(e.test) for e in s] == [2000] * 5
    monkeypatch.setenv("CL_CACHE_DIR", str(tmp_path / "empty"))
    assert vision.fmnist_folder() is None
    with pytest.raises(DataNotFoundError, match="download_fmnist"):
        split_fmnist(SplitStreamConfig(name="split_fmnist"))


def test_mnist_offline_says_what_to_do(tmp_path):
    from cl.streams.vision import split_mnist

    cfg = SplitStreamConfig(name="split_mnist", data_root=str(tmp_path), download=False)
    with pytest.raises(DataNotFoundError, match="MNIST not found"):
        split_mnist(cfg)
