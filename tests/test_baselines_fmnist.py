"""Naive and joint on Split Fashion-MNIST (class_il, 1 epoch): the two bounds."""

from cl.run import run_experiment
from tests.conftest import needs_fmnist


@needs_fmnist
def test_naive_forgets_joint_remembers(make_cfg, tmp_path):
    common = ("stream=split_fmnist", "train.epochs=1", "seed=0")
    naive = run_experiment(make_cfg(*common, "strategy=naive"), tmp_path / "naive")
    joint = run_experiment(make_cfg(*common, "strategy=joint"), tmp_path / "joint")
    assert naive.metrics()["forgetting"] > 0.8
    assert joint.metrics()["avg_acc"] > 0.80
    assert joint.metrics()["forgetting"] < 0.1
