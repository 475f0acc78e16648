"""Tests of model export to ONNX and TorchScript (taa.export, `taa export`)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from taa.cli.main import main
from taa.data.schema import CategoricalField, NumericalField, Schema
from taa.errors import ConfigError, DataError, SchemaMismatchError
from taa.export import (
    ExportConfig,
    ExportedModel,
    ExportedScorer,
    export_checkpoint,
    export_format_of,
    export_model,
    read_export_metadata,
)
from taa.models import ModelConfig, MultiTaskModel, available_models, build_model
from taa.train.checkpoint import save_checkpoint

SCHEMA = Schema(
    categorical=(
        CategoricalField("categorical_1", 6),
        CategoricalField("categorical_2", 4),
        CategoricalField("categorical_3", 3),
    ),
    numerical=(NumericalField("numerical_1"), NumericalField("numerical_2")),
    tasks=("click", "conversion"),
    domains=("A", "B"),
    vocabulary_digest="0123abcd",
)
TINY = ModelConfig(
    embedding_dim=4,
    expert_hidden=(8, 6),
    tower_hidden=(4,),
    dropout=0.1,
    num_experts=2,
    ple_shared_experts=1,
    ple_task_experts=1,
    ple_levels=2,
)
TOLERANCE = 1e-5


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread; a second one only adds wake-up overhead."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _trained_like(name: str) -> MultiTaskModel:
    """A tiny model whose BatchNorm statistics are not the defaults (as after training)."""
    torch.manual_seed(0)
    model = build_model(name, SCHEMA, TINY)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randint(0, 3, (32, 3)), torch.rand(32, 2) * 3 + 1)
    return model.eval()


def _rows(count: int, seed: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    categorical = torch.stack(
        [
            torch.randint(0, item.vocab_size, (count,), generator=generator)
            for item in SCHEMA.categorical
        ],
        dim=1,
    )
    return categorical, torch.rand(count, 2, generator=generator)


def _reference(
    model: MultiTaskModel, categorical: torch.Tensor, numerical: torch.Tensor
) -> torch.Tensor:
    with torch.no_grad():
        return model(categorical, numerical).probabilities


@pytest.mark.parametrize("name", available_models())
def test_onnx_matches_pytorch_for_every_model(tmp_path: Path, name: str) -> None:
    """Check that onnxruntime's probabilities equal PyTorch's within 1e-5, batches of 1 and 37."""
    model = _trained_like(name)
    path = tmp_path / f"{name}.onnx"
    export_model(model, name, SCHEMA, path, onnx_exporter="legacy", check=False)
    exported = ExportedModel.load(path)
    for count in (1, 37):
        categorical, numerical = _rows(count)
        got = exported(categorical, numerical)
        assert got.shape == (count, 2) and got.dtype == torch.float32
        torch.testing.assert_close(
            got, _reference(model, categorical, numerical), atol=TOLERANCE, rtol=0
        )


@pytest.mark.parametrize("name", available_models())
def test_torchscript_matches_pytorch_for_every_model(tmp_path: Path, name: str) -> None:
    """Check that the traced TorchScript file gives PyTorch's probabilities at other batch sizes."""
    model = _trained_like(name)
    path = tmp_path / f"{name}.pt"
    export_model(model, name, SCHEMA, path, format="torchscript", check=False)
    exported = ExportedModel.load(path)
    for count in (1, 37):
        categorical, numerical = _rows(count)
        torch.testing.assert_close(
            exported(categorical, numerical),
            _reference(model, categorical, numerical),
            atol=TOLERANCE,
            rtol=0,
        )


def test_dynamo_onnx_export_matches_pytorch(tmp_path: Path) -> None:
    """Check that the default (torch.export-based) ONNX exporter passes its own probe check."""
    model = _trained_like("mmoe")
    result = export_model(model, "mmoe", SCHEMA, tmp_path / "mmoe.onnx")
    assert result.max_difference is not None and result.max_difference <= TOLERANCE
    categorical, numerical = _rows(300)
    got = ExportedModel.load(result.path)(categorical, numerical, batch_size=128)
    torch.testing.assert_close(
        got, _reference(model, categorical, numerical), atol=TOLERANCE, rtol=0
    )


@pytest.mark.parametrize("format", ["onnx", "torchscript"])
def test_out_of_range_ids_score_as_oov(tmp_path: Path, format: str) -> None:
    """Check that indices past the vocabulary or negative score exactly as the OOV index 0."""
    model = _trained_like("ple")
    path = tmp_path / ("m.onnx" if format == "onnx" else "m.pt")
    export_model(model, "ple", SCHEMA, path, format=format, onnx_exporter="legacy", check=False)
    exported = ExportedModel.load(path)
    categorical, numerical = _rows(6)
    unseen = categorical.clone()
    unseen[:, 0] = torch.tensor([6, 7, 100, -1, -50, 6])  # field 1 has indices 0..5
    unseen[:, 2] = torch.tensor([3, -2, 9, 3, 1000, -1])  # field 3 has indices 0..2
    as_oov = categorical.clone()
    as_oov[:, 0] = 0
    as_oov[:, 2] = 0
    expected = _reference(model, as_oov, numerical)
    torch.testing.assert_close(exported(unseen, numerical), expected, atol=TOLERANCE, rtol=0)
    assert not torch.allclose(exported(categorical, numerical), expected)


def test_onnx_metadata_embeds_the_schema(tmp_path: Path) -> None:
    """Check that schema, digests, tasks and model name read back from ONNX metadata_props."""
    import onnxruntime

    path = tmp_path / "m.onnx"
    export_model(_trained_like("mmoe"), "mmoe", SCHEMA, path, onnx_exporter="legacy", check=False)
    # Read by onnxruntime: an independent reader of the same entries.
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    entries = session.get_modelmeta().custom_metadata_map
    assert Schema.from_dict(json.loads(entries["taa.schema"])) == SCHEMA
    assert entries["taa.schema_digest"] == SCHEMA.digest()
    assert entries["taa.vocabulary_digest"] == "0123abcd"
    assert json.loads(entries["taa.tasks"]) == ["click", "conversion"]
    assert entries["taa.model_name"] == "mmoe"
    assert json.loads(entries["taa.export"])["inputs"]["categorical"]["shape"] == ["batch", 3]
    assert read_export_metadata(path) == entries


def test_onnx_graph_has_dynamic_batch_inputs(tmp_path: Path) -> None:
    """Check that the ONNX inputs are int64 [batch, F] and float32 [batch, N], output [batch, T]."""
    import onnxruntime

    path = tmp_path / "m.onnx"
    export_model(_trained_like("omoe"), "omoe", SCHEMA, path, onnx_exporter="legacy", check=False)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = {item.name: (item.type, item.shape) for item in session.get_inputs()}
    assert inputs["categorical"][0] == "tensor(int64)" and inputs["categorical"][1][1] == 3
    assert inputs["numerical"][0] == "tensor(float)" and inputs["numerical"][1][1] == 2
    assert isinstance(inputs["categorical"][1][0], str)  # a named, dynamic axis
    (output,) = session.get_outputs()
    assert output.name == "probabilities" and output.shape[1] == 2


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_torchscript_extra_files_embed_the_schema(tmp_path: Path) -> None:
    """Check that schema.json and the taa entries read back from the TorchScript archive."""
    path = tmp_path / "m.pt"
    export_model(_trained_like("aitm"), "aitm", SCHEMA, path, format="torchscript", check=False)
    extra = {"schema.json": "", "taa_metadata.json": ""}
    torch.jit.load(str(path), _extra_files=extra)
    assert Schema.from_dict(json.loads(extra["schema.json"])) == SCHEMA
    entries = json.loads(extra["taa_metadata.json"])
    assert entries["taa.model_name"] == "aitm" and entries["taa.schema_digest"] == SCHEMA.digest()
    assert read_export_metadata(path) == entries
    assert export_format_of(path) == "torchscript"


def test_schema_mismatch_is_refused_when_scoring(tmp_path: Path) -> None:
    """Check that an exported model refuses a dataset with another vocabulary digest."""
    path = tmp_path / "m.onnx"
    export_model(_trained_like("mmoe"), "mmoe", SCHEMA, path, onnx_exporter="legacy", check=False)
    other = dataclasses.replace(SCHEMA, vocabulary_digest="ffff0000")
    with pytest.raises(SchemaMismatchError, match=r"was made for schema [0-9a-f]{16} but dataset"):
        ExportedModel.load(path).check_schema(other, "other-dataset")


def test_export_refuses_a_schema_of_other_shapes(tmp_path: Path) -> None:
    """Check that embedding a schema whose fields differ from the model's is refused."""
    other = dataclasses.replace(SCHEMA, categorical=SCHEMA.categorical[:2])
    with pytest.raises(SchemaMismatchError, match=r"do not match the schema's"):
        export_model(_trained_like("mmoe"), "mmoe", other, tmp_path / "m.onnx")


def test_wrong_input_width_is_refused(tmp_path: Path) -> None:
    """Check that scoring with the wrong number of categorical columns names the expected shape."""
    path = tmp_path / "m.pt"
    export_model(_trained_like("mmoe"), "mmoe", SCHEMA, path, format="torchscript", check=False)
    with pytest.raises(
        DataError, match=r"categorical input has shape \(2, 2\); .* expects \[B, 3\]"
    ):
        ExportedModel.load(path)(torch.zeros(2, 2, dtype=torch.int64), torch.zeros(2, 2))


def test_scorer_returns_float64_probabilities_and_digest(tmp_path: Path) -> None:
    """Check that the predict scorer adapter gives float64 [B, T] and the schema digest."""
    model = _trained_like("esmm")
    path = tmp_path / "m.pt"
    export_model(model, "esmm", SCHEMA, path, format="torchscript", check=False)
    scorer = ExportedScorer.load(path)
    categorical, numerical = _rows(5)
    scores = scorer(categorical, numerical)
    assert scores.dtype == np.float64 and scores.shape == (5, 2)
    assert scorer.schema_digest == SCHEMA.digest() and scorer.tasks == ("click", "conversion")
    np.testing.assert_allclose(scores, _reference(model, categorical, numerical).numpy(), atol=1e-6)


def _run_folder(tmp_path: Path, schema: Schema = SCHEMA) -> Path:
    run = tmp_path / "run"
    model = _trained_like("mmoe")
    save_checkpoint(
        run / "checkpoints" / "best.pt", model, "mmoe", SCHEMA.digest(), {"method": "taa"}
    )
    schema.save(run)
    return run


def test_export_checkpoint_from_a_run_folder(tmp_path: Path) -> None:
    """Check that a run folder exports its best checkpoint with the run's schema."""
    run = _run_folder(tmp_path)
    result = export_checkpoint(
        ExportConfig(source=run, out=tmp_path / "m.pt", format="torchscript")
    )
    assert result.max_difference is not None and result.max_difference <= TOLERANCE
    description = json.loads(result.metadata["taa.export"])
    assert description["source"]["method"] == "taa"
    assert description["model_config"]["num_experts"] == 2


def test_export_checkpoint_refuses_another_dataset_schema(tmp_path: Path) -> None:
    """Check that --dataset with another schema than the checkpoint's is refused."""
    run = _run_folder(tmp_path)
    dataset = tmp_path / "other"
    dataclasses.replace(SCHEMA, vocabulary_digest="ffff0000").save(dataset)
    config = ExportConfig(source=run, out=tmp_path / "m.onnx", dataset=dataset)
    with pytest.raises(
        SchemaMismatchError, match=r"was trained on schema [0-9a-f]{16} but dataset"
    ):
        export_checkpoint(config)


def test_export_checkpoint_without_a_schema_asks_for_dataset(tmp_path: Path) -> None:
    """Check that a lone checkpoint with no schema nearby asks for --dataset."""
    path = tmp_path / "model.pt"
    save_checkpoint(path, _trained_like("mmoe"), "mmoe", SCHEMA.digest())
    with pytest.raises(ConfigError, match=r"no schema.json found next to it .* pass --dataset"):
        export_checkpoint(ExportConfig(source=path, out=tmp_path / "m.onnx"))


def test_export_refuses_to_overwrite(tmp_path: Path) -> None:
    """Check that an existing --out file is kept unless --overwrite is given."""
    run = _run_folder(tmp_path)
    out = tmp_path / "m.onnx"
    out.write_text("keep me")
    with pytest.raises(ConfigError, match=r"m\.onnx already exists; pass --overwrite"):
        export_checkpoint(ExportConfig(source=run, out=out))
    assert out.read_text() == "keep me"


def test_export_of_a_missing_run_names_the_checkpoint(tmp_path: Path) -> None:
    """Check that a run folder without checkpoints/best.pt is refused naming the path."""
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty/checkpoints/best\.pt: no checkpoint to export"):
        export_checkpoint(ExportConfig(source=tmp_path / "empty", out=tmp_path / "m.onnx"))


def test_foreign_file_is_not_an_export(tmp_path: Path) -> None:
    """Check that a training checkpoint is not mistaken for an exported model."""
    path = tmp_path / "model.pt"
    save_checkpoint(path, _trained_like("mmoe"), "mmoe", SCHEMA.digest())
    assert export_format_of(path) is None
    with pytest.raises(DataError, match=r"model\.pt: not a model exported by `taa export`"):
        read_export_metadata(path)


def test_bad_format_option_is_refused(tmp_path: Path) -> None:
    """Check that an unknown --format names the allowed ones."""
    with pytest.raises(ConfigError, match=r"--format got 'tflite'; allowed: \['onnx', 'torchscr"):
        ExportConfig(source=tmp_path, out=tmp_path / "m", format="tflite")


def test_cli_exports_a_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Check that `taa export RUN --format torchscript --out FILE` writes a loadable file."""
    run = _run_folder(tmp_path)
    out = tmp_path / "served.pt"
    main(["export", str(run), "--format", "torchscript", "--out", str(out)])
    assert "exported mmoe (torchscript) to" in capsys.readouterr().out
    assert ExportedModel.load(out).model_name == "mmoe"


def test_export_refuses_an_out_under_a_file(tmp_path: Path) -> None:
    """Check that an --out whose parent is a file is refused before loading anything."""
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "afile" / "model.onnx"
    with pytest.raises(ConfigError, match=r"--out got .*model\.onnx'.*afile' is a file"):
        export_checkpoint(ExportConfig(source=tmp_path / "missing", out=out))


def test_export_refuses_an_unwritable_folder(tmp_path: Path) -> None:
    """Check that an --out in a folder that cannot be written is refused with its name."""
    with pytest.raises(ConfigError, match=r"--out got '/proc/m\.pt', but folder '/proc'"):
        export_checkpoint(ExportConfig(source=tmp_path, out=Path("/proc/m.pt")))


def test_export_refuses_a_folder_as_out(tmp_path: Path) -> None:
    """Check that a folder given as --out is refused even with --overwrite."""
    (tmp_path / "m.onnx").mkdir()
    with pytest.raises(ConfigError, match=r"--out got .*m\.onnx', which is a folder"):
        export_checkpoint(ExportConfig(source=tmp_path, out=tmp_path / "m.onnx", overwrite=True))
