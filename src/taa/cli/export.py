"""``taa export``: a trained model to ONNX or TorchScript with its schema embedded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from taa.cli._options import config_from_options, dataclass_options
from taa.export import ExportConfig


@click.command(name="export")
@click.argument("source", type=click.Path(path_type=Path))
@dataclass_options(ExportConfig, exclude=("source",))
def command(source: Path, **options: Any) -> None:
    """Export SOURCE (a run folder or a checkpoint) to --out as ONNX or TorchScript.

    Inputs are `categorical` int64 [B, F] and `numerical` float32 [B, N]; the output is
    `probabilities` float32 [B, T]; the batch axis is dynamic. The dataset schema, its
    digest, the vocabulary digest, the task names and the model name are embedded, and
    `taa predict --model FILE` scores with the file. See docs/commands/export.md.
    """
    from taa.export import export_checkpoint

    config = config_from_options(ExportConfig, {**options, "source": source})
    result = export_checkpoint(config)
    line = f"exported {result.metadata['taa.model_name']} ({result.format}) to {result.path}"
    if result.max_difference is not None:
        line += f"; matches PyTorch within {result.max_difference:.2g} on a probe batch"
    click.echo(line)
