"""What one `taa` process sets and shows beyond its results: the OpenMP spin setting it puts
in its environment, torch's thread count that tests must not leak, and the undefined-metric
warnings it gives once per split and task.
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from taa.errors import UndefinedMetricWarning
from taa.train.metrics import reset_undefined_metric_warnings, task_metrics

CONFTEST = Path(__file__).resolve().parent / "conftest.py"

# Runs the command line's entry point in a fresh process (torch not yet imported), then
# prints what the environment holds afterwards.
CHILD = """
import os, sys
from taa.cli.main import main
main(sys.argv[1:])
for name in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY"):
    print(f"{name}={os.environ.get(name, '<unset>')}")
print(f"torch imported={'torch' in sys.modules}")
"""


def _run_taa(environment: dict[str, str]) -> list[str]:
    """Lines printed by ``taa --version`` run in a child process with ``environment`` added
    to ours, less any OpenMP wait setting of ours.
    """
    base = {
        name: value
        for name, value in os.environ.items()
        if name not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")
    }
    completed = subprocess.run(
        [sys.executable, "-c", CHILD, "--version"],
        env={**base, **environment},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return completed.stdout.splitlines()


@pytest.mark.parametrize(
    ("environment", "expected"),
    [
        ({}, ["GOMP_SPINCOUNT=1000", "OMP_WAIT_POLICY=<unset>"]),  # docs/performance.md
        ({"GOMP_SPINCOUNT": "25"}, ["GOMP_SPINCOUNT=25", "OMP_WAIT_POLICY=<unset>"]),
        ({"OMP_WAIT_POLICY": "PASSIVE"}, ["GOMP_SPINCOUNT=<unset>", "OMP_WAIT_POLICY=PASSIVE"]),
    ],
)
def test_taa_sets_spin_count_only_when_the_user_did_not(
    environment: dict[str, str], expected: list[str]
) -> None:
    """Check that `taa` sets GOMP_SPINCOUNT=1000 before torch loads when neither it nor
    OMP_WAIT_POLICY is set, and leaves a user's own setting alone.
    """
    lines = _run_taa(environment)
    assert lines[0].startswith("taa, version ")
    assert lines[1:] == [*expected, "torch imported=False"]


def test_thread_count_set_by_one_test_is_restored_for_the_next(
    pytester: pytest.Pytester,
) -> None:
    """Check that the conftest puts torch's thread count back after a test that changed it
    the way `--threads` does, so that the next test sees the count it started with.
    """
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makepyfile(
        test_threads="""
        import torch
        from taa.train.runtime import apply_threads

        BEFORE = torch.get_num_threads()

        def test_changes_threads():
            apply_threads(BEFORE + 1)
            assert torch.get_num_threads() == BEFORE + 1

        def test_sees_threads_restored():
            assert torch.get_num_threads() == BEFORE
        """
    )
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=2)


# Four rows: click defined (two of each class, both classes on each page), conversion never.
LABELS = np.array([[1, 0], [0, 0], [1, 0], [0, 0]])
PROBABILITIES = np.array([[0.8, 0.1], [0.3, 0.2], [0.6, 0.1], [0.4, 0.3]])
GROUPS = [1, 1, 2, 2]
TASKS = ("click", "conversion")
B_TEST_MESSAGE = (
    "AUC of task 'conversion' is undefined on B/test: all 4 rows have label 0 (one class "
    "only); reported as NaN"
)


def _undefined(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(item.message) for item in caught if item.category is UndefinedMetricWarning]


def test_undefined_auc_is_warned_once_over_repeated_evaluations() -> None:
    """Check that evaluating the same one-class split three times (three epochs) gives the
    first warning only, and NaN every time, even with every warning shown ("always").
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = [
            task_metrics(LABELS, PROBABILITIES, GROUPS, TASKS, where="B/test") for _ in range(3)
        ]
    assert _undefined(caught) == [B_TEST_MESSAGE]
    assert [math.isnan(result["conversion"]["auc"]) for result in results] == [True] * 3
    assert results[2]["click"]["auc"] == pytest.approx(1.0)


def test_undefined_auc_is_warned_once_across_call_sites() -> None:
    """Check that two evaluations of one split from two places in the code (a run's
    validation and another run's final evaluation) give one warning under Python's default
    filter, which by itself only merges warnings raised from the same line.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        task_metrics(LABELS, PROBABILITIES, GROUPS, TASKS, where="B/test")
        task_metrics(LABELS, PROBABILITIES, GROUPS, TASKS, where="B/test")
    assert _undefined(caught) == [B_TEST_MESSAGE]


def test_undefined_metrics_of_other_splits_and_tasks_are_each_warned() -> None:
    """Check that each (split, task, metric) gets its own first warning: conversion AUC on two
    splits, then the group AUC of click on a split whose pages each hold one class.
    """
    one_class_pages = [1, 2, 3, 4]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        task_metrics(LABELS, PROBABILITIES, GROUPS, TASKS, where="B/test")
        task_metrics(LABELS, PROBABILITIES, GROUPS, TASKS, where="B/valid")
        task_metrics(LABELS, PROBABILITIES, one_class_pages, TASKS, where="B/valid")
    assert _undefined(caught) == [
        B_TEST_MESSAGE,
        B_TEST_MESSAGE.replace("B/test", "B/valid"),
        "group AUC of task 'click' is undefined on B/valid: no group holds both a positive "
        "and a negative; reported as NaN",
    ]


def test_repeated_undefined_metric_is_logged_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    """Check that a repeat, not warned again, is still logged at DEBUG level."""
    with warnings.catch_warnings(), caplog.at_level(logging.DEBUG, logger="taa.train.metrics"):
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        task_metrics(LABELS, PROBABILITIES, GROUPS, TASKS, where="B/test")
        task_metrics(LABELS, PROBABILITIES, GROUPS, TASKS, where="B/test")
    assert caplog.messages == [f"again (warned once already): {B_TEST_MESSAGE}"]


@pytest.mark.parametrize("how", ["new filters", "reset"])
def test_undefined_metric_is_warned_again_after_filters_change_or_reset(how: str) -> None:
    """Check that the record of given warnings starts afresh when the warning filters change
    (as Python's own once-only registry does) or when it is reset explicitly.
    """
    with warnings.catch_warnings(record=True) as first:
        warnings.simplefilter("always")
        task_metrics(LABELS, PROBABILITIES, GROUPS, TASKS, where="B/test")
        if how == "reset":
            reset_undefined_metric_warnings()
            task_metrics(LABELS, PROBABILITIES, GROUPS, TASKS, where="B/test")
    with warnings.catch_warnings(record=True) as second:
        warnings.simplefilter("always")
        task_metrics(LABELS, PROBABILITIES, GROUPS, TASKS, where="B/test")
    expected = [B_TEST_MESSAGE] * (2 if how == "reset" else 1)
    assert (_undefined(first), _undefined(second)) == (expected, [B_TEST_MESSAGE])


def test_taa_warnings_print_as_one_line_without_library_source() -> None:
    """Check that the command line shows taa's warnings as one line naming the category,
    and leaves other warnings in Python's format with their location."""
    from taa.cli.main import format_warning
    from taa.errors import DataRepairWarning

    shown = format_warning(
        DataRepairWarning("2 values imputed"), DataRepairWarning, "/lib/x.py", 7, "checks = ["
    )
    assert shown == "warning: 2 values imputed (DataRepairWarning)\n"
    other = format_warning(UserWarning("careful"), UserWarning, "/lib/y.py", 9, "z = 1")
    assert "/lib/y.py:9" in other and "careful" in other
