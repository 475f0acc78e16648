"""Benchmark of ``taa prepare`` on a raw Tianchi download against a plain pandas pipeline.

Writes a raw-layout country (a folder of the four inner zips, headerless CSVs inside) with
``--rows`` item rows in the train split (plus ``--test-fraction`` of that in the test split),
then, each in a fresh subprocess so that its peak resident memory can be read alone:

* ``taa``: ``prepare_dataset`` on the folder (extract, stage, check, join, vocabulary,
  statistics, encode, write Parquet), once per ``--engines`` entry (``arrow``, ``duckdb``);
* ``pandas``: ``read_csv`` of the four zips, ``merge`` of items and pages, ``to_parquet``
  (no checks, no vocabulary, no encoding);
* ``floor``: only inflate each CSV and parse every value once with DuckDB's parallel
  reader (``FLOOR_JOB``). Every pipeline that reads the zips pays at least this, so
  pandas' time over the floor's bounds the speed-up over pandas that any implementation
  built on these readers can reach.

Both run at two input sizes (``--rows`` and ``--small-fraction`` of it) to show whether
peak memory grows with the input. Prints rows per second, peak RSS and the speed ratio.

Usage::

    python benchmarks/bench_prepare.py                  # 5,000,000 train item rows
    python benchmarks/bench_prepare.py --rows 200000    # a quick run
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

USER_CATEGORICAL = (2, 3, 4, 5, 6, 7, 8, 32, 33)
ITEM_CATEGORICAL = (19, 34, 35, 36, 40, 41, 42)
CHUNK_ROWS = 500_000

TAA_JOB = """
import sys
from pathlib import Path
from taa.data.prepare import PrepareConfig, prepare_dataset
prepare_dataset(PrepareConfig(out=Path(sys.argv[1]), domains=("XX=" + sys.argv[2],),
                              memory_limit=sys.argv[3], engine=sys.argv[4], quiet=True))
"""

PANDAS_JOB = """
import sys
from pathlib import Path
import pandas as pd
source, out = Path(sys.argv[2]), Path(sys.argv[1])
out.mkdir(parents=True)
for split in ("train", "test"):
    users = pd.read_csv(source / f"xx_user_{split}.zip", header=None)
    items = pd.read_csv(source / f"xx_item_{split}.zip", header=None)
    joined = items.merge(users, on=0, how="inner", suffixes=("_item", "_user"))
    joined.columns = [str(column) for column in joined.columns]
    joined.to_parquet(out / f"{split}.parquet")
"""

# The least any pipeline that reads these zips must do: inflate each CSV to disk and parse
# every value once with DuckDB's parallel CSV reader (summing each column so that nothing
# is skipped). No join, no checks, no vocabulary, no writing of a dataset.
FLOOR_JOB = """
import shutil, sys, zipfile
from pathlib import Path
import duckdb
out, source = Path(sys.argv[1]), Path(sys.argv[2])
out.mkdir(parents=True)
connection = duckdb.connect()
connection.execute("SET enable_progress_bar = false")
for archive_path in sorted(source.glob("*.zip")):
    with zipfile.ZipFile(archive_path) as archive:
        member = archive.namelist()[0]
        with archive.open(member) as stream, open(out / member, "wb") as sink:
            shutil.copyfileobj(stream, sink, 8 << 20)
    columns = connection.sql(
        f"SELECT * FROM read_csv('{out / member}', header = false) LIMIT 0"
    ).columns
    sums = ", ".join(f'sum("{name}")' for name in columns)
    connection.sql(f"SELECT {sums} FROM read_csv('{out / member}', header = false)").fetchall()
    (out / member).unlink()
"""


@dataclass
class Measure:
    """Wall time and peak resident memory of one subprocess."""

    seconds: float
    peak_mib: float


def _write_csv(
    path: Path,
    columns: int,
    categorical: tuple[int, ...],
    rows: int,
    pages: int,
    seed: int,
    item: bool,
) -> None:
    """Write a headerless raw CSV in chunks: page ids, small integer codes, 4-decimal floats."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    rng = np.random.default_rng(seed)
    options = pacsv.WriteOptions(include_header=False)
    writer = None
    for start in range(0, rows, CHUNK_ROWS):
        count = min(CHUNK_ROWS, rows - start)
        if item:
            page = np.sort(rng.integers(0, pages, count)) + start // CHUNK_ROWS * 0
        else:
            page = np.arange(start, start + count)
        data = {"c1": page.astype(np.int64)}
        for column in range(2, columns + 1):
            if column in categorical:
                data[f"c{column}"] = rng.integers(0, 30, count)
            elif item and column == columns:
                data[f"c{column}"] = rng.choice(3, count, p=[0.96, 0.03, 0.01])
            else:
                data[f"c{column}"] = np.round(rng.random(count), 4)
        table = pa.table(data)
        if writer is None:
            writer = pacsv.CSVWriter(path, table.schema, write_options=options)
        writer.write_table(table)
    if writer is not None:
        writer.close()


def write_country(folder: Path, rows: int, test_fraction: float, items_per_page: int) -> int:
    """Write the four inner zips of a raw country; return the number of item rows."""
    folder.mkdir(parents=True)
    total = 0
    for split, split_rows in (("train", rows), ("test", max(1, int(rows * test_fraction)))):
        pages = max(1, split_rows // items_per_page)
        seed = 0 if split == "train" else 1
        for part, count, columns, categorical, item in (
            ("user", pages, 33, USER_CATEGORICAL, False),
            ("item", split_rows, 49, ITEM_CATEGORICAL, True),
        ):
            csv_path = folder / f"xx_{part}_{split}.csv"
            _write_csv(csv_path, columns, categorical, count, pages, seed, item)
            with zipfile.ZipFile(
                folder / f"xx_{part}_{split}.zip",
                "w",
                compresslevel=1,
                compression=zipfile.ZIP_DEFLATED,
            ) as archive:
                archive.write(csv_path, csv_path.name)
            csv_path.unlink()
        total += split_rows
    return total


def measure(job: str, out: Path, source: Path, *extra: str) -> Measure:
    """Run ``job`` in a fresh Python; return its wall time and peak RSS (``wait4``)."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-c", job, str(out), str(source), *extra])
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"benchmark job failed with exit code {process.returncode}")
    return Measure(seconds=seconds, peak_mib=usage.ru_maxrss / 1024)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5_000_000, help="train item rows")
    parser.add_argument("--test-fraction", type=float, default=0.1)
    parser.add_argument(
        "--small-fraction",
        type=float,
        default=0.25,
        help="size of the second, smaller input (fraction of --rows)",
    )
    parser.add_argument("--items-per-page", type=int, default=20)
    parser.add_argument("--memory-limit", default="512MB", help="DuckDB memory limit for taa")
    parser.add_argument(
        "--engines", default="arrow,duckdb", help="comma-separated taa engines to measure"
    )
    parser.add_argument("--skip-pandas", action="store_true", help="measure taa only")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: tmp)")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="bench-prepare-", dir=args.work))
    try:
        results = []
        for rows in (int(args.rows * args.small_fraction), args.rows):
            source = work / f"raw-{rows}"
            started = time.perf_counter()
            total = write_country(source, rows, args.test_fraction, args.items_per_page)
            size = sum(path.stat().st_size for path in source.iterdir()) / 2**20
            print(
                f"wrote {total:,} item rows ({size:,.0f} MiB zipped) in "
                f"{time.perf_counter() - started:.1f} s",
                flush=True,
            )
            taa = {}
            for engine in args.engines.split(","):
                out = work / f"taa-{engine}-{rows}"
                taa[engine] = measure(TAA_JOB, out, source, args.memory_limit, engine)
                shutil.rmtree(out)
            pandas = None
            if not args.skip_pandas:
                pandas = measure(PANDAS_JOB, work / f"pandas-{rows}", source)
                shutil.rmtree(work / f"pandas-{rows}")
            floor = measure(FLOOR_JOB, work / f"floor-{rows}", source)
            shutil.rmtree(work / f"floor-{rows}")
            shutil.rmtree(source)
            results.append((total, taa, pandas))
            _print_size(total, taa, pandas, floor)
        (small_rows, small_taa, _), (big_rows, big_taa, _) = results
        for engine, small in small_taa.items():
            big = big_taa[engine]
            print(
                f"taa ({engine}) peak RSS: {small.peak_mib:,.0f} MiB at {small_rows:,} rows, "
                f"{big.peak_mib:,.0f} MiB at {big_rows:,} rows "
                f"(x{big.peak_mib / small.peak_mib:.2f} for x{big_rows / small_rows:.1f} rows)"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _print_size(
    total: int, taa: dict[str, Measure], pandas: Measure | None, floor: Measure
) -> None:
    for engine, measured in taa.items():
        print(
            f"  taa {engine:<7} {total:>11,} rows {measured.seconds:7.1f} s "
            f"{total / measured.seconds:>10,.0f} rows/s peak {measured.peak_mib:7,.0f} MiB",
            flush=True,
        )
    if pandas is not None:
        print(
            f"  pandas      {total:>11,} rows {pandas.seconds:7.1f} s "
            f"{total / pandas.seconds:>10,.0f} rows/s peak {pandas.peak_mib:7,.0f} MiB",
            flush=True,
        )
        for engine, measured in taa.items():
            print(
                f"  speed ratio taa ({engine}) / pandas: {pandas.seconds / measured.seconds:.2f}x",
                flush=True,
            )
    print(
        f"  floor       {total:>11,} rows {floor.seconds:7.1f} s "
        f"{total / floor.seconds:>10,.0f} rows/s peak {floor.peak_mib:7,.0f} MiB "
        "(inflate + parse only)",
        flush=True,
    )
    if pandas is not None:
        print(
            f"  ceiling: pandas' whole job over reading alone = "
            f"{pandas.seconds / floor.seconds:.2f}x, the most any pipeline on these readers "
            "can gain over pandas",
            flush=True,
        )


if __name__ == "__main__":
    main()
