"""Tests of the summary statistics used by grids: t quantiles, mean, std and 95 % intervals."""

from __future__ import annotations

import math

import pytest

from taa.errors import ConfigError
from taa.experiments.stats import (
    regularized_incomplete_beta,
    summarize,
    t_cdf,
    t_quantile,
)

# Two-sided 95 % critical values t_{0.975, df} from printed tables (4 significant decimals).
TABLE_0975 = [
    (1, 12.7062),
    (2, 4.3027),
    (3, 3.1824),
    (4, 2.7764),
    (5, 2.5706),
    (9, 2.2622),
    (10, 2.2281),
    (30, 2.0423),
]


@pytest.mark.parametrize(("degrees_of_freedom", "expected"), TABLE_0975)
def test_t_quantile_matches_printed_table(degrees_of_freedom: int, expected: float) -> None:
    """Check that t_{0.975, df} agrees with printed t tables to four decimals."""
    assert t_quantile(0.975, degrees_of_freedom) == pytest.approx(expected, abs=6e-5)


@pytest.mark.parametrize("probability", [0.55, 0.9, 0.975, 0.999])
def test_t_quantile_one_degree_is_cauchy(probability: float) -> None:
    """Check that with one degree of freedom the quantile is the Cauchy tan(pi (p - 1/2))."""
    expected = math.tan(math.pi * (probability - 0.5))
    assert t_quantile(probability, 1) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("probability", [0.6, 0.9, 0.975, 0.999])
def test_t_quantile_two_degrees_closed_form(probability: float) -> None:
    """Check that with two degrees of freedom the quantile is (2p - 1) / sqrt(2 p (1 - p))."""
    expected = (2 * probability - 1) / math.sqrt(2 * probability * (1 - probability))
    assert t_quantile(probability, 2) == pytest.approx(expected, rel=1e-9)


def test_t_quantile_approaches_normal() -> None:
    """Check that for many degrees of freedom t_{0.975} is the normal 1.959964 plus its correction.

    The first term of the Cornish-Fisher expansion is (z^3 + z) / (4 df), about 2.4e-6 here.
    """
    normal = 1.959963985
    expected = normal + (normal**3 + normal) / (4 * 1_000_000)
    assert t_quantile(0.975, 1_000_000) == pytest.approx(expected, abs=1e-8)


def test_t_quantile_is_antisymmetric() -> None:
    """Check that the lower quantile is minus the upper one."""
    assert t_quantile(0.025, 4) == pytest.approx(-t_quantile(0.975, 4), rel=1e-12)


def test_t_cdf_inverts_quantile() -> None:
    """Check that the distribution function at a quantile gives back the probability."""
    assert t_cdf(t_quantile(0.8, 7), 7) == pytest.approx(0.8, abs=1e-10)


def test_incomplete_beta_closed_form() -> None:
    """Check that I_x(a, 1) = x^a, a closed form of the incomplete beta function."""
    assert regularized_incomplete_beta(3.0, 1.0, 0.4) == pytest.approx(0.4**3, rel=1e-10)


@pytest.mark.parametrize("probability", [0.0, 1.0, 1.5])
def test_t_quantile_rejects_probability_outside_open_interval(probability: float) -> None:
    """Check that a probability outside (0, 1) is refused with its value in the message."""
    with pytest.raises(ConfigError, match=r"probability in \(0, 1\), got"):
        t_quantile(probability, 3)


def test_t_quantile_rejects_non_positive_degrees() -> None:
    """Check that zero degrees of freedom are refused."""
    with pytest.raises(ConfigError, match="degrees of freedom must be positive, got 0"):
        t_quantile(0.975, 0)


def test_summarize_three_values_by_hand() -> None:
    """Check mean, std and half-width of 0.70, 0.72, 0.74 against arithmetic done by hand.

    mean = 0.72; deviations -0.02, 0, 0.02 -> variance (0.0004 + 0.0004) / 2 = 0.0004,
    std = 0.02; half-width = 4.302653 * 0.02 / sqrt(3) = 0.0496828.
    """
    summary = summarize([0.70, 0.72, 0.74])
    assert summary.count == 3
    assert summary.mean == pytest.approx(0.72, abs=1e-12)
    assert summary.std == pytest.approx(0.02, abs=1e-12)
    assert summary.half_width == pytest.approx(0.0496828, abs=1e-6)
    assert summary.low == pytest.approx(0.72 - 0.0496828, abs=1e-6)
    assert summary.high == pytest.approx(0.72 + 0.0496828, abs=1e-6)


def test_summarize_five_values_by_hand() -> None:
    """Check the interval of 1, 2, 3, 4, 5: mean 3, std sqrt(2.5), t_{0.975,4} = 2.776445."""
    summary = summarize([1.0, 2.0, 3.0, 4.0, 5.0])
    assert summary.mean == pytest.approx(3.0)
    assert summary.std == pytest.approx(math.sqrt(2.5))
    assert summary.half_width == pytest.approx(2.776445 * math.sqrt(2.5) / math.sqrt(5), rel=1e-6)


def test_summarize_single_value_has_no_interval() -> None:
    """Check that one value gives its mean and NaN std and half-width (no spread is known)."""
    summary = summarize([0.8])
    assert summary.mean == 0.8
    assert math.isnan(summary.std)
    assert math.isnan(summary.half_width)


def test_summarize_leaves_out_nan_and_counts_it() -> None:
    """Check that NaN values (an undefined AUC) are left out of the statistics and counted."""
    summary = summarize([0.6, math.nan, 0.8])
    assert summary.count == 2
    assert summary.missing == 1
    assert summary.mean == pytest.approx(0.7)


def test_summarize_rejects_level_outside_open_interval() -> None:
    """Check that a confidence level of 1 is refused."""
    with pytest.raises(ConfigError, match=r"confidence level must be in \(0, 1\), got 1"):
        summarize([1.0, 2.0], level=1.0)
