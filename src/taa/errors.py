"""Exceptions and warning categories raised by taa.

Every error raised on user input is a :class:`TaaError` whose message names the thing at
fault (file, row, column or option), the value received, what was allowed and the fix.
"""


class TaaError(Exception):
    """Base class of every error taa raises on bad input or configuration."""


class DataError(TaaError, ValueError):
    """Input data is malformed: wrong columns, bad values, empty split, corrupt archive."""


class ConfigError(TaaError, ValueError):
    """An option or configuration value is out of its allowed range."""


class SchemaMismatchError(TaaError, ValueError):
    """A checkpoint or export was made for another dataset schema than the one given."""


class TaaWarning(UserWarning):
    """Base category of taa's warnings."""


class UndefinedMetricWarning(TaaWarning):
    """A metric is undefined (for example AUC when a split holds one class only)."""


class DataRepairWarning(TaaWarning):
    """Input data was repaired as an option asked (imputed values, fixed labels)."""


class CriticDivergenceWarning(TaaWarning):
    """A critic's loss or Wasserstein estimate became non-finite or exploded."""


class ConvergenceWarning(TaaWarning):
    """Training stopped without the validation metric improving."""
