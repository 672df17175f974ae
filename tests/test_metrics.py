"""Metric functions against matrices computed by hand."""

import pytest

from cl import metrics as M

# R[i][j]: rows = after training on i, cols = test on j.
R = [
    [0.9, 0.1, 0.2],
    [0.5, 0.8, 0.1],
    [0.6, 0.4, 0.7],
]
B = [0.1, 0.15, 0.05]


def test_avg_acc():
    assert M.avg_acc(R) == pytest.approx((0.6 + 0.4 + 0.7) / 3)


def test_avg_incremental_acc():
    want = (0.9 + (0.5 + 0.8) / 2 + (0.6 + 0.4 + 0.7) / 3) / 3
    assert M.avg_incremental_acc(R) == pytest.approx(want)


def test_forgetting_max_based():
    # j=0: max(0.9, 0.5) - 0.6 = 0.3; j=1: max(0.8) - 0.4 = 0.4
    assert M.forgetting(R) == pytest.approx((0.3 + 0.4) / 2)


def test_nll_forgetting_of_a_perplexity_matrix():
    import math

    p = [[2.0, 9.0, 9.0], [6.0, 3.0, 9.0], [4.0, 3.0 * math.e, 1.5]]
    # j=0: log 4 - log 2; j=1: log(3e) - log 3 = 1 (perplexity rises: forgetting is positive)
    assert M.nll_forgetting(p) == pytest.approx((math.log(2) + 1) / 2)
    assert M.nll_forgetting([[5.0]]) == 0.0


def test_bwt_and_fwt():
    assert M.bwt(R) == pytest.approx(((0.6 - 0.9) + (0.4 - 0.8)) / 2)
    # fwt: j=1: R[0][1]-b1 = 0.1-0.15; j=2: R[1][2]-b2 = 0.1-0.05
    assert M.fwt(R, B) == pytest.approx(((0.1 - 0.15) + (0.1 - 0.05)) / 2)


def test_max_based_forgetting_differs_from_first_minus_last():
    # Experience 0 is learned poorly, improves at step 1 (backward transfer), then drops.
    r = [
        [0.5, 0.0, 0.0],
        [0.9, 0.8, 0.0],
        [0.6, 0.8, 0.9],
    ]
    # max-based: j=0: 0.9-0.6=0.3, j=1: 0.8-0.8=0 -> 0.15
    assert M.forgetting(r) == pytest.approx(0.15)
    # first-minus-last (Avalanche): j=0: 0.5-0.6=-0.1, j=1: 0 -> -0.05
    assert M.first_minus_last_forgetting(r) == pytest.approx(-0.05)
    assert M.forgetting(r) != pytest.approx(M.first_minus_last_forgetting(r))


def test_partial_matrix_uses_rows_present():
    r = [[0.9, 0.2, 0.1], [0.4, 0.8, 0.3]]
    # Interim avg_acc: experiences seen so far only (j <= 1), not the untrained experience 2.
    assert M.avg_acc(r) == pytest.approx((0.4 + 0.8) / 2)
    assert M.avg_acc(r[:1]) == pytest.approx(0.9)
    assert M.forgetting(r) == pytest.approx(0.5)
    assert M.bwt(r) == pytest.approx(-0.5)
    assert M.fwt(r, [0.1, 0.1, 0.1]) == pytest.approx(0.2 - 0.1)


def test_single_row_and_perfect_memory():
    assert M.forgetting([[0.7, 0.1]]) == 0.0
    assert M.bwt([[0.7, 0.1]]) == 0.0
    perfect = [[1.0, 0.0], [1.0, 1.0]]
    assert M.forgetting(perfect) == 0.0
    assert M.avg_acc(perfect) == 1.0


def test_bad_shape_rejected():
    with pytest.raises(ValueError):
        M.avg_acc([[0.1, 0.2], [0.1, 0.2], [0.3, 0.3]])


def test_interim_avg_acc_row_by_row_and_final_unchanged():
    for i in range(len(R)):
        assert M.avg_acc(R[: i + 1]) == pytest.approx(sum(R[i][: i + 1]) / (i + 1))
    assert M.all_metrics(R[:1], B)["avg_acc"] == R[0][0]
    assert M.avg_acc(R) == pytest.approx(sum(R[-1]) / len(R[-1]))


def test_evaluation_protocol_of_a_run():
    assert M.evaluation_protocol("task_il", task_ids_at_test=False) == M.TASK_AWARE
    assert M.evaluation_protocol("class_il", task_ids_at_test=False) == M.TASK_AGNOSTIC
    assert M.evaluation_protocol("domain_il", task_ids_at_test=False) == M.TASK_AGNOSTIC
    # A strategy given task ids (allow_task_oracle=true) is task-aware whatever the stream.
    assert M.evaluation_protocol("class_il", task_ids_at_test=True) == M.TASK_AWARE
    assert M.evaluation_protocol("domain_il", task_ids_at_test=True) == M.TASK_AWARE


def test_fwt_is_null_in_task_agnostic_class_il_and_defined_elsewhere():
    # Task-agnostic class_il with seen-class masking: R[j-1][j] = 0, so mean(R[j-1][j] - b[j])
    # would be -mean(b[1:]) for every strategy. Two different "strategies" show it.
    naive = [[0.99, 0.0, 0.0], [0.0, 0.98, 0.0], [0.0, 0.0, 0.97]]
    replay = [[0.99, 0.0, 0.0], [0.90, 0.95, 0.0], [0.85, 0.90, 0.96]]
    assert M.fwt(naive, B) == M.fwt(replay, B) == pytest.approx(-(B[1] + B[2]) / 2)
    undefined = M.undefined_metrics("class_il", M.TASK_AGNOSTIC)
    assert set(undefined) == {"fwt"} and "R[j-1][j] is 0" in undefined["fwt"]
    for r in (naive, replay):
        m = M.all_metrics(r, B, undefined=undefined)
        assert m["fwt"] is None
        assert m["avg_acc"] == pytest.approx(M.avg_acc(r))  # the others stay defined
    # Task-aware class_il, domain_il and task_il: FWT = mean_{j>=1} (R[j-1][j] - b[j]).
    for scenario, protocol in (
        ("class_il", M.TASK_AWARE),
        ("domain_il", M.TASK_AGNOSTIC),
        ("task_il", M.TASK_AWARE),
    ):
        assert M.undefined_metrics(scenario, protocol) == {}
        m = M.all_metrics(R, B, undefined=M.undefined_metrics(scenario, protocol))
        assert m["fwt"] == pytest.approx(((0.1 - 0.15) + (0.1 - 0.05)) / 2)
