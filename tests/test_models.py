"""Models and heads: shapes, multi-head routing and masking."""

import torch

from cl.models.cnn import CNNConfig, build_cnn
from cl.models.heads import MultiHead
from cl.models.mlp import MLPConfig, build_mlp
from cl.streams.vision import SplitStreamConfig, split_digits


def _info():
    return split_digits(SplitStreamConfig(name="split_digits")).info()


def test_mlp_and_cnn_shapes():
    info = _info()
    x = torch.randn(7, 1, 8, 8)
    m = build_mlp(MLPConfig(hidden_sizes=[32, 16]), info)
    assert m(x).shape == (7, 10)
    assert [m_.out_features for m_ in m.backbone if isinstance(m_, torch.nn.Linear)] == [32, 16]
    c = build_cnn(CNNConfig(channels=[4, 8], hidden_size=12), info)
    assert c(x).shape == (7, 10) and c.feature_dim == 12


def test_multi_head_routes_by_task_and_masks_other_classes():
    torch.manual_seed(0)
    head = MultiHead(5, 6, [[0, 1], [2, 3], [4, 5]])
    h = torch.randn(4, 5)
    t = torch.tensor([0, 2, 1, 2])
    out = head(h, t)
    for r, task in enumerate(t.tolist()):
        cls = [[0, 1], [2, 3], [4, 5]][task]
        assert torch.allclose(out[r, cls], head.heads[task](h[r : r + 1])[0])
        others = [c for c in range(6) if c not in cls]
        assert torch.isinf(out[r, others]).all()
    # Without task ids (disjoint tasks) every head fills its own classes.
    full = head(h, None)
    assert torch.isfinite(full).all()
    assert torch.allclose(full[1, [4, 5]], out[1, [4, 5]])


def test_multi_head_model_trains_only_its_head():
    info = _info()
    m = build_mlp(MLPConfig(hidden_sizes=[16], multi_head=True), info)
    x = torch.randn(3, 1, 8, 8)
    loss = torch.nn.functional.cross_entropy(m(x, torch.tensor([1, 1, 1])), torch.tensor([2, 3, 2]))
    loss.backward()
    assert m.head.heads[1].weight.grad is not None
    assert m.head.heads[0].weight.grad is None
