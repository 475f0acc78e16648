"""``predict``: probabilities next to the input's ids, CSV or Parquet, written atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import torch

from taa.data.batches import TensorSplit
from taa.data.vocabulary import Vocabulary
from taa.errors import ConfigError, SchemaMismatchError
from taa.models.base import build_model
from taa.train import PredictConfig, TorchScorer, predict, save_checkpoint
from taa.train.predict import score_split
from test_train_support import TINY_MODEL, VOCAB, make_rows, tiny_schema


@pytest.fixture(scope="module")
def scoring(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A dataset folder with a vocabulary whose index of raw code ``k`` is ``k``, a
    checkpoint for it, and a CSV of 50 raw rows (no labels, an extra column).
    """
    root = tmp_path_factory.mktemp("predict")
    vocabulary = Vocabulary(
        {
            f"categorical_{field + 1}": tuple(str(code) for code in range(1, size))
            for field, size in enumerate(VOCAB)
        }
    )
    dataset = root / "data"
    dataset.mkdir()
    schema = tiny_schema(vocabulary_digest=vocabulary.save(dataset))
    schema.save(dataset)
    torch.manual_seed(0)
    model = build_model("mmoe", schema, TINY_MODEL).eval()
    checkpoint = save_checkpoint(root / "model.pt", model, "mmoe", schema.digest())
    rows = make_rows(50, 5)
    rows.pop("click")
    rows.pop("conversion")
    table = pa.table({**rows, "comment": ["x"] * 50})
    source = root / "rows.csv"
    pacsv.write_csv(table, source)
    expected = model(
        torch.from_numpy(np.stack([rows[f"categorical_{i + 1}"] for i in range(3)], 1)).long(),
        torch.from_numpy(np.stack([rows[f"numerical_{i + 1}"] for i in range(4)], 1)),
    ).probabilities.detach()
    return {
        "dataset": dataset,
        "checkpoint": checkpoint,
        "input": source,
        "expected": expected.numpy(),
        "groups": rows["search_id"],
        "schema": schema,
    }


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_predict_writes_ids_and_one_probability_per_task(
    scoring: dict, tmp_path: Path, suffix: str
) -> None:
    """Check the output: the input's ids, then <task>_probability equal to the model's output."""
    output = tmp_path / f"scores{suffix}"
    config = PredictConfig(
        model=scoring["checkpoint"], dataset=scoring["dataset"], input=scoring["input"],
        output=output, batch_size=16,
    )  # fmt: skip
    assert predict(config) == output
    table = pq.read_table(output) if suffix == ".parquet" else pacsv.read_csv(output)
    assert table.column_names == ["search_id", "row", "click_probability", "conversion_probability"]
    assert table.column("search_id").to_pylist() == scoring["groups"].tolist()
    assert table.column("row").to_pylist() == list(range(1, 51))
    for index, task in enumerate(("click", "conversion")):
        values = np.asarray(table.column(f"{task}_probability").to_pylist())
        np.testing.assert_allclose(values, scoring["expected"][:, index], rtol=1e-5, atol=1e-6)


def test_predict_accepts_another_scorer(scoring: dict, tmp_path: Path) -> None:
    """Check that any Scorer (tasks, schema_digest, __call__) can replace the checkpoint."""

    class Constant:
        tasks = ("click", "conversion")
        schema_digest = scoring["schema"].digest()

        def __call__(self, categorical: torch.Tensor, numerical: torch.Tensor) -> np.ndarray:
            return np.tile([0.25, 0.75], (len(categorical), 1))

    output = tmp_path / "scores.csv"
    config = PredictConfig(
        model=Path("unused.pt"), dataset=scoring["dataset"], input=scoring["input"], output=output
    )
    predict(config, scorer=Constant())
    table = pacsv.read_csv(output)
    assert set(table.column("click_probability").to_pylist()) == {0.25}
    assert set(table.column("conversion_probability").to_pylist()) == {0.75}


def test_a_failed_prediction_leaves_no_output(scoring: dict, tmp_path: Path) -> None:
    """Check that a scorer failing halfway leaves neither the output nor a temporary file."""

    class Failing:
        tasks = ("click", "conversion")
        schema_digest = scoring["schema"].digest()
        calls = 0

        def __call__(self, categorical: torch.Tensor, numerical: torch.Tensor) -> np.ndarray:
            self.calls += 1
            if self.calls == 2:
                raise RuntimeError("scorer failed")
            return np.zeros((len(categorical), 2))

    config = PredictConfig(
        model=Path("unused.pt"), dataset=scoring["dataset"], input=scoring["input"],
        output=tmp_path / "scores.parquet", batch_size=10,
    )  # fmt: skip
    with pytest.raises(RuntimeError, match="scorer failed"):
        predict(config, scorer=Failing())
    assert list(tmp_path.iterdir()) == []


def test_predict_refuses_a_model_of_another_schema(scoring: dict, tmp_path: Path) -> None:
    """Check that a model trained on another schema is refused, naming both digests."""
    other = tiny_schema(vocab=(9, 5, 4))
    torch.manual_seed(0)
    checkpoint = save_checkpoint(
        tmp_path / "other.pt", build_model("mmoe", other, TINY_MODEL), "mmoe", other.digest()
    )
    config = PredictConfig(
        model=checkpoint, dataset=scoring["dataset"], input=scoring["input"],
        output=tmp_path / "scores.csv",
    )  # fmt: skip
    with pytest.raises(
        SchemaMismatchError, match=rf"trained on schema {other.digest()} but dataset"
    ):
        predict(config)
    assert not (tmp_path / "scores.csv").exists()


def test_predict_refuses_an_unknown_output_format() -> None:
    """Check that an output name without .csv or .parquet is refused with the choices."""
    with pytest.raises(
        ConfigError, match=r"--output got 'scores.txt'; allowed: .*\.csv or \.parquet"
    ):
        PredictConfig(model="m.pt", dataset="d", input="rows.csv", output="scores.txt")


def test_predict_refuses_an_unknown_model_file(scoring: dict, tmp_path: Path) -> None:
    """Check that a model file that is neither a checkpoint nor an export is refused."""
    model = tmp_path / "model.bin"
    model.write_bytes(b"not a model")
    config = PredictConfig(
        model=model, dataset=scoring["dataset"], input=scoring["input"],
        output=tmp_path / "scores.csv",
    )  # fmt: skip
    with pytest.raises(ConfigError, match=r"--model got .*model.bin'; allowed: a checkpoint"):
        predict(config)


def test_score_split_matches_one_forward_pass(scoring: dict) -> None:
    """Check that scoring in batches of 7 equals one forward pass over all rows."""
    scorer = TorchScorer.from_checkpoint(scoring["checkpoint"])
    split = TensorSplit.from_arrays(make_rows(30, 1), scoring["schema"])
    batched = score_split(scorer, split, batch_size=7)
    whole = scorer(split.categorical, split.numerical)
    np.testing.assert_allclose(batched, whole, rtol=1e-6, atol=1e-7)
    assert batched.shape == (30, 2)


def test_predict_command_writes_the_output(
    scoring: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Check that taa predict writes --output and prints its path."""
    from taa.cli.main import main

    output = tmp_path / "scores.parquet"
    main(
        [
            "predict", "--model", str(scoring["checkpoint"]), "--dataset",
            str(scoring["dataset"]), "--input", str(scoring["input"]), "--output", str(output),
        ]
    )  # fmt: skip
    assert pq.read_table(output).num_rows == 50
    assert f"wrote {output}" in capsys.readouterr().out


def _predict_to(scoring: dict, output: Path, **options: object) -> Path:
    return predict(
        PredictConfig(
            model=scoring["checkpoint"],
            dataset=scoring["dataset"],
            input=scoring["input"],
            output=output,
            **options,
        )
    )


def test_predict_refuses_an_output_under_a_file(scoring: dict, tmp_path: Path) -> None:
    """Check that an --output whose parent is a file is refused naming that file."""
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError, match=r"--output got .*afile/x\.csv'.*afile' is a file"):
        _predict_to(scoring, tmp_path / "afile" / "x.csv")


def test_predict_refuses_an_unwritable_folder(scoring: dict) -> None:
    """Check that an --output in a folder that cannot be written is refused with its name."""
    with pytest.raises(ConfigError, match=r"--output got '/proc/o\.csv', but folder '/proc'"):
        _predict_to(scoring, Path("/proc/o.csv"))


def test_predict_refuses_a_folder_as_output(scoring: dict, tmp_path: Path) -> None:
    """Check that an existing folder given as --output is refused, suggesting a file name."""
    (tmp_path / "d.csv").mkdir()
    with pytest.raises(ConfigError, match=r"--output got .*d\.csv', which is a folder; give a"):
        _predict_to(scoring, tmp_path / "d.csv")


def test_predict_refuses_to_overwrite(scoring: dict, tmp_path: Path) -> None:
    """Check that an existing --output is kept unless --overwrite is given, then replaced."""
    output = tmp_path / "scores.csv"
    output.write_text("keep me")
    with pytest.raises(ConfigError, match=r"scores\.csv already exists; pass --overwrite"):
        _predict_to(scoring, output)
    assert output.read_text() == "keep me"
    _predict_to(scoring, output, overwrite=True)
    assert pacsv.read_csv(output).num_rows == 50
