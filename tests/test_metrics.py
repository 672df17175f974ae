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
    assert M.avg_acc(r) == pytest.approx((0.4 + 0.8 + 0.3) / 3)
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
