"""Our split streams partition data exactly as Avalanche's NC generator does."""

import torch

from cl.streams.vision import SplitStreamConfig, load_digits_arrays, split_digits


def test_split_matches_avalanche_nc_benchmark():
    from avalanche.benchmarks.scenarios.deprecated.generators import nc_benchmark
    from avalanche.benchmarks.utils.classification_dataset import (
        _make_taskaware_tensor_classification_dataset as tensor_ds,
    )

    order = [3, 1, 4, 0, 5, 9, 2, 6, 8, 7]
    ours = split_digits(SplitStreamConfig(name="split_digits", class_order=order))
    xtr, ytr, xte, yte = load_digits_arrays()
    bench = nc_benchmark(
        tensor_ds(xtr, ytr),
        tensor_ds(xte, yte),
        n_experiences=5,
        task_labels=True,
        shuffle=False,
        fixed_class_order=order,
    )
    for e, av_tr, av_te in zip(ours, bench.train_stream, bench.test_stream, strict=True):
        assert sorted(av_tr.classes_in_this_experience) == e.classes
        assert av_tr.task_label == e.task_id
        for data, av in ((e.train, av_tr), (e.test, av_te)):
            av_y = torch.as_tensor(list(av.dataset.targets))
            assert len(av_y) == len(data)
            assert torch.equal(
                torch.bincount(av_y, minlength=10), torch.bincount(data.y, minlength=10)
            )
            av_x = torch.stack([av.dataset[i][0] for i in range(len(av_y))])
            # Same samples (order within an experience may differ).
            assert torch.equal(
                av_x.flatten(1).sum(1).sort().values, data.x.flatten(1).sum(1).sort().values
            )
