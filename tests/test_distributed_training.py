"""Data-parallel pretrain, adapt and evaluate with 2 gloo processes against 1 process.

Full-batch steps and dropout 0 make one process and two processes compute the same
thing up to the order of floating-point sums: the same rows per step (each rank holds
half), BatchNorm over the global batch (GlobalBatchNorm1d), gradients averaged with the
loss scaled per rank, metrics over all ranks' rows.

One thing is not reproducible across summation orders in the stock models: the Linear
biases that feed a BatchNorm move by rounding noise amplified by Adam (see
test_distributed_support). The comparison of final metrics therefore uses
``mmoe-bias-free``, MMoE with those biases removed, and is tight (1e-6 on AUC and
log-loss); for the stock MMoE the per-epoch training losses, which BatchNorm makes
independent of those biases, must agree within 1e-5.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp

from taa.distributed import DistributedContext, check_resumable, free_loopback_port
from taa.errors import ConfigError
from taa.train import AdaptConfig, EvaluateConfig, PretrainConfig, adapt, evaluate, pretrain
from test_distributed_support import BIAS_FREE, bias_free_registered
from test_train_support import TINY_MODEL, make_dataset

WORLD = 2
FULL_BATCH = 4096  # more than any split here: every step uses every training row
TOLERANCE = 1e-6
LOSS_TOLERANCE = 1e-5


def _pretrain_config(dataset: Path, run_dir: Path, model: str = BIAS_FREE) -> PretrainConfig:
    return PretrainConfig(
        dataset=dataset,
        domain="S",
        model=model,
        model_config=TINY_MODEL,
        epochs=3,
        batch_size=FULL_BATCH,
        lr=0.05,
        threads=1,
        quiet=True,
        run_dir=run_dir,
    )


def _adapt_config(dataset: Path, checkpoint: Path, run_dir: Path, method: str) -> AdaptConfig:
    return AdaptConfig(
        dataset=dataset,
        target="T",
        sample="s0",
        method=method,
        source_checkpoint=checkpoint,
        epochs=2,
        batch_size=FULL_BATCH,
        lr=0.02,
        threads=1,
        quiet=True,
        run_dir=run_dir,
        patience=5,
    )


def _evaluate_config(dataset: Path, checkpoint: Path) -> EvaluateConfig:
    return EvaluateConfig(
        checkpoint=checkpoint, dataset=dataset, domain="T", split="test", threads=1
    )


def _steps(dataset: Path, out: Path, rank: int) -> dict[str, Any]:
    """What both the 1-process and the 2-process runs do; returns what to compare."""
    torch.set_num_threads(1)
    results: dict[str, Any] = {}
    stock = pretrain(_pretrain_config(dataset, out / "stock", model="mmoe"))
    history = (stock.run_dir / "metrics.jsonl").read_text().splitlines()
    results["stock_losses"] = [json.loads(line)["train"]["loss"] for line in history]
    pretrained = pretrain(_pretrain_config(dataset, out / "pretrain"))
    results["pretrain"] = pretrained.final_metrics["tasks"]
    checkpoint = out / "pretrain" / "checkpoints" / "best.pt"
    results["evaluate"] = evaluate(_evaluate_config(dataset, checkpoint))["tasks"]
    finetuned = adapt(_adapt_config(dataset, checkpoint, out / "finetune", "finetune"))
    results["finetune"] = finetuned.final_metrics["tasks"]
    stock_checkpoint = out / "stock" / "checkpoints" / "best.pt"
    adapted = adapt(_adapt_config(dataset, stock_checkpoint, out / "taa", "taa"))
    results["taa"] = adapted.final_metrics["tasks"]
    return results


def _worker(rank: int, port: int, dataset: str, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        LOCAL_RANK=str(rank),
    )
    with bias_free_registered():
        results = _steps(Path(dataset), Path(out), rank)
    last = torch.load(Path(out) / "taa" / "checkpoints" / "last.pt", weights_only=True)
    results["critics"] = {key: value.tolist() for key, value in last["modules"]["critics"].items()}
    (Path(out) / f"rank{rank}.json").write_text(json.dumps(results))
    from taa.distributed import current, shutdown

    shutdown(current())


@pytest.fixture(scope="module", autouse=True)
def _bias_free_model() -> Iterator[None]:
    """Register the test-only bias-free MMoE for this module's tests only."""
    with bias_free_registered():
        yield


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The same pipeline run once in this process and once in 2 gloo processes."""
    root = tmp_path_factory.mktemp("ddp")
    dataset = make_dataset(root / "data", source_rows=400, sample_rows=60, valid_rows=40)
    threads = torch.get_num_threads()
    try:
        one = _steps(dataset, root / "one", rank=0)
    finally:
        torch.set_num_threads(threads)
    two_dir = root / "two"
    two_dir.mkdir()
    mp.spawn(_worker, args=(free_loopback_port(), str(dataset), str(two_dir)), nprocs=WORLD)
    ranks = [json.loads((two_dir / f"rank{rank}.json").read_text()) for rank in range(WORLD)]
    return {"one": one, "ranks": ranks, "root": root}


def _assert_close(first: dict, second: dict, tolerance: float) -> None:
    assert first.keys() == second.keys()
    for task in first:
        assert first[task]["rows"] == second[task]["rows"]
        for metric in ("auc", "logloss", "gauc"):
            a, b = float(first[task][metric]), float(second[task][metric])
            assert (math.isnan(a) and math.isnan(b)) or abs(a - b) <= tolerance, (
                task,
                metric,
                a,
                b,
            )


def test_two_process_pretrain_matches_one_process(runs: dict[str, Any]) -> None:
    """Check that 2-process full-batch pretraining reaches the 1-process test metrics."""
    _assert_close(runs["ranks"][0]["pretrain"], runs["one"]["pretrain"], TOLERANCE)


def test_two_process_training_losses_match_for_the_stock_model(runs: dict[str, Any]) -> None:
    """Check that the stock MMoE's per-epoch global-batch losses agree with one process."""
    one, two = runs["one"]["stock_losses"], runs["ranks"][0]["stock_losses"]
    assert len(one) == len(two) == 3
    for first, second in zip(one, two, strict=True):
        assert abs(first - second) <= LOSS_TOLERANCE


def test_two_process_evaluate_matches_one_process(runs: dict[str, Any]) -> None:
    """Check that evaluation over two ranks' rows equals evaluation in one process."""
    _assert_close(runs["ranks"][0]["evaluate"], runs["one"]["evaluate"], TOLERANCE)


def test_two_process_finetune_matches_one_process(runs: dict[str, Any]) -> None:
    """Check that 2-process full-batch fine-tuning reaches the 1-process test metrics."""
    _assert_close(runs["ranks"][0]["finetune"], runs["one"]["finetune"], TOLERANCE)


def test_every_rank_reports_the_same_metrics(runs: dict[str, Any]) -> None:
    """Check that metrics are computed over gathered rows, identically on every rank."""
    first, second = runs["ranks"]
    for stage in ("pretrain", "evaluate", "finetune", "taa"):
        _assert_close(first[stage], second[stage], 0.0)


def test_critics_stay_identical_across_ranks(runs: dict[str, Any]) -> None:
    """Check that the critics' hand-averaged gradients keep both ranks' critics equal."""
    first, second = runs["ranks"]
    assert first["critics"] == second["critics"]


def test_two_process_taa_metrics_are_finite(runs: dict[str, Any]) -> None:
    """Check that TAA over two processes trains to defined test metrics on every task."""
    for values in runs["ranks"][0]["taa"].values():
        assert math.isfinite(values["auc"]) and math.isfinite(values["logloss"])


def test_only_rank_zero_writes_the_run_folder(runs: dict[str, Any]) -> None:
    """Check that the 2-process run folder has one history line per epoch, not one per rank."""
    lines = (runs["root"] / "two" / "pretrain" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]


def test_resume_under_torchrun_is_refused() -> None:
    """Check that --resume with several processes is refused with the reason."""
    with pytest.raises(ConfigError, match=r"--resume is not supported under torchrun"):
        check_resumable(DistributedContext(0, 2, 0, "gloo"), resume=True)
    check_resumable(DistributedContext(), resume=True)


def test_torchrun_evaluate_matches_one_process(runs: dict[str, Any], tmp_path: Path) -> None:
    """Check that `torchrun -m taa evaluate` over 2 processes on 127.0.0.1 gives the
    1-process metrics and that only rank 0 writes the --output file."""
    root = runs["root"]
    output = tmp_path / "metrics.json"
    checkpoint = root / "one" / "stock" / "checkpoints" / "best.pt"  # a registered model
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node",
        str(WORLD), "--master-addr", "127.0.0.1", "--master-port", str(free_loopback_port()),
        "-m", "taa", "-q", "evaluate", "--checkpoint",
        str(checkpoint), "--dataset",
        str(root / "data"), "--domain", "T", "--split", "test", "--threads", "1",
        "--output", str(output),
    ]  # fmt: skip
    source = Path(__file__).resolve().parents[1] / "src"
    environment = {**os.environ, "PYTHONPATH": str(source), "OMP_NUM_THREADS": "1"}
    finished = subprocess.run(
        command, env=environment, capture_output=True, text=True, timeout=300, check=False
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert finished.stdout.count("mmoe on T/test:") == 1  # printed by rank 0 only
    expected = evaluate(_evaluate_config(root / "data", checkpoint))["tasks"]
    _assert_close(json.loads(output.read_text())["tasks"], expected, TOLERANCE)
