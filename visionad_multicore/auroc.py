"""The package's one exact binary ROC AUC, shared by the algorithm core and the VisionAD harness.

Both layers may import this module (it imports nothing from the package; see ``docs/architecture.md``).

Definition: the probability that a positive value is ranked above a negative one, ties counting one half,
i.e. the Mann-Whitney statistic ``U / (n_pos * n_neg)``. This is the area under the ROC curve with one point
per distinct threshold, which is what scikit-learn's ``roc_auc_score`` computes; the two agree to
floating-point rounding (~1e-15; ``tests/test_auroc.py`` checks random, tied and hand-worked cases).
No flip is applied here: VisionAD's "report 1 - AUC below 0.5" lives in ``visionad.metrics``.

One class only: ROC AUC is undefined when either class is empty, and :class:`OneClassError` (a
``ValueError``) is raised. Callers that want NaN in that case catch it::

    try:
        value = binary_auroc(scores, labels)
    except OneClassError:
        value = math.nan

NaN values are an error too (their rank is undefined); infinite values are ordered like any other number.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["OneClassError", "auroc", "binary_auroc"]

# Query values searched per block in the pair count (bounds the int64 temporaries to 2 x 32 MB).
_BLOCK = 1 << 22


class OneClassError(ValueError):
    """ROC AUC asked for with no positive or no negative value."""


def _as_array(x: Any, name: str) -> np.ndarray:
    """A numpy view of an array or tensor (torch tensors are moved to the CPU; bfloat16 -> float32)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch tensor, without importing torch here
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":
            x = x.float()
        x = x.numpy()
    arr = np.asarray(x)
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(f"{name}: expected real (float, integer or bool) values, got dtype {arr.dtype}")
    return arr


def _check_no_nan(arr: np.ndarray, name: str) -> None:
    if np.issubdtype(arr.dtype, np.floating):
        n_nan = int(np.isnan(arr).sum())
        if n_nan:
            raise ValueError(f"{name}: {n_nan} NaN value(s); ROC AUC needs ordered values")


def auroc(positives: Any, negatives: Any, overwrite: bool = False) -> float:
    """Exact ROC AUC of ``positives`` (label 1) against ``negatives`` (label 0), ties counting one half.

    Counted in integer arithmetic: both sets are sorted and the smaller one is searched in the larger,
    ``2U = sum(#below + #at-or-below)``, then one division, so the only rounding is that final division.

    Args:
        positives: Values of the positive class, any shape (numpy array, torch tensor or sequence).
        negatives: Values of the negative class, any shape.
        overwrite: The arrays are scratch copies that may be sorted in place (saves one copy of each).

    Returns:
        The AUROC in [0, 1], unflipped.

    Raises:
        OneClassError: ``positives`` or ``negatives`` is empty.
        ValueError: NaN among the values.
        TypeError: non-numeric values.

    Memory: a sorted copy of each set (none with ``overwrite`` on owned, writeable arrays) plus int64
    search results for at most 4M query values at a time.
    """
    pos_arr, neg_arr = _as_array(positives, "positives"), _as_array(negatives, "negatives")
    n_pos, n_neg = pos_arr.size, neg_arr.size
    if n_pos == 0 or n_neg == 0:
        raise OneClassError(
            f"ROC AUC needs both classes: got {n_pos} positive and {n_neg} negative values "
            "(it is not defined with one class)"
        )
    _check_no_nan(pos_arr, "positives")
    _check_no_nan(neg_arr, "negatives")
    dtype = np.result_type(pos_arr.dtype, neg_arr.dtype)
    sorted_sets = []
    for values in (pos_arr, neg_arr):
        values = values.astype(dtype, copy=False).ravel()
        if overwrite and values.flags.writeable and values.flags.owndata:
            values.sort()
        else:
            values = np.sort(values)
        sorted_sets.append(values)
    pos, neg = sorted_sets
    # Search the smaller set in the larger; both sorted, so the searches walk memory in order.
    pos_are_queries = n_pos <= n_neg
    reference, queries = (neg, pos) if pos_are_queries else (pos, neg)
    n_ref = reference.size
    twice_u = 0  # Python int: no overflow
    for start in range(0, queries.size, _BLOCK):
        block = queries[start : start + _BLOCK]
        below = int(np.searchsorted(reference, block, side="left").sum(dtype=np.int64))  # reference < q
        at_or_below = int(np.searchsorted(reference, block, side="right").sum(dtype=np.int64))
        if pos_are_queries:
            # For each positive q: negatives below q count 1, negatives equal to q count 1/2.
            twice_u += below + at_or_below
        else:
            # For each negative q: positives above q count 1, positives equal to q count 1/2.
            twice_u += 2 * n_ref * block.size - below - at_or_below
    return twice_u / (2 * n_pos * n_neg)


def binary_auroc(scores: Any, labels: Any) -> float:
    """Exact ROC AUC of ``scores`` against binary ``labels`` (1 / True = positive), like ``roc_auc_score``.

    Args:
        scores: Values of any shape (numpy array or torch tensor, on any device).
        labels: Same number of elements; bool, or numbers in {0, 1}.

    Returns:
        The AUROC in [0, 1], unflipped.

    Raises:
        OneClassError: all labels are equal.
        ValueError: sizes differ, labels are not binary, or NaN among the scores.
    """
    values = _as_array(scores, "scores").ravel()
    flags = _as_array(labels, "labels").ravel()
    if values.size != flags.size:
        raise ValueError(f"scores has {values.size} values but labels has {flags.size}")
    positive = flags == 1
    if not np.logical_or(positive, flags == 0).all():
        bad = np.unique(flags[~np.logical_or(positive, flags == 0)])[:5]
        raise ValueError(f"labels: expected values in {{0, 1}}, found {bad.tolist()}")
    return auroc(values[positive], values[~positive], overwrite=True)
