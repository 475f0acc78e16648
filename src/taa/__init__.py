"""taa: Task-Adversarial Adaptation of multi-task recommendation models.

Shape letters used throughout the package:

* ``B`` batch size, ``F`` categorical fields, ``N`` numerical fields,
* ``D`` width of a task feature (what a critic sees), ``T`` number of tasks.
"""

from taa.errors import ConfigError, DataError, SchemaMismatchError, TaaError

__version__ = "0.1.0"

__all__ = ["ConfigError", "DataError", "SchemaMismatchError", "TaaError", "__version__"]
