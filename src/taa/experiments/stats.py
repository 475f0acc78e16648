"""Summary statistics for repeated runs: mean, standard deviation and a t-based 95 % interval.

SciPy is not a dependency, so Student's t quantile is computed here: the t distribution
function is written through the regularised incomplete beta function (evaluated by its
continued fraction), and the quantile is found by bisection on it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from taa.errors import ConfigError

_CONTINUED_FRACTION_STEPS = 300
_TINY = 1e-300
_EPSILON = 1e-15


def _incomplete_beta_fraction(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz evaluation)."""
    numerator_c = 1.0
    denominator_d = 1.0 - (a + b) * x / (a + 1.0)
    denominator_d = 1.0 / (denominator_d if abs(denominator_d) > _TINY else _TINY)
    result = denominator_d
    for step in range(1, _CONTINUED_FRACTION_STEPS + 1):
        doubled = 2 * step
        # even term
        coefficient = step * (b - step) * x / ((a + doubled - 1.0) * (a + doubled))
        denominator_d = 1.0 + coefficient * denominator_d
        denominator_d = 1.0 / (denominator_d if abs(denominator_d) > _TINY else _TINY)
        numerator_c = 1.0 + coefficient / numerator_c
        numerator_c = numerator_c if abs(numerator_c) > _TINY else _TINY
        result *= denominator_d * numerator_c
        # odd term
        coefficient = -(a + step) * (a + b + step) * x / ((a + doubled) * (a + doubled + 1.0))
        denominator_d = 1.0 + coefficient * denominator_d
        denominator_d = 1.0 / (denominator_d if abs(denominator_d) > _TINY else _TINY)
        numerator_c = 1.0 + coefficient / numerator_c
        numerator_c = numerator_c if abs(numerator_c) > _TINY else _TINY
        change = denominator_d * numerator_c
        result *= change
        if abs(change - 1.0) < _EPSILON:
            break
    return result


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """``I_x(a, b)``, the regularised incomplete beta function, for ``a, b > 0`` and x in [0, 1].

    Example:
        >>> round(regularized_incomplete_beta(1.0, 1.0, 0.3), 12)  # uniform: I_x(1, 1) = x
        0.3
    """
    if not 0.0 <= x <= 1.0:
        raise ConfigError(f"incomplete beta needs x in [0, 1], got {x}")
    if x in (0.0, 1.0):
        return x
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    front = math.exp(log_front)
    # The continued fraction converges fast only below the mean; use the symmetry otherwise.
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _incomplete_beta_fraction(a, b, x) / a
    return 1.0 - front * _incomplete_beta_fraction(b, a, 1.0 - x) / b


def t_cdf(value: float, degrees_of_freedom: float) -> float:
    """Distribution function of Student's t with ``degrees_of_freedom`` (> 0).

    Example:
        >>> t_cdf(0.0, 5)
        0.5
        >>> round(t_cdf(1.0, 1), 12)  # Cauchy: 1/2 + atan(1)/pi
        0.75
    """
    if degrees_of_freedom <= 0:
        raise ConfigError(f"degrees of freedom must be positive, got {degrees_of_freedom}")
    if value == 0.0:
        return 0.5
    x = degrees_of_freedom / (degrees_of_freedom + value * value)
    tail = 0.5 * regularized_incomplete_beta(degrees_of_freedom / 2.0, 0.5, x)
    return 1.0 - tail if value > 0 else tail


def t_quantile(probability: float, degrees_of_freedom: float) -> float:
    """Quantile of Student's t: the ``x`` with ``t_cdf(x, degrees_of_freedom) == probability``.

    Found by bisection to about 1e-12 relative precision.

    Example:
        >>> round(t_quantile(0.975, 2), 3)
        4.303
        >>> round(t_quantile(0.975, 10), 3)
        2.228
    """
    if not 0.0 < probability < 1.0:
        raise ConfigError(f"t quantile needs a probability in (0, 1), got {probability}")
    if degrees_of_freedom <= 0:
        raise ConfigError(f"degrees of freedom must be positive, got {degrees_of_freedom}")
    if probability == 0.5:
        return 0.0
    if probability < 0.5:
        return -t_quantile(1.0 - probability, degrees_of_freedom)

    low, high = 0.0, 1.0
    while t_cdf(high, degrees_of_freedom) < probability:
        low, high = high, high * 2.0
    for _ in range(200):
        middle = 0.5 * (low + high)
        if t_cdf(middle, degrees_of_freedom) < probability:
            low = middle
        else:
            high = middle
        if high - low <= 1e-12 * max(1.0, high):
            break
    return 0.5 * (low + high)


@dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation and a two-sided confidence interval of repeated values.

    Attributes:
        count: number of finite values used (NaN and infinite values are left out).
        mean: their mean (NaN when ``count`` is 0).
        std: sample standard deviation, ``ddof=1`` (NaN when ``count`` < 2).
        half_width: ``t_{(1+level)/2, count-1} * std / sqrt(count)`` (NaN when ``count`` < 2).
        level: the confidence level, 0.95 by default.
        missing: how many non-finite values were left out.
    """

    count: int
    mean: float
    std: float
    half_width: float
    level: float = 0.95
    missing: int = 0

    @property
    def low(self) -> float:
        """Lower end of the interval."""
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        """Upper end of the interval."""
        return self.mean + self.half_width


def summarize(values: Iterable[float], level: float = 0.95) -> Summary:
    """Summarise repeated measurements (for example one AUC per seed).

    The interval is the usual t interval for a mean, which assumes the values are
    independent draws from a roughly normal distribution; with 3 seeds it is wide.

    Example:
        >>> summary = summarize([0.70, 0.72, 0.74])
        >>> round(summary.mean, 6), round(summary.std, 6), round(summary.half_width, 4)
        (0.72, 0.02, 0.0497)
    """
    if not 0.0 < level < 1.0:
        raise ConfigError(f"confidence level must be in (0, 1), got {level}")
    items = [float(value) for value in values]
    finite = [value for value in items if math.isfinite(value)]
    missing = len(items) - len(finite)
    count = len(finite)
    if count == 0:
        return Summary(0, math.nan, math.nan, math.nan, level, missing)
    mean = math.fsum(finite) / count
    if count < 2:
        return Summary(1, mean, math.nan, math.nan, level, missing)
    variance = math.fsum((value - mean) ** 2 for value in finite) / (count - 1)
    std = math.sqrt(variance)
    half_width = t_quantile(0.5 + level / 2.0, count - 1) * std / math.sqrt(count)
    return Summary(count, mean, std, half_width, level, missing)


@dataclass(frozen=True)
class GroupSummary:
    """A :class:`Summary` of one metric over the seeds of one grid group.

    Attributes:
        model: model name.
        method: adaptation method.
        fraction: target sample fraction.
        task: task name.
        metric: metric name (``auc``, ``logloss`` or ``gauc``).
        summary: the statistics over seeds.
    """

    model: str
    method: str
    fraction: float
    task: str
    metric: str
    summary: Summary
