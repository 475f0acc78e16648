"""Tests of taa.data.simulate and `taa simulate`: layouts, labels, rates, determinism and shift."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pyarrow.csv as pacsv
import pytest
import torch

from taa.cli.main import main
from taa.data import simulate
from taa.data.simulate import SimulateConfig, area_under_curve, simulate_countries
from taa.errors import ConfigError

# Column roles of the raw files (1-based), written out here independently of the simulator.
USER_CATEGORICAL = [2, 3, 4, 5, 6, 7, 8, 32, 33]
ITEM_CATEGORICAL = [19, 34, 35, 36, 40, 41, 42]
USER_NUMERICAL = list(range(9, 32))
ITEM_NUMERICAL = [column for column in range(2, 49) if column not in ITEM_CATEGORICAL]
HEADER = (
    ["search_id"]
    + [f"categorical_{k}" for k in range(1, 17)]
    + [f"numerical_{k}" for k in range(1, 64)]
    + ["click", "conversion"]
)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two countries of 3000 rows each in both layouts (shift 0.5, seed 0)."""
    out = tmp_path_factory.mktemp("small") / "sim"
    simulate_countries(SimulateConfig(out=out, countries=("es", "fr"), rows=3000))
    return out


@pytest.fixture(scope="module")
def unshifted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two countries of 60000 rows each at shift 0, processed layout only."""
    out = tmp_path_factory.mktemp("unshifted") / "sim"
    config = SimulateConfig(
        out=out, countries=("es", "fr"), rows=60_000, shift=0.0, seed=1, layout="processed"
    )
    simulate_countries(config)
    return out


@pytest.fixture(scope="module")
def shifted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two countries of 40000 rows each at shift 1, processed layout only."""
    out = tmp_path_factory.mktemp("shifted") / "sim"
    config = SimulateConfig(
        out=out, countries=("es", "fr"), rows=40_000, shift=1.0, seed=0, layout="processed"
    )
    simulate_countries(config)
    return out


def read_raw(out: Path, code: str, kind: str, split: str) -> list[list[str]]:
    """Rows of one headerless CSV inside a zip inside `aliexpress_XX_datasets.zip`."""
    with zipfile.ZipFile(out / "raw" / f"aliexpress_{code.upper()}_datasets.zip") as outer:
        inner_bytes = outer.read(f"{code}_{kind}_{split}.zip")
    with zipfile.ZipFile(io.BytesIO(inner_bytes)) as inner:
        assert inner.namelist() == [f"{code}_{kind}_{split}.csv"]
        text = inner.read(f"{code}_{kind}_{split}.csv").decode()
    return list(csv.reader(io.StringIO(text)))


def read_processed_text(out: Path, code: str, split: str) -> list[list[str]]:
    path = out / "processed" / f"AliExpress_{code.upper()}" / f"{split}.csv"
    return list(csv.reader(io.StringIO(path.read_text())))


def read_processed(out: Path, code: str, split: str) -> dict[str, np.ndarray]:
    path = out / "processed" / f"AliExpress_{code.upper()}" / f"{split}.csv"
    table = pacsv.read_csv(path)
    return {name: table.column(name).to_numpy() for name in table.column_names}


def digests(out: Path) -> dict[str, str]:
    """sha256 of every output file but simulation.json (which names the output folder)."""
    return {
        str(path.relative_to(out)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(out.rglob("*"))
        if path.is_file() and path.name != "simulation.json"
    }


def test_writes_the_raw_and_processed_layouts(small: Path) -> None:
    """Check the file names of both layouts and the four inner zips of each archive."""
    assert sorted(path.name for path in (small / "raw").iterdir()) == [
        "aliexpress_ES_datasets.zip",
        "aliexpress_FR_datasets.zip",
    ]
    with zipfile.ZipFile(small / "raw" / "aliexpress_FR_datasets.zip") as outer:
        assert sorted(outer.namelist()) == [
            "fr_item_test.zip",
            "fr_item_train.zip",
            "fr_user_test.zip",
            "fr_user_train.zip",
        ]
    for code in ("ES", "FR"):
        folder = small / "processed" / f"AliExpress_{code}"
        assert sorted(path.name for path in folder.iterdir()) == ["test.csv", "train.csv"]
    assert (small / "simulation.json").is_file()


def test_raw_files_have_33_and_49_columns_and_no_header(small: Path) -> None:
    """Check the column counts of the user and item CSVs and that their first row is data."""
    for split in ("train", "test"):
        users = read_raw(small, "es", "user", split)
        items = read_raw(small, "es", "item", split)
        assert {len(row) for row in users} == {33}
        assert {len(row) for row in items} == {49}
        assert users[0][0].isdigit()
        assert items[0][0].isdigit()


def test_processed_rows_are_the_join_of_the_raw_files(small: Path) -> None:
    """Check that each processed row is its item row joined with its page's user row.

    The join and the column mapping are written here: categorical = user 2-8, 32-33, item
    19, 34, 35, 36, 40, 41, 42; numerical = user 9-31 then the other item columns 2-48;
    click = label >= 1, conversion = label == 2.
    """
    for code in ("es", "fr"):
        for split in ("train", "test"):
            users = {row[0]: row for row in read_raw(small, code, "user", split)}
            expected = [HEADER]
            for item in read_raw(small, code, "item", split):
                user = users[item[0]]
                label = int(item[48])
                expected.append(
                    [item[0]]
                    + [user[c - 1] for c in USER_CATEGORICAL]
                    + [item[c - 1] for c in ITEM_CATEGORICAL]
                    + [user[c - 1] for c in USER_NUMERICAL]
                    + [item[c - 1] for c in ITEM_NUMERICAL]
                    + [str(int(label >= 1)), str(int(label == 2))]
                )
            assert read_processed_text(small, code, split) == expected


def test_each_page_has_one_user_row_and_5_to_30_items(small: Path) -> None:
    """Check one user row per page id, every item's page present, and 5-30 items per page.

    Only the last page of a split may be shorter: it is cut to give the exact row count.
    """
    for split, rows in (("train", 2250), ("test", 750)):
        page_ids = [row[0] for row in read_raw(small, "es", "user", split)]
        items = [row[0] for row in read_raw(small, "es", "item", split)]
        assert len(items) == rows
        assert len(set(page_ids)) == len(page_ids)
        assert set(items) == set(page_ids)
        sizes = [items.count(page) for page in page_ids]
        assert all(5 <= size <= 30 for size in sizes[:-1])
        assert 1 <= sizes[-1] <= 30


def test_page_ids_do_not_repeat_between_train_and_test(small: Path) -> None:
    """Check that a page belongs to one split only."""
    train = {row[0] for row in read_raw(small, "es", "user", "train")}
    test = {row[0] for row in read_raw(small, "es", "user", "test")}
    assert train.isdisjoint(test)


def test_labels_are_0_1_2_and_conversion_implies_click(small: Path) -> None:
    """Check raw labels in {0, 1, 2} and, in the processed files, no conversion without click."""
    for code in ("es", "fr"):
        labels = {row[48] for row in read_raw(small, code, "item", "train")}
        assert labels <= {"0", "1", "2"}
        columns = read_processed(small, code, "train")
        assert set(np.unique(columns["click"])) <= {0, 1}
        assert not np.any((columns["conversion"] == 1) & (columns["click"] == 0))


def test_feature_values_are_in_range(small: Path) -> None:
    """Check numerical values in [0, 1] and categorical codes small non-negative integers."""
    columns = read_processed(small, "es", "train")
    numerical = np.stack([columns[f"numerical_{k}"] for k in range(1, 64)], axis=1)
    assert numerical.min() >= 0.0
    assert numerical.max() <= 1.0
    # the real data's largest code per field is [9, 3, 5, 1, 20, 6, 49, 7, 6, 1, ...]
    largest = [3, 5, 1, 20, 6, 49, 7, 6, 1, 1, 1, 1, 1, 1, 1]
    for k, top in enumerate(largest, start=2):
        values = columns[f"categorical_{k}"]
        assert values.min() >= 0
        assert values.max() <= top


def test_categorical_1_is_a_country_code(small: Path) -> None:
    """Check that categorical_1 is constant within a country and differs between countries."""
    es = np.unique(read_processed(small, "es", "train")["categorical_1"])
    fr = np.unique(read_processed(small, "fr", "test")["categorical_1"])
    assert len(es) == 1
    assert len(fr) == 1
    assert es[0] != fr[0]


def test_simulation_json_counts_match_the_files(small: Path) -> None:
    """Check that simulation.json's rows, pages, clicks and purchases are those in the files."""
    summary = json.loads((small / "simulation.json").read_text())
    assert summary["config"]["countries"] == ["es", "fr"]
    for code in ("es", "fr"):
        for split in ("train", "test"):
            labels = [int(row[48]) for row in read_raw(small, code, "item", split)]
            recorded = summary["countries"][code.upper()][split]
            assert recorded["rows"] == len(labels)
            assert recorded["pages"] == len(read_raw(small, code, "user", split))
            assert recorded["clicks"] == sum(label >= 1 for label in labels)
            assert recorded["conversions"] == sum(label == 2 for label in labels)


def test_same_seed_gives_byte_identical_files(small: Path, tmp_path: Path) -> None:
    """Check that a second run with the same settings writes the same bytes, zips included."""
    again = tmp_path / "again"
    simulate_countries(SimulateConfig(out=again, countries=("es", "fr"), rows=3000))
    assert digests(again) == digests(small)


def test_another_seed_gives_other_rows(small: Path, tmp_path: Path) -> None:
    """Check that seed 1 writes other rows than seed 0."""
    other = tmp_path / "other"
    config = SimulateConfig(
        out=other, countries=("es", "fr"), rows=3000, seed=1, layout="processed"
    )
    simulate_countries(config)
    assert read_processed_text(other, "es", "train") != read_processed_text(small, "es", "train")


def test_a_country_does_not_depend_on_the_others_listed(small: Path, tmp_path: Path) -> None:
    """Check that ES is the same simulated with FR or with NL (ES listed first both times)."""
    other = tmp_path / "other"
    simulate_countries(SimulateConfig(out=other, countries=("es", "nl"), rows=3000))
    for split in ("train", "test"):
        assert read_processed_text(other, "es", split) == read_processed_text(small, "es", split)


@pytest.mark.parametrize(
    ("layout", "present", "absent", "returned"),
    [
        ("raw", "raw", "processed", "raw/aliexpress_ES_datasets.zip"),
        ("processed", "processed", "raw", "processed/AliExpress_ES"),
    ],
)
def test_layout_option_writes_one_layout(
    tmp_path: Path, layout: str, present: str, absent: str, returned: str
) -> None:
    """Check that --layout raw / processed writes that layout only and returns its path."""
    out = tmp_path / "sim"
    paths = simulate_countries(SimulateConfig(out=out, countries=("es",), rows=300, layout=layout))
    assert (out / present).is_dir()
    assert not (out / absent).exists()
    assert paths == {"ES": out / returned}


def test_rates_at_shift_zero_are_about_2_percent_and_0_07_percent(unshifted: Path) -> None:
    """Check CTR in [1.8 %, 2.2 %] and CTCVR in [0.04 %, 0.10 %] over 90000 train rows."""
    clicks = conversions = rows = 0
    for code in ("es", "fr"):
        columns = read_processed(unshifted, code, "train")
        clicks += int(columns["click"].sum())
        conversions += int(columns["conversion"].sum())
        rows += len(columns["click"])
    assert rows == 90_000
    assert 0.018 <= clicks / rows <= 0.022
    assert 0.0004 <= conversions / rows <= 0.0010


def test_rates_of_shifted_countries_stay_realistic(shifted: Path) -> None:
    """Check that at shift 1 each country's CTR stays in [1 %, 4 %], CTCVR in [0.02 %, 0.2 %]."""
    for code in ("es", "fr"):
        columns = read_processed(shifted, code, "train")
        assert 0.01 <= columns["click"].mean() <= 0.04
        assert 0.0002 <= columns["conversion"].mean() <= 0.002


def test_true_weight_click_auc_is_realistic(shifted: Path) -> None:
    """Check that the click AUC of the true probabilities is 0.7-0.85, not trivially separable."""
    summary = json.loads((shifted / "simulation.json").read_text())
    for code in ("ES", "FR"):
        assert 0.7 <= summary["countries"][code]["train"]["oracle_click_auc"] <= 0.85


def test_shift_zero_gives_countries_the_same_parameters() -> None:
    """Check that at shift 0 every parameter of two countries is equal but the country code."""
    config = SimulateConfig(out=Path("unused"), countries=("es", "fr"), shift=0.0, seed=3)
    world = simulate._world(config)
    es, fr = simulate._country(world, config, 0), simulate._country(world, config, 1)
    assert (es.code_value, fr.code_value) == (1, 2)
    for name in ("mean", "scale", "offset", "zero", "loadings"):
        np.testing.assert_array_equal(getattr(es.user, name), getattr(fr.user, name))
        np.testing.assert_array_equal(getattr(es.item, name), getattr(fr.item, name))
    for left, right in zip(es.category_cdf, fr.category_cdf, strict=True):
        np.testing.assert_allclose(left, right, rtol=0, atol=1e-15)
    np.testing.assert_array_equal(es.click_weights, fr.click_weights)
    np.testing.assert_array_equal(es.conversion_weights, fr.conversion_weights)
    assert (es.click_rate, es.conversion_rate) == (fr.click_rate, fr.conversion_rate)


def largest_mean_difference(out: Path) -> float:
    """Largest |z| of the ES - FR difference of a feature mean or category share (train).

    Page-level columns (categorical_2..9, numerical_1..23) are compared over pages, item
    columns over items, so each z uses independent draws.
    """
    es, fr = read_processed(out, "es", "train"), read_processed(out, "fr", "train")

    def first_of_page(columns: dict[str, np.ndarray]) -> np.ndarray:
        return np.unique(columns["search_id"], return_index=True)[1]

    samples = []
    for k in range(2, 17):
        page_level = k <= 9
        codes = np.union1d(es[f"categorical_{k}"], fr[f"categorical_{k}"])
        for code in codes:
            samples.append((f"categorical_{k}", page_level, lambda v, c=code: (v == c) * 1.0))
    for k in range(1, 64):
        samples.append((f"numerical_{k}", k <= 23, lambda v: v))
    samples.append(("click", False, lambda v: v * 1.0))
    largest = 0.0
    for name, page_level, transform in samples:
        values = []
        for columns in (es, fr):
            rows = first_of_page(columns) if page_level else slice(None)
            values.append(transform(columns[name][rows]))
        error = np.sqrt(sum(v.var(ddof=1) / len(v) for v in values))
        if error > 0:
            largest = max(largest, abs(values[0].mean() - values[1].mean()) / error)
    return largest


def test_shift_zero_gives_the_same_feature_and_label_distribution(unshifted: Path) -> None:
    """Check that at shift 0 no feature mean, category share or CTR differs by 4.5 std errors."""
    assert largest_mean_difference(unshifted) < 4.5


def test_shift_one_moves_the_feature_distribution(shifted: Path) -> None:
    """Check that the comparison above does see shift 1: some mean differs by 10 std errors."""
    assert largest_mean_difference(shifted) > 10


def mann_whitney_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """AUC by counting positive-negative pairs (ties one half), a second way to compute it."""
    positives, negatives = scores[labels == 1], np.sort(scores[labels == 0])
    below = np.searchsorted(negatives, positives, side="left")
    ties = np.searchsorted(negatives, positives, side="right") - below
    return float((below + 0.5 * ties).sum() / (len(positives) * len(negatives)))


def features(columns: dict[str, np.ndarray], sizes: list[int]) -> torch.Tensor:
    """Numerical fields and one-hot codes of categorical_2..16 (categorical_1 is constant)."""
    parts = [np.stack([columns[f"numerical_{k}"] for k in range(1, 64)], axis=1)]
    for k, size in zip(range(2, 17), sizes, strict=True):
        parts.append(np.eye(size)[columns[f"categorical_{k}"]])
    return torch.tensor(np.concatenate(parts, axis=1), dtype=torch.float32)


def fit_logistic_regression(inputs: torch.Tensor, clicks: np.ndarray) -> torch.nn.Linear:
    """A logistic regression on inputs already standardised, by L-BFGS with a small L2 penalty."""
    linear = torch.nn.Linear(inputs.shape[1], 1)
    torch.nn.init.zeros_(linear.weight)
    torch.nn.init.zeros_(linear.bias)
    targets = torch.tensor(clicks, dtype=torch.float32)
    optimizer = torch.optim.LBFGS(linear.parameters(), max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        logits = linear(inputs).squeeze(1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets)
        loss = loss + 1e-3 * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return linear


def test_a_source_model_loses_auc_on_a_shifted_target(shifted: Path) -> None:
    """Check that adaptation matters at shift 1: trained on ES, a logistic regression's FR click
    AUC is at least 0.05 below that of the same model trained on as many FR rows.

    Over simulator seeds 0-7 at this size the gap was 0.07-0.19 and the target-trained AUC
    0.67-0.78.
    """
    source, target = read_processed(shifted, "es", "train"), read_processed(shifted, "fr", "train")
    test = read_processed(shifted, "fr", "test")
    sizes = [
        1 + max(int(part[f"categorical_{k}"].max()) for part in (source, target, test))
        for k in range(2, 17)
    ]
    inputs = {
        name: features(part, sizes)
        for name, part in (("source", source), ("target", target), ("test", test))
    }
    aucs = {}
    for name, part in (("source", source), ("target", target)):
        # standardise with the training rows' statistics, as a model trained there would
        mean, std = inputs[name].mean(dim=0), inputs[name].std(dim=0) + 1e-6
        model = fit_logistic_regression((inputs[name] - mean) / std, part["click"])
        with torch.no_grad():
            scores = model((inputs["test"] - mean) / std).squeeze(1).numpy()
        aucs[name] = mann_whitney_auc(scores, test["click"])
    assert 0.65 <= aucs["target"] <= 0.85
    assert aucs["target"] - aucs["source"] >= 0.05


def test_area_under_curve_matches_pair_counting() -> None:
    """Check the simulator's AUC against pair counting on tied and untied scores."""
    rng = np.random.default_rng(0)
    scores = np.round(rng.random(500), 2)  # many ties
    labels = (rng.random(500) < 0.3).astype(int)
    assert area_under_curve(scores, labels) == pytest.approx(mann_whitney_auc(scores, labels))
    assert area_under_curve(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75
    assert np.isnan(area_under_curve(np.array([0.1, 0.2]), np.array([0, 0])))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"shift": 1.5}, r"option --shift must be in \[0, 1\], got 1\.5"),
        ({"countries": ("es", "e s")}, r"option --countries: 'e s' is not a country code"),
        ({"countries": ("es", "ES")}, r"option --countries names \['es'\] more than once"),
        ({"countries": ()}, r"option --countries is empty"),
        (
            {"test_fraction": 1.0},
            r"option --test-fraction must be strictly between 0 and 1, got 1\.0",
        ),
        (
            {"conversion_rate": 0.03},
            r"option --conversion-rate must be in \(0, --click-rate 0\.02\)",
        ),
        (
            {"layout": "zip"},
            r"option --layout must be one of \['both', 'raw', 'processed'\], got 'zip'",
        ),
    ],
)
def test_bad_options_are_refused(tmp_path: Path, options: dict, message: str) -> None:
    """Check that each out-of-range option is refused with a message naming it and its value."""
    with pytest.raises(ConfigError, match=message):
        SimulateConfig(out=tmp_path / "sim", **options)


def test_rows_too_few_for_a_test_split_are_refused(tmp_path: Path) -> None:
    """Check that 3 rows at test fraction 0.1 (0 test rows) are refused, asking for more rows."""
    with pytest.raises(ConfigError, match=r"leaves 3 train and 0 test rows; raise --rows"):
        SimulateConfig(out=tmp_path / "sim", rows=3, test_fraction=0.1)


def test_an_existing_output_folder_is_refused(small: Path) -> None:
    """Check that simulating into an existing folder without overwrite is refused."""
    with pytest.raises(ConfigError, match=r"already exists; pass --overwrite"):
        simulate_countries(SimulateConfig(out=small, countries=("es",), rows=300))


def test_overwrite_replaces_the_folder(tmp_path: Path) -> None:
    """Check that overwrite=True replaces an existing folder, leaving only the new countries."""
    out = tmp_path / "sim"
    simulate_countries(SimulateConfig(out=out, countries=("es",), rows=300, layout="processed"))
    config = SimulateConfig(
        out=out, countries=("us",), rows=300, layout="processed", overwrite=True
    )
    simulate_countries(config)
    assert [path.name for path in (out / "processed").iterdir()] == ["AliExpress_US"]


def test_cli_simulates_and_prints_rates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Check that `taa simulate` writes the countries asked for and prints one line each."""
    out = tmp_path / "sim"
    main(["simulate", "--out", str(out), "--countries", "es,us", "--rows", "800", "--seed", "2"])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["ES", "US"]
    assert lines[1].endswith(str(out / "processed" / "AliExpress_US"))
    assert (out / "raw" / "aliexpress_US_datasets.zip").is_file()


def test_cli_reports_a_bad_shift_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Check that `taa simulate --shift 2` prints the error and exits with status 2."""
    with pytest.raises(SystemExit) as exit_info:
        main(["simulate", "--out", str(tmp_path / "sim"), "--shift", "2"])
    assert exit_info.value.code == 2
    assert "option --shift must be in [0, 1], got 2.0" in capsys.readouterr().err
