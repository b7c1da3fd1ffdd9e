"""The package's one AUROC: against scikit-learn on random and tied data, a hand-worked case, edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from visionad_multicore import auroc as auroc_module
from visionad_multicore.auroc import OneClassError, auroc, binary_auroc


def sklearn_auroc(positives: np.ndarray, negatives: np.ndarray) -> float:
    labels = np.r_[np.ones(positives.size), np.zeros(negatives.size)]
    return float(roc_auc_score(labels, np.r_[positives.ravel(), negatives.ravel()]))


def test_hand_worked_case_with_ties() -> None:
    # positives {3, 2, 2}, negatives {2, 1}: pairs (3,2) 1, (3,1) 1, (2,2) 1/2 twice, (2,1) 1 twice
    # -> U = 1 + 1 + 0.5 + 1 + 0.5 + 1 = 5 of 6 pairs.
    assert auroc([3, 2, 2], [2, 1]) == 5 / 6
    assert auroc([2, 1], [3, 2, 2]) == 1 / 6  # swapping the classes gives 1 - AUC: no flip here
    assert binary_auroc([3, 2, 1, 2, 2], [1, 1, 0, 0, 1]) == 5 / 6


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("n_pos, n_neg", [(1, 1), (3, 50), (50, 3), (400, 700)])
def test_random_data_matches_sklearn(seed: int, n_pos: int, n_neg: int) -> None:
    rng = np.random.default_rng(seed)
    positives = rng.normal(0.5, 1.0, n_pos)
    negatives = rng.normal(0.0, 1.0, n_neg)
    assert auroc(positives, negatives) == pytest.approx(sklearn_auroc(positives, negatives), abs=1e-14)


@settings(max_examples=80, deadline=None)
@given(
    positives=st.lists(st.integers(-3, 3), min_size=1, max_size=30),
    negatives=st.lists(st.integers(-3, 3), min_size=1, max_size=30),
    as_float32=st.booleans(),
)
def test_tied_data_matches_sklearn(positives: list[int], negatives: list[int], as_float32: bool) -> None:
    pos = np.array(positives, dtype=np.float32 if as_float32 else np.int64)
    neg = np.array(negatives, dtype=np.float32 if as_float32 else np.int64)
    assert auroc(pos, neg) == pytest.approx(sklearn_auroc(pos, neg), abs=1e-14)


@pytest.mark.parametrize("queries", ["positives", "negatives"])
def test_counting_in_blocks_gives_the_same_value(monkeypatch: pytest.MonkeyPatch, queries: str) -> None:
    rng = np.random.default_rng(7)
    small, large = np.round(rng.normal(1, 1, 37), 1), np.round(rng.normal(0, 1, 101), 1)
    pos, neg = (small, large) if queries == "positives" else (large, small)
    expected = sklearn_auroc(pos, neg)
    monkeypatch.setattr(auroc_module, "_BLOCK", 5)  # several blocks of query values
    assert auroc(pos, neg) == pytest.approx(expected, abs=1e-14)


def test_tensors_any_shape_and_inputs_untouched() -> None:
    rng = np.random.default_rng(3)
    scores = rng.random((2, 1, 6, 5)).astype(np.float32)
    labels = rng.random(scores.shape) > 0.6
    before = scores.copy()
    expected = float(roc_auc_score(labels.ravel(), scores.ravel()))
    assert binary_auroc(torch.from_numpy(scores), torch.from_numpy(labels)) == pytest.approx(
        expected, abs=1e-14
    )
    assert binary_auroc(scores, labels.astype(np.float64)) == pytest.approx(expected, abs=1e-14)
    assert auroc(torch.from_numpy(scores[labels]).bfloat16(), scores[~labels]) == pytest.approx(
        sklearn_auroc(torch.from_numpy(scores[labels]).bfloat16().float().numpy(), scores[~labels]), abs=1e-14
    )
    np.testing.assert_array_equal(scores, before)


def test_infinite_values_are_ordered() -> None:
    # pairs (inf, -inf), (inf, 1), (1, -inf) count 1 each, the tie (1, 1) counts 1/2: 3.5 of 4
    assert auroc([np.inf, 1.0], [-np.inf, 1.0]) == 0.875


def test_one_class_raises_and_callers_may_turn_it_into_nan() -> None:
    with pytest.raises(OneClassError, match="both classes: got 0 positive and 3 negative"):
        auroc([], [1.0, 2.0, 3.0])
    with pytest.raises(OneClassError):
        binary_auroc(torch.rand(5), torch.ones(5, dtype=torch.bool))
    assert issubclass(OneClassError, ValueError)
    try:
        value = binary_auroc(np.arange(4.0), np.zeros(4))
    except OneClassError:
        value = math.nan
    assert math.isnan(value)


def test_bad_inputs_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="positives: 1 NaN"):
        auroc([np.nan, 1.0], [0.0])
    with pytest.raises(ValueError, match="4 values but labels has 3"):
        binary_auroc(np.zeros(4), np.array([0, 1, 1]))
    with pytest.raises(ValueError, match=r"labels: expected values in \{0, 1\}, found \[2\]"):
        binary_auroc(np.zeros(3), np.array([0, 1, 2]))
    with pytest.raises(TypeError, match="dtype <U1"):
        auroc(np.array(["a"]), np.array(["b"]))
