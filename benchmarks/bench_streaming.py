"""Peak memory of streaming a Parquet split (``--streaming``) against loading it whole.

Writes prepared splits of the AliExpress shapes (16 categorical fields, 63 numerical, 2
tasks) at several sizes into a temporary folder, then, in a fresh subprocess per size and
mode, makes one shuffled training pass in batches and prints the rows per second and the
process's peak resident memory (``ru_maxrss``):

* ``stream``: :class:`taa.data.shards.ParquetStream` with a bounded shuffle buffer;
* ``whole``: :func:`taa.data.batches.load_split` then :func:`iterate_batches`.

Streaming should stay flat as the split grows; loading whole grows with it.

    .venv/bin/python benchmarks/bench_streaming.py --sizes 250000,1000000,2000000
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CATEGORICAL = 16
NUMERICAL = 63
CHUNK_ROWS = 65_536


def _schema():  # type: ignore[no-untyped-def]
    from taa.data.schema import CategoricalField, NumericalField, Schema

    return Schema(
        categorical=tuple(CategoricalField(f"categorical_{i + 1}", 50) for i in range(CATEGORICAL)),
        numerical=tuple(NumericalField(f"numerical_{i + 1}") for i in range(NUMERICAL)),
        tasks=("click", "conversion"),
        domains=("A",),
    )


def write_dataset(folder: Path, rows: int, seed: int = 0) -> Path:
    """A prepared dataset with ``rows`` train rows, written chunk by chunk (bounded memory)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    _schema().save(folder)
    path = folder / "A" / "train.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    generator = np.random.default_rng(seed)
    writer = None
    for start in range(0, rows, CHUNK_ROWS):
        count = min(CHUNK_ROWS, rows - start)
        columns = {"search_id": np.arange(start, start + count, dtype=np.int64) // 10}
        for index in range(CATEGORICAL):
            columns[f"categorical_{index + 1}"] = generator.integers(0, 50, count, dtype=np.int32)
        for index in range(NUMERICAL):
            columns[f"numerical_{index + 1}"] = generator.random(count, dtype=np.float32)
        click = generator.random(count) < 0.02
        columns["click"] = click.astype(np.int8)
        columns["conversion"] = (click & (generator.random(count) < 0.05)).astype(np.int8)
        table = pa.table(columns)
        if writer is None:
            writer = pq.ParquetWriter(path, table.schema)
        writer.write_table(table, row_group_size=CHUNK_ROWS)
    if writer is not None:
        writer.close()
    return folder


def child(mode: str, dataset: Path, batch_size: int, buffer_rows: int) -> None:
    """One shuffled training pass; prints a JSON line with rows, seconds and peak RSS."""
    import torch

    from taa.data.batches import iterate_batches, load_split
    from taa.data.shards import ParquetStream

    schema = _schema()
    start = time.perf_counter()
    rows = 0
    checksum = 0.0
    if mode == "stream":
        stream = ParquetStream(
            dataset / "A" / "train.parquet",
            schema,
            batch_size=batch_size,
            seed=0,
            buffer_rows=buffer_rows,
        )
        batches = stream.epoch(0)
    else:
        split = load_split(dataset, "A", "train", schema)
        batches = iterate_batches(
            split,
            batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(0),
            training=True,
        )
    for batch in batches:
        rows += len(batch)
        checksum += float(batch.labels[:, 0].sum())
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"rows": rows, "seconds": seconds, "peak_rss_mib": peak, "clicks": checksum}))


def measure(mode: str, dataset: Path, batch_size: int, buffer_rows: int) -> dict[str, float]:
    command = [
        sys.executable,
        __file__,
        "--child",
        mode,
        "--dataset",
        str(dataset),
        "--batch-size",
        str(batch_size),
        "--buffer-rows",
        str(buffer_rows),
    ]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="250000,1000000,2000000", help="comma-separated rows")
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--buffer-rows", type=int, default=65_536)
    parser.add_argument("--modes", default="stream,whole", help="stream, whole or both")
    parser.add_argument("--child", choices=["stream", "whole"], help=argparse.SUPPRESS)
    parser.add_argument("--dataset", type=Path, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.child:
        child(arguments.child, arguments.dataset, arguments.batch_size, arguments.buffer_rows)
        return

    sizes = [int(item) for item in arguments.sizes.split(",") if item.strip()]
    modes = [item for item in arguments.modes.split(",") if item.strip()]
    print(
        f"streaming benchmark: batch {arguments.batch_size}, shuffle buffer "
        f"{arguments.buffer_rows} rows, {CATEGORICAL} categorical + {NUMERICAL} numerical fields"
    )
    print(f"{'rows':>10} {'mode':>7} {'file MiB':>9} {'rows/s':>10} {'peak RSS MiB':>13}")
    with tempfile.TemporaryDirectory(prefix="taa-bench-streaming-") as work:
        for size in sizes:
            dataset = write_dataset(Path(work) / f"rows-{size}", size)
            file_mib = (dataset / "A" / "train.parquet").stat().st_size / 2**20
            for mode in modes:
                result = measure(mode, dataset, arguments.batch_size, arguments.buffer_rows)
                if int(result["rows"]) != size:
                    raise SystemExit(f"{mode} pass saw {result['rows']} rows, expected {size}")
                rate = result["rows"] / result["seconds"]
                print(
                    f"{size:>10} {mode:>7} {file_mib:>9.0f} {rate:>10.0f} "
                    f"{result['peak_rss_mib']:>13.0f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
