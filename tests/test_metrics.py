"""Whole-split metrics: AUC against a brute-force pair count, log-loss and group AUC by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from taa.errors import DataError, UndefinedMetricWarning
from taa.train.metrics import group_auc, log_loss, roc_auc, task_metrics


def brute_force_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Share of (positive, negative) pairs ordered correctly; a tie counts one half."""
    positives = scores[labels == 1]
    negatives = scores[labels == 0]
    wins = 0.0
    for positive in positives:
        for negative in negatives:
            wins += 1.0 if positive > negative else 0.5 if positive == negative else 0.0
    return wins / (len(positives) * len(negatives))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_matches_brute_force_pair_count_with_ties(seed: int) -> None:
    """Check that the rank AUC equals the pair count on data full of tied scores."""
    generator = np.random.default_rng(seed)
    labels = (generator.random(300) < 0.3).astype(np.int64)
    scores = generator.integers(0, 12, size=300) / 11.0  # 12 distinct values: many ties
    assert roc_auc(labels, scores) == pytest.approx(brute_force_auc(labels, scores), abs=1e-12)


def test_auc_of_a_small_case_worked_by_hand() -> None:
    """Check that AUC counts a positive-negative tie as one half.

    Positives 0.8 and 0.4, negatives 0.4 and 0.1: pairs (0.8>0.4), (0.8>0.1), (0.4=0.4)
    and (0.4>0.1) give (1 + 1 + 0.5 + 1) / 4 = 0.875.
    """
    assert roc_auc([1, 0, 1, 0], [0.8, 0.4, 0.4, 0.1]) == pytest.approx(0.875)


def test_auc_is_nan_for_one_class() -> None:
    """Check that AUC of a single-class split is NaN, not an error."""
    assert math.isnan(roc_auc([0, 0, 0], [0.1, 0.2, 0.3]))


def test_log_loss_worked_by_hand() -> None:
    """Check that log-loss is the mean of -ln p for positives and -ln(1 - p) for negatives."""
    expected = -(math.log(0.9) + math.log(1 - 0.2) + math.log(0.3)) / 3
    assert log_loss([1, 0, 1], [0.9, 0.2, 0.3]) == pytest.approx(expected, rel=1e-12)


def test_log_loss_clips_certain_wrong_predictions() -> None:
    """Check that a probability of exactly 0 for a positive costs -ln(1e-7), not infinity."""
    assert log_loss([1], [0.0]) == pytest.approx(-math.log(1e-7), rel=1e-9)


def test_group_auc_worked_by_hand() -> None:
    """Check that group AUC weights each two-class group's AUC by its row count.

    Group 1 (3 rows): positive 0.9 above both negatives -> AUC 1.
    Group 2 (4 rows): positives 0.2, 0.6; negatives 0.5, 0.7 -> pairs won 0, 0, 1, 0 -> 0.25.
    Group 3 (2 rows, negatives only) is skipped.
    GAUC = (3 * 1 + 4 * 0.25) / 7 = 4 / 7.
    """
    labels = [0, 1, 0, 1, 0, 1, 0, 0, 0]
    scores = [0.1, 0.9, 0.3, 0.2, 0.5, 0.6, 0.7, 0.4, 0.8]
    groups = [1, 1, 1, 2, 2, 2, 2, 3, 3]
    assert group_auc(labels, scores, groups) == pytest.approx(4 / 7, rel=1e-12)


def test_group_auc_does_not_depend_on_row_order() -> None:
    """Check that shuffling rows (groups interleaved) leaves group AUC unchanged."""
    generator = np.random.default_rng(3)
    labels = (generator.random(200) < 0.4).astype(int)
    scores = generator.integers(0, 5, size=200).astype(float)
    groups = generator.integers(0, 20, size=200)
    order = generator.permutation(200)
    expected = group_auc(labels, scores, groups)
    assert group_auc(labels[order], scores[order], groups[order]) == pytest.approx(expected)


def test_group_auc_equals_brute_force_per_group() -> None:
    """Check group AUC against a per-group pair count averaged with row-count weights."""
    generator = np.random.default_rng(4)
    labels = (generator.random(150) < 0.35).astype(int)
    scores = generator.integers(0, 6, size=150).astype(float)
    groups = generator.integers(0, 12, size=150)
    total = weight = 0.0
    for group in np.unique(groups):
        member = groups == group
        if 0 < labels[member].sum() < member.sum():
            total += member.sum() * brute_force_auc(labels[member], scores[member])
            weight += member.sum()
    assert group_auc(labels, scores, groups) == pytest.approx(total / weight, rel=1e-12)


def test_task_metrics_gives_nan_and_a_warning_naming_the_task() -> None:
    """Check that a task with one class gets NaN AUC and GAUC and a warning naming it."""
    labels = np.array([[1, 0], [0, 0], [1, 0], [0, 0]], dtype=float)
    probabilities = np.full((4, 2), 0.5)
    with pytest.warns(UndefinedMetricWarning, match="AUC of task 'conversion' is undefined"):
        result = task_metrics(labels, probabilities, [1, 1, 2, 2], ("click", "conversion"))
    assert math.isnan(result["conversion"]["auc"])
    assert math.isnan(result["conversion"]["gauc"])
    assert result["conversion"]["logloss"] == pytest.approx(math.log(2))
    assert result["click"]["auc"] == pytest.approx(0.5)
    assert result["click"]["positives"] == 2


def test_task_metrics_refuses_rows_without_labels() -> None:
    """Check that NaN labels are refused with a message pointing to taa predict."""
    with pytest.raises(DataError, match=r"rows without labels.*taa predict"):
        task_metrics(np.full((2, 1), np.nan), np.full((2, 1), 0.5), [0, 0], ("click",))


def test_metrics_refuse_non_binary_labels() -> None:
    """Check that a label of 2 (the raw purchase code) is refused with the value named."""
    with pytest.raises(DataError, match=r"labels must be 0 or 1, found \[2.0\]"):
        roc_auc([0, 2], [0.1, 0.2])


def test_metrics_refuse_non_finite_scores() -> None:
    """Check that NaN scores are refused, naming how many."""
    with pytest.raises(DataError, match="1 scores are not finite"):
        roc_auc([0, 1], [0.1, float("nan")])
