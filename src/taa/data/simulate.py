"""Simulated AliExpress-like countries, written in the raw Tianchi layout and the processed one.

The simulator is the default data of the demo, the tests and the benchmarks. Each country
is a set of result pages (5-30 items each) whose rows look like the real AliExpress search
log: 16 small-integer categorical fields, 63 numerical fields in ``[0, 1]``, a click rate of
about 2 % and a purchase rate of about 0.07 %. One knob, ``shift`` in ``[0, 1]``, moves the
countries apart in two ways at once:

* covariate shift: the hidden page and item factors behind the numerical features change
  their means and scales, the feature offsets and zero rates move, and the category
  frequencies change;
* concept shift: the click and purchase weights of each country are the shared weights
  turned by an angle of ``shift * 45`` degrees towards a direction of the country's own,
  so what predicts a click in one country predicts it less well in another.

At ``shift=0`` every country draws from the same distribution; only ``categorical_1``, a
per-country code as in the real data, tells them apart. The labels come from a logistic
model whose intercepts are set so the rates hit their targets, and whose true-weight click
AUC is about 0.75-0.8 (``simulation.json`` records it), so the task is not trivially
separable.

Output folder::

    OUT/simulation.json                               # config, per-country rates and AUCs
    OUT/raw/aliexpress_XX_datasets.zip                # per country, XX upper case
        xx_user_train.zip -> xx_user_train.csv        # 33 columns, no header
        xx_user_test.zip, xx_item_train.zip, xx_item_test.zip   # items: 49 columns
    OUT/processed/AliExpress_XX/train.csv, test.csv   # 82 columns with a header

Everything is drawn from ``numpy.random.SeedSequence([seed, <country code>, ...])``, so a
country's rows depend on the seed and its code, not on which other countries were asked
for (only ``categorical_1``, the country's position in the list, does).
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from taa.data.readers.tianchi import (
    ITEM_CATEGORICAL,
    ITEM_COLUMNS,
    ITEM_NUMERICAL,
    USER_CATEGORICAL,
    USER_COLUMNS,
    USER_NUMERICAL,
)
from taa.errors import ConfigError
from taa.io import atomic_directory, atomic_write_json

logger = logging.getLogger(__name__)

# Column roles of the raw files, 1-based as the community numbers them: the reader's own.
USER_CATEGORICAL_COLUMNS = USER_CATEGORICAL
USER_NUMERICAL_COLUMNS = USER_NUMERICAL
ITEM_CATEGORICAL_COLUMNS = ITEM_CATEGORICAL
ITEM_NUMERICAL_COLUMNS = ITEM_NUMERICAL
LABEL_COLUMN = ITEM_COLUMNS

CATEGORICAL_NAMES = tuple(f"categorical_{index}" for index in range(1, 17))
NUMERICAL_NAMES = tuple(f"numerical_{index}" for index in range(1, 64))
PROCESSED_COLUMNS = ("search_id", *CATEGORICAL_NAMES, *NUMERICAL_NAMES, "click", "conversion")

# Codes per categorical field after the country field (categorical_2..16); the largest
# code of each field matches the largest seen in the real rows.
CATEGORY_SIZES = (4, 6, 2, 21, 7, 50, 8, 7, 2, 2, 2, 2, 2, 2, 2)
USER_FIELDS_AFTER_COUNTRY = 8  # categorical_2..9 are page-level, categorical_10..16 per item

USER_FACTORS = 6
ITEM_FACTORS = 10
PAGE_SIZE_RANGE = (5, 30)
PAGE_EFFECT_STD = 0.5
MAX_TURN = math.pi / 4  # the concept-shift angle at shift = 1
CALIBRATION_ROWS = 100_000
CHUNK_ROWS = 65_536
LAYOUTS = ("both", "raw", "processed")
_COUNTRY_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9]{0,7}$")

# Stream numbers that keep each use of randomness independent of the others.
_WORLD, _COUNTRY, _CALIBRATION, _PAGES, _ROWS = 0, 1, 2, 3, 4


@dataclass
class SimulateConfig:
    """Options of :func:`simulate_countries` and ``taa simulate``.

    Args:
        out: output folder (refused if it exists, unless ``overwrite``).
        countries: country codes, one domain each (letters and digits, e.g. ``es``).
        rows: item rows per country, train and test together.
        shift: how far apart the countries are, from 0 (same distribution) to 1.
        seed: seed of every random draw.
        layout: ``both``, ``raw`` (Tianchi zips) or ``processed`` (82-column CSVs).
        test_fraction: share of each country's rows in its test split.
        click_rate: target click rate (CTR) of a country at ``shift=0``.
        conversion_rate: target click-and-purchase rate (CTCVR) at ``shift=0``.
        overwrite: replace an existing output folder.
    """

    out: Path = field(metadata={"help": "Output folder (refused if it exists, see --overwrite)."})
    countries: tuple[str, ...] = field(
        default=("es", "fr", "nl", "us"),
        metadata={"help": "Comma-separated country codes, one domain each (e.g. es,fr)."},
    )
    rows: int = field(
        default=200_000, metadata={"help": "Item rows per country, train and test together."}
    )
    shift: float = field(
        default=0.5,
        metadata={"help": "Distance between countries, 0 (identical) to 1 (far apart)."},
    )
    seed: int = field(default=0, metadata={"help": "Seed of every random draw."})
    layout: Literal["both", "raw", "processed"] = field(
        default="both",
        metadata={"help": "Which layouts to write.", "choices": list(LAYOUTS)},
    )
    test_fraction: float = field(
        default=0.25, metadata={"help": "Share of each country's rows in its test split."}
    )
    click_rate: float = field(
        default=0.02, metadata={"help": "Target click rate (CTR) of a country at shift 0."}
    )
    conversion_rate: float = field(
        default=0.0007,
        metadata={"help": "Target click-and-purchase rate (CTCVR) of a country at shift 0."},
    )
    overwrite: bool = field(
        default=False, metadata={"help": "Replace the output folder if it exists."}
    )

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if isinstance(self.countries, str):
            self.countries = tuple(part.strip() for part in self.countries.split(","))
        self.countries = tuple(str(code).strip() for code in self.countries if str(code).strip())
        self._check()

    def _check(self) -> None:
        if not self.countries:
            raise ConfigError("option --countries is empty; give at least one code, e.g. es,fr")
        for code in self.countries:
            if not _COUNTRY_PATTERN.match(code):
                raise ConfigError(
                    f"option --countries: {code!r} is not a country code; use 1-8 letters or "
                    "digits starting with a letter, e.g. es,fr"
                )
        lowered = [code.lower() for code in self.countries]
        repeated = sorted({code for code in lowered if lowered.count(code) > 1})
        if repeated:
            raise ConfigError(
                f"option --countries names {repeated} more than once (codes ignore case); "
                "give each country once"
            )
        if not 0.0 <= self.shift <= 1.0:
            raise ConfigError(f"option --shift must be in [0, 1], got {self.shift}")
        if self.layout not in LAYOUTS:
            raise ConfigError(
                f"option --layout must be one of {list(LAYOUTS)}, got {self.layout!r}"
            )
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(
                f"option --test-fraction must be strictly between 0 and 1, got {self.test_fraction}"
            )
        train_rows, test_rows = self.split_rows()
        if train_rows < 1 or test_rows < 1:
            raise ConfigError(
                f"option --rows {self.rows} with --test-fraction {self.test_fraction} leaves "
                f"{train_rows} train and {test_rows} test rows; raise --rows so both have rows"
            )
        if not 0.0 < self.click_rate <= 0.5:
            raise ConfigError(f"option --click-rate must be in (0, 0.5], got {self.click_rate}")
        if not 0.0 < self.conversion_rate < self.click_rate:
            raise ConfigError(
                f"option --conversion-rate must be in (0, --click-rate {self.click_rate}) since a "
                f"purchase needs a click, got {self.conversion_rate}"
            )

    def split_rows(self) -> tuple[int, int]:
        """Item rows of the train and test split of each country."""
        test_rows = round(self.rows * self.test_fraction)
        return self.rows - test_rows, test_rows


@dataclass
class _Block:
    """How a block of numerical features (page-level or item-level) comes from hidden factors.

    A row's factors are ``mean + scale * normal(K)``; feature ``j`` is
    ``sigmoid(offset_j + gain_j * loadings_j . factors + noise_j * normal())``, set to an
    exact zero with probability ``zero_j``, put on a grid of ``1/levels_j`` when
    ``levels_j > 0``, and rounded to 6 decimals as in the real files.
    """

    mean: np.ndarray  # [K]
    scale: np.ndarray  # [K]
    loadings: np.ndarray  # [C, K]
    offset: np.ndarray  # [C]
    gain: np.ndarray  # [C]
    noise: np.ndarray  # [C]
    zero: np.ndarray  # [C]
    levels: np.ndarray  # [C] int

    @classmethod
    def draw_world(cls, rng: np.random.Generator, columns: int, factors: int) -> _Block:
        return cls(
            mean=np.zeros(factors),
            scale=np.ones(factors),
            loadings=rng.normal(size=(columns, factors)) / math.sqrt(factors),
            offset=rng.uniform(-2.5, 0.5, size=columns),
            gain=rng.uniform(0.8, 1.5, size=columns),
            noise=rng.uniform(0.3, 0.7, size=columns),
            zero=_sigmoid(rng.uniform(-4.0, 0.0, size=columns)),
            levels=np.zeros(columns, dtype=np.int64),
        )

    def moved(self, rng: np.random.Generator, shift: float) -> _Block:
        """This block in a country ``shift`` away: factor means and scales, offsets, zeros."""
        factors, columns = len(self.mean), len(self.offset)
        zero_logit = np.log(self.zero) - np.log1p(-self.zero)
        return _Block(
            mean=self.mean + shift * 0.8 * rng.normal(size=factors),
            scale=self.scale * np.exp(shift * 0.3 * rng.normal(size=factors)),
            loadings=self.loadings,
            offset=self.offset + shift * 0.3 * rng.normal(size=columns),
            gain=self.gain,
            noise=self.noise,
            zero=_sigmoid(zero_logit + shift * 0.5 * rng.normal(size=columns)),
            levels=self.levels,
        )

    def draw(
        self, rng: np.random.Generator, count: int, features: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """Factors ``[count, K]`` and features ``[count, C]`` (``[count, 0]`` if not asked)."""
        factors = self.mean + self.scale * rng.normal(size=(count, len(self.mean)))
        if not features:
            return factors, np.zeros((count, 0))
        noise = self.noise * rng.normal(size=(count, len(self.offset)))
        values = _sigmoid(self.offset + self.gain * (factors @ self.loadings.T) + noise)
        grid = self.levels > 0
        values[:, grid] = np.round(values[:, grid] * self.levels[grid]) / self.levels[grid]
        values[rng.random(values.shape) < self.zero] = 0.0
        return factors, np.round(values, 6)


@dataclass
class _Country:
    """Everything that decides a country's rows; the world itself is a country at shift 0."""

    code: str
    code_value: int  # the value of categorical_1
    user: _Block
    item: _Block
    category_cdf: list[np.ndarray]  # per field categorical_2..16, cumulative frequencies
    click_weights: np.ndarray  # [USER_FACTORS + ITEM_FACTORS + sum(CATEGORY_SIZES)]
    conversion_weights: np.ndarray  # the same layout, for a purchase given a click
    click_rate: float
    conversion_rate: float
    click_intercept: float = 0.0
    conversion_intercept: float = 0.0


@dataclass
class _Rows:
    """Rows of whole pages in the raw layout, plus the hidden scores behind their labels."""

    page_ids: np.ndarray  # [P] int64
    user_categorical: np.ndarray  # [P, 9] int64, raw user columns 2-8, 32-33
    user_numerical: np.ndarray  # [P, 23] float64, raw user columns 9-31
    item_page: np.ndarray  # [R] row of each item's page in the page arrays
    item_categorical: np.ndarray  # [R, 7] int64
    item_numerical: np.ndarray  # [R, 40] float64
    click_score: np.ndarray  # [R] click logit without its intercept
    conversion_score: np.ndarray  # [R] purchase-given-click logit without its intercept


def _stream(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *key]))


def _country_key(code: str) -> int:
    return int.from_bytes(code.lower().encode(), "big")


def _sigmoid(values: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * values))


def _weights(rng: np.random.Generator, factor_norm: float, category_std: float) -> np.ndarray:
    """Label weights: hidden-factor weights of norm ``factor_norm``, then category effects."""
    factors = rng.normal(size=USER_FACTORS + ITEM_FACTORS)
    categories = rng.normal(scale=category_std, size=sum(CATEGORY_SIZES))
    return np.concatenate([factors * factor_norm / np.linalg.norm(factors), categories])


def _turn(weights: np.ndarray, direction: np.ndarray, angle: float) -> np.ndarray:
    """Turn each block of ``weights`` by ``angle`` towards ``direction``, keeping its norm."""
    turned = np.empty_like(weights)
    split = USER_FACTORS + ITEM_FACTORS
    for block in (slice(0, split), slice(split, None)):
        base, other = weights[block], direction[block].copy()
        other -= (other @ base) / (base @ base) * base
        other *= np.linalg.norm(base) / np.linalg.norm(other)
        turned[block] = math.cos(angle) * base + math.sin(angle) * other
    return turned


def _world(config: SimulateConfig) -> _Country:
    """The shared parameters, drawn from the seed alone."""
    rng = _stream(config.seed, _WORLD)
    user = _Block.draw_world(rng, len(USER_NUMERICAL_COLUMNS), USER_FACTORS)
    user.levels[:8] = rng.choice([2, 4, 12], size=8)  # a few features are coarse ratios
    item = _Block.draw_world(rng, len(ITEM_NUMERICAL_COLUMNS), ITEM_FACTORS)
    category_cdf = []
    for size in CATEGORY_SIZES:
        frequencies = np.exp(rng.normal(size=size) - 0.15 * np.arange(size))
        category_cdf.append(np.cumsum(frequencies / frequencies.sum()))
    click = _weights(rng, factor_norm=1.0, category_std=0.15)
    return _Country(
        code="",
        code_value=0,
        user=user,
        item=item,
        category_cdf=category_cdf,
        click_weights=click,
        # purchases share part of what drives clicks, as they do in the real log
        conversion_weights=0.6 * click + _weights(rng, factor_norm=0.8, category_std=0.12),
        click_rate=config.click_rate,
        conversion_rate=config.conversion_rate,
    )


def _country(world: _Country, config: SimulateConfig, index: int) -> _Country:
    """Country ``index`` of ``config.countries``: the world moved by ``config.shift``."""
    code = config.countries[index]
    rng = _stream(config.seed, _COUNTRY, _country_key(code))
    shift = config.shift
    category_cdf = []
    for cdf in world.category_cdf:
        frequencies = np.diff(cdf, prepend=0.0) * np.exp(shift * 0.8 * rng.normal(size=len(cdf)))
        category_cdf.append(np.cumsum(frequencies / frequencies.sum()))
    click_rate = world.click_rate * math.exp(shift * 0.2 * rng.normal())
    conversion_rate = world.conversion_rate * math.exp(shift * 0.2 * rng.normal())
    angle = shift * MAX_TURN
    size = len(world.click_weights)
    return _Country(
        code=code,
        code_value=index + 1,
        user=world.user.moved(rng, shift),
        item=world.item.moved(rng, shift),
        category_cdf=category_cdf,
        click_weights=_turn(world.click_weights, rng.normal(size=size), angle),
        conversion_weights=_turn(world.conversion_weights, rng.normal(size=size), angle),
        click_rate=click_rate,
        conversion_rate=min(conversion_rate, 0.5 * click_rate),
    )


def _categories(rng: np.random.Generator, cdfs: list[np.ndarray], count: int) -> np.ndarray:
    """Codes ``[count, len(cdfs)]`` drawn from each field's cumulative frequencies."""
    draws = rng.random((count, len(cdfs)))
    columns = [
        np.minimum(np.searchsorted(cdf, draws[:, k], side="right"), len(cdf) - 1)
        for k, cdf in enumerate(cdfs)
    ]
    return np.stack(columns, axis=1).astype(np.int64)


def _score(weights: np.ndarray, factors: np.ndarray, categories: np.ndarray) -> np.ndarray:
    """Logit ``[R]`` from factors ``[R, 16]`` and codes ``[R, 15]`` (categorical_2..16)."""
    split = USER_FACTORS + ITEM_FACTORS
    starts = np.concatenate([[0], np.cumsum(CATEGORY_SIZES)[:-1]]) + split
    return factors @ weights[:split] + weights[categories + starts].sum(axis=1)


def _draw_rows(
    country: _Country,
    rng: np.random.Generator,
    page_sizes: np.ndarray,
    first_page_id: int,
    features: bool = True,
) -> _Rows:
    """Draw the pages of ``page_sizes`` (items per page) and their items, without labels.

    ``features=False`` skips the numerical features, which the labels do not depend on.
    """
    pages, items = len(page_sizes), int(page_sizes.sum())
    item_page = np.repeat(np.arange(pages), page_sizes)
    user_factors, user_numerical = country.user.draw(rng, pages, features)
    item_factors, item_numerical = country.item.draw(rng, items, features)
    user_fields = _categories(rng, country.category_cdf[:USER_FIELDS_AFTER_COUNTRY], pages)
    item_fields = _categories(rng, country.category_cdf[USER_FIELDS_AFTER_COUNTRY:], items)
    # an unobserved intent per page: items on one page share part of their click odds
    page_effect = PAGE_EFFECT_STD * rng.normal(size=pages)

    factors = np.concatenate([user_factors[item_page], item_factors], axis=1)
    fields = np.concatenate([user_fields[item_page], item_fields], axis=1)
    country_column = np.full((pages, 1), country.code_value, dtype=np.int64)
    return _Rows(
        page_ids=np.arange(first_page_id, first_page_id + pages, dtype=np.int64),
        user_categorical=np.concatenate([country_column, user_fields], axis=1),
        user_numerical=user_numerical,
        item_page=item_page,
        item_categorical=item_fields,
        item_numerical=item_numerical,
        click_score=_score(country.click_weights, factors, fields) + page_effect[item_page],
        conversion_score=_score(country.conversion_weights, factors, fields),
    )


def _page_sizes(rng: np.random.Generator, rows: int) -> np.ndarray:
    """Items per page summing to exactly ``rows``; only the last page may be cut short."""
    low, high = PAGE_SIZE_RANGE
    sizes = rng.integers(low, high + 1, size=rows // low + 1)
    ends = np.cumsum(sizes)
    pages = int(np.searchsorted(ends, rows)) + 1
    sizes = sizes[:pages].copy()
    sizes[-1] -= int(ends[pages - 1]) - rows
    return sizes


def _solve_intercept(scores: np.ndarray, target: float, weights: np.ndarray | None = None) -> float:
    """The intercept ``b`` with ``mean(sigmoid(b + scores)) == target`` (weighted), by bisection."""
    low, high = -40.0, 40.0
    for _ in range(80):
        middle = 0.5 * (low + high)
        rate = np.average(_sigmoid(middle + scores), weights=weights)
        low, high = (middle, high) if rate < target else (low, middle)
    return 0.5 * (low + high)


def _calibrate(country: _Country, seed: int) -> None:
    """Set the country's intercepts so its click and purchase rates hit their targets."""
    rng = _stream(seed, _CALIBRATION, _country_key(country.code))
    rows = _draw_rows(country, rng, _page_sizes(rng, CALIBRATION_ROWS), 1, features=False)
    country.click_intercept = _solve_intercept(rows.click_score, country.click_rate)
    click_probability = _sigmoid(country.click_intercept + rows.click_score)
    country.conversion_intercept = _solve_intercept(
        rows.conversion_score,
        country.conversion_rate / country.click_rate,
        weights=click_probability,
    )


def _draw_labels(
    country: _Country, rows: _Rows, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw the labels of ``rows``.

    Returns:
        Labels 0/1/2 ``[R]``, and the true click and click-and-purchase probabilities ``[R]``.
    """
    click_probability = _sigmoid(country.click_intercept + rows.click_score)
    purchase_probability = _sigmoid(country.conversion_intercept + rows.conversion_score)
    draws = rng.random((len(click_probability), 2))
    click = draws[:, 0] < click_probability
    purchase = click & (draws[:, 1] < purchase_probability)
    labels = click.astype(np.int64) + purchase.astype(np.int64)
    return labels, click_probability, click_probability * purchase_probability


def area_under_curve(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC of ``scores`` for binary ``labels`` (ties count one half); NaN with one class.

    Example:
        >>> area_under_curve(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]))
        0.75
    """
    labels = np.asarray(labels).astype(bool)
    positives = int(labels.sum())
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ordered = np.asarray(scores)[order]
    ranks = np.empty(len(ordered), dtype=np.float64)
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], len(ordered)]
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    rank_sum = ranks[labels].sum()
    return float((rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives))


class _SplitWriter:
    """Streams one split of one country to the raw user/item CSVs and the processed CSV.

    Numerical values are turned into text once and the same text goes into both layouts,
    which halves the cost of writing floats and makes the two layouts agree to the byte.
    """

    def __init__(self, work: Path | None, processed: Path | None, code: str, split: str) -> None:
        self.user_path = work / f"{code}_user_{split}.csv" if work else None
        self.item_path = work / f"{code}_item_{split}.csv" if work else None
        self.processed_path = processed / f"{split}.csv" if processed else None
        self._writers: dict[Path, Any] = {}

    def _write(self, path: Path, columns: list[Any], names: tuple[str, ...] | None) -> None:
        import pyarrow as pa
        import pyarrow.csv as pacsv

        names = names or tuple(f"column_{k + 1}" for k in range(len(columns)))
        table = pa.Table.from_arrays(columns, names=list(names))
        if path not in self._writers:
            options = pacsv.WriteOptions(
                include_header=path == self.processed_path,
                batch_size=8192,
                quoting_style="none",
                quoting_header="none",
            )
            self._writers[path] = pacsv.CSVWriter(path, table.schema, write_options=options)
        self._writers[path].write_table(table)

    def write(self, rows: _Rows, labels: np.ndarray) -> None:
        """Append ``rows`` with their ``labels`` (0/1/2, ``[R]``) to every file of the split."""
        import pyarrow as pa
        import pyarrow.compute as pc

        user_categorical = _arrays(rows.user_categorical)
        user_numerical = _arrays(rows.user_numerical, text=True)
        item_categorical = _arrays(rows.item_categorical)
        item_numerical = _arrays(rows.item_numerical, text=True)
        item_page_ids = pa.array(rows.page_ids[rows.item_page])
        if self.user_path is not None and self.item_path is not None:
            user: list[Any] = [None] * USER_COLUMNS
            user[0] = pa.array(rows.page_ids)
            for column, array in zip(USER_CATEGORICAL_COLUMNS, user_categorical, strict=True):
                user[column - 1] = array
            for column, array in zip(USER_NUMERICAL_COLUMNS, user_numerical, strict=True):
                user[column - 1] = array
            item: list[Any] = [None] * ITEM_COLUMNS
            item[0] = item_page_ids
            for column, array in zip(ITEM_CATEGORICAL_COLUMNS, item_categorical, strict=True):
                item[column - 1] = array
            for column, array in zip(ITEM_NUMERICAL_COLUMNS, item_numerical, strict=True):
                item[column - 1] = array
            item[LABEL_COLUMN - 1] = pa.array(labels)
            self._write(self.user_path, user, None)
            self._write(self.item_path, item, None)
        if self.processed_path is not None:
            page = pa.array(rows.item_page)
            columns = [
                item_page_ids,
                *(pc.take(array, page) for array in user_categorical),
                *item_categorical,
                *(pc.take(array, page) for array in user_numerical),
                *item_numerical,
                pa.array((labels >= 1).astype(np.int64)),
                pa.array((labels == 2).astype(np.int64)),
            ]
            self._write(self.processed_path, columns, PROCESSED_COLUMNS)

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()


def _arrays(matrix: np.ndarray, text: bool = False) -> list[Any]:
    """The columns of ``matrix`` ``[R, C]`` as Arrow arrays, floats already turned into text."""
    import pyarrow as pa
    import pyarrow.compute as pc

    matrix = np.asfortranarray(matrix)
    arrays = [pa.array(matrix[:, k]) for k in range(matrix.shape[1])]
    return [pc.cast(array, pa.string()) for array in arrays] if text else arrays


def _zip_member(archive: zipfile.ZipFile, source: Path, name: str, compress: int) -> None:
    """Add ``source`` to ``archive`` as ``name`` with a fixed date and mode, so runs are byte-equal.

    The archive records the file's local modification time and mode; both are set first.
    """
    stamp = time.mktime((2020, 1, 1, 0, 0, 0, 0, 1, -1))  # local midnight in any time zone
    os.chmod(source, 0o644)
    os.utime(source, (stamp, stamp))
    archive.write(source, arcname=name, compress_type=compress, compresslevel=1)


def _zip_country(work: Path, raw: Path, code: str) -> Path:
    """Pack the four CSVs into inner zips and those into ``aliexpress_XX_datasets.zip``."""
    outer_path = raw / f"aliexpress_{code.upper()}_datasets.zip"
    with zipfile.ZipFile(outer_path, "w") as outer:
        for kind in ("user", "item"):
            for split in ("train", "test"):
                stem = f"{code}_{kind}_{split}"
                inner_path = work / f"{stem}.zip"
                with zipfile.ZipFile(inner_path, "w") as inner:
                    _zip_member(inner, work / f"{stem}.csv", f"{stem}.csv", zipfile.ZIP_DEFLATED)
                _zip_member(outer, inner_path, f"{stem}.zip", zipfile.ZIP_STORED)
                (work / f"{stem}.csv").unlink()
                inner_path.unlink()
    return outer_path


def _simulate_country(
    world: _Country, config: SimulateConfig, index: int, root: Path
) -> tuple[Path, dict[str, Any]]:
    """Write one country's splits under ``root``; return its path and statistics."""
    country = _country(world, config, index)
    _calibrate(country, config.seed)
    code = country.code.lower()
    work = root / ".work" / code if config.layout in ("both", "raw") else None
    processed = (
        root / "processed" / f"AliExpress_{code.upper()}"
        if config.layout in ("both", "processed")
        else None
    )
    for folder in (work, processed):
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)

    statistics: dict[str, Any] = {
        "categorical_1": country.code_value,
        "target_click_rate": country.click_rate,
        "target_conversion_rate": country.conversion_rate,
        "click_intercept": country.click_intercept,
        "conversion_intercept": country.conversion_intercept,
    }
    next_page = 1
    for number, (split, rows) in enumerate(
        zip(("train", "test"), config.split_rows(), strict=True)
    ):
        writer = _SplitWriter(work, processed, code, split)
        try:
            statistics[split] = _write_split(country, config, number, rows, next_page, writer)
        finally:
            writer.close()
        next_page += statistics[split]["pages"]
    path = processed
    if work is not None:
        (root / "raw").mkdir(exist_ok=True)
        archive = _zip_country(work, root / "raw", code)
        work.rmdir()
        path = processed or archive
    train = statistics["train"]
    oracle = train["oracle_click_auc"]
    logger.info(
        "country %s: %d train rows, CTR %.4f, CTCVR %.5f, true-weight click AUC %s",
        code.upper(),
        train["rows"],
        train["click_rate"],
        train["conversion_rate"],
        "undefined" if oracle is None else f"{oracle:.3f}",
    )
    return path, statistics


def _write_split(
    country: _Country,
    config: SimulateConfig,
    number: int,
    rows: int,
    first_page: int,
    writer: _SplitWriter,
) -> dict[str, Any]:
    """Draw split ``number`` (0 train, 1 test) of ``rows`` items chunk by chunk into ``writer``.

    Returns the split's statistics for ``simulation.json``.
    """
    key = _country_key(country.code)
    sizes = _page_sizes(_stream(config.seed, _PAGES, key, number), rows)
    chunk_of_page = (np.cumsum(sizes) - 1) // CHUNK_ROWS
    click_true, ctcvr_true, labels = [], [], []
    next_page = first_page
    for chunk in range(int(chunk_of_page[-1]) + 1):
        rng = _stream(config.seed, _ROWS, key, number, chunk)
        chunk_sizes = sizes[chunk_of_page == chunk]
        drawn = _draw_rows(country, rng, chunk_sizes, next_page)
        chunk_labels, click_probability, ctcvr_probability = _draw_labels(country, drawn, rng)
        writer.write(drawn, chunk_labels)
        next_page += len(chunk_sizes)
        click_true.append(click_probability.astype(np.float32))
        ctcvr_true.append(ctcvr_probability.astype(np.float32))
        labels.append(chunk_labels.astype(np.int8))
    return _split_statistics(
        np.concatenate(labels), np.concatenate(click_true), np.concatenate(ctcvr_true), len(sizes)
    )


def _split_statistics(
    labels: np.ndarray, click_true: np.ndarray, ctcvr_true: np.ndarray, pages: int
) -> dict[str, Any]:
    clicks = int((labels >= 1).sum())
    conversions = int((labels == 2).sum())
    return {
        "rows": len(labels),
        "pages": pages,
        "clicks": clicks,
        "conversions": conversions,
        "click_rate": clicks / len(labels),
        "conversion_rate": conversions / len(labels),
        "oracle_click_auc": _auc_or_none(click_true, labels >= 1),
        "oracle_conversion_auc": _auc_or_none(ctcvr_true, labels == 2),
    }


def _auc_or_none(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """AUC for ``simulation.json``: ``None`` (JSON null) when a split holds one class only."""
    value = area_under_curve(scores, labels)
    return None if math.isnan(value) else value


def simulate_countries(config: SimulateConfig) -> dict[str, Path]:
    """Write simulated countries in the raw and/or processed layout, and ``simulation.json``.

    The whole output folder is built under a temporary name and moved into place at the
    end, so a failed run leaves nothing that looks complete.

    Args:
        config: what to simulate and where (see :class:`SimulateConfig`).

    Returns:
        Per country (upper-case code), the input to give ``taa prepare``: the processed
        folder ``OUT/processed/AliExpress_XX`` when the processed layout is written, else
        the raw archive ``OUT/raw/aliexpress_XX_datasets.zip``.

    Example:
        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "sim"
        >>> paths = simulate_countries(SimulateConfig(out=out, countries=("es", "fr"), rows=500))
        >>> sorted(paths), paths["FR"].name
        (['ES', 'FR'], 'AliExpress_FR')
    """
    if config.out.exists() and not config.overwrite:
        raise ConfigError(
            f"option --out: {config.out} already exists; pass --overwrite to replace it "
            "or choose another folder"
        )
    world = _world(config)
    summary: dict[str, Any] = {"config": _config_dict(config), "countries": {}}
    relative: dict[str, Path] = {}
    with atomic_directory(config.out, overwrite=config.overwrite) as root:
        for index, code in enumerate(config.countries):
            path, statistics = _simulate_country(world, config, index, root)
            relative[code.upper()] = path.relative_to(root)
            summary["countries"][code.upper()] = statistics
        shutil.rmtree(root / ".work", ignore_errors=True)
        atomic_write_json(root / "simulation.json", summary)
    return {code: config.out / path for code, path in relative.items()}


def _config_dict(config: SimulateConfig) -> dict[str, Any]:
    data = asdict(config)
    data["out"] = str(config.out)
    data["countries"] = list(config.countries)
    del data["overwrite"]
    data["turn_degrees"] = math.degrees(MAX_TURN) * config.shift
    return data
