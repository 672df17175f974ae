"""Conversion between our in-memory streams and Avalanche benchmarks and experiences.

Used by the ``avalanche`` bridge strategy and by benchmarks that run Avalanche's strategies on
exactly our data. Avalanche's data loaders collate on the host, so tensors are moved to CPU.
"""

from __future__ import annotations

from typing import Any

import torch

from cl.streams.base import Experience, Stream, StreamInfo, TensorData


def to_avalanche_dataset(data: TensorData, *, task_labels: bool) -> Any:
    """An Avalanche classification dataset of ``(x, y, t)``; ``t`` is 0 without task labels."""
    from avalanche.benchmarks.utils.classification_dataset import (
        _make_taskaware_tensor_classification_dataset,
    )

    x, y = data.x.detach().cpu(), data.y.detach().cpu()
    t = data.t.detach().cpu() if task_labels else torch.zeros_like(y)
    return _make_taskaware_tensor_classification_dataset(
        x, y, task_labels=t.tolist(), targets=y.tolist()
    )


def to_avalanche_experience(exp: Experience, info: StreamInfo, *, task_labels: bool) -> Any:
    """One Avalanche training experience with the attributes its strategies read.

    Args:
        exp: Our experience (its ``train`` split is converted).
        info: Stream metadata (for the classes of earlier and later experiences).
        task_labels: Give Avalanche the task ids; otherwise every sample has task 0, as in
            Avalanche's class- and domain-incremental benchmarks.
    """
    from avalanche.benchmarks.scenarios.dataset_scenario import DatasetExperience

    if not isinstance(exp.train, TensorData):
        raise TypeError("only in-memory (tensor) experiences can be converted")
    dataset = to_avalanche_dataset(exp.train, task_labels=task_labels)
    av = DatasetExperience(dataset=dataset, current_experience=exp.index)
    _decorate(av, exp.classes, info.classes[: exp.index], info.classes[exp.index + 1 :])
    return av


def _decorate(av: Any, current: list[int], before: list[list[int]], after: list[list[int]]) -> None:
    prev = {c for cs in before for c in cs}
    seen = prev | set(current)
    av.classes_in_this_experience = sorted(set(current))
    av.previous_classes = prev
    av.classes_seen_so_far = seen
    av.future_classes = {c for cs in after for c in cs} - seen
    tls = sorted(av.dataset.targets_task_labels.uniques)
    av.task_labels = tls
    if len(tls) == 1:
        av.task_label = tls[0]


def to_avalanche_benchmark(stream: Stream, *, task_labels: bool | None = None) -> Any:
    """A full Avalanche benchmark (``train_stream`` / ``test_stream``) of ``stream``.

    Args:
        stream: In-memory stream.
        task_labels: Give task ids to Avalanche (default: only for task_il streams).
    """
    from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
    from avalanche.benchmarks.scenarios.supervised import with_classes_timeline
    from avalanche.benchmarks.scenarios.task_aware import with_task_labels

    tl = stream.scenario == "task_il" if task_labels is None else task_labels
    for e in stream.experiences:
        if not isinstance(e.train, TensorData) or not isinstance(e.test, TensorData):
            raise TypeError("only in-memory (tensor) streams can be converted")
    train = [to_avalanche_dataset(e.train, task_labels=tl) for e in stream.experiences]  # type: ignore[arg-type]
    test = [to_avalanche_dataset(e.test, task_labels=tl) for e in stream.experiences]  # type: ignore[arg-type]
    bm = benchmark_from_datasets(train=train, test=test)
    return with_classes_timeline(with_task_labels(bm))


def from_avalanche_benchmark(bm: Any, *, name: str, scenario: str, n_classes: int) -> Stream:
    """Our in-memory stream from an Avalanche benchmark (materialises every sample)."""
    exps = []
    for i, (tr, te) in enumerate(zip(bm.train_stream, bm.test_stream, strict=True)):
        train, test = _materialise(tr.dataset), _materialise(te.dataset)
        exps.append(
            Experience(
                index=i,
                task_id=int(train.t[0]) if len(train) else i,
                classes=sorted({int(c) for c in train.y.tolist()}),
                train=train,
                test=test,
            )
        )
    shape = tuple(exps[0].train.x.shape[1:]) if exps else None  # type: ignore[union-attr]
    return Stream(
        name=name,
        scenario=scenario,
        n_classes=n_classes,
        experiences=exps,
        input_shape=shape,
        has_task_ids=scenario == "task_il",
    )


def _materialise(dataset: Any) -> TensorData:
    loader = torch.utils.data.DataLoader(dataset, batch_size=1024, shuffle=False)
    xs, ys, ts = [], [], []
    for batch in loader:
        xs.append(batch[0])
        ys.append(torch.as_tensor(batch[1]))
        ts.append(torch.as_tensor(batch[-1]))
    return TensorData(torch.cat(xs), torch.cat(ys).long(), torch.cat(ts).long())
