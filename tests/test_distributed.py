"""Tests of the data-parallel building blocks (taa.distributed) with 2 gloo processes on CPU."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from taa.distributed import (
    SINGLE_PROCESS,
    DistributedContext,
    GlobalBatchNorm1d,
    all_reduce_gradients,
    gather_rows,
    init_distributed,
    local_batch_size,
    shutdown,
    sync_batchnorm,
)
from taa.errors import ConfigError

WORLD = 2
ROWS = (slice(0, 6), slice(6, 10))  # deliberately unequal: 6 rows on rank 0, 4 on rank 1


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(10, 3, generator=generator) * torch.tensor([1.0, 5.0, 0.1])
    weights = torch.randn(10, 3, generator=generator)
    return features + torch.tensor([0.0, 3.0, -2.0]), weights


def _collectives_worker(rank: int, port: int, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        LOCAL_RANK=str(rank),
    )
    context = init_distributed(torch.device("cpu"))
    results: dict[str, Any] = {"context": context}

    # BatchNorm over the global batch: a weighted-sum loss, parameter grads summed by hand.
    features, weights = _inputs()
    norm = GlobalBatchNorm1d(3, momentum=0.3)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
        norm.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    local = features[ROWS[rank]].clone().requires_grad_(True)
    output = norm(local)
    (output * weights[ROWS[rank]]).sum().backward()
    for parameter in norm.parameters():
        torch.distributed.all_reduce(parameter.grad)
    results["bn_output"] = output.detach()
    results["bn_input_grad"] = local.grad
    results["bn_weight_grad"] = norm.weight.grad
    results["bn_bias_grad"] = norm.bias.grad
    results["bn_running"] = (norm.running_mean.clone(), norm.running_var.clone())

    # Gathering rows of unequal counts, in rank order.
    results["gathered"] = gather_rows(torch.full((rank + 2, 2), rank, dtype=torch.int64), context)

    # Averaging gradients by hand (the critics' path).
    critic = nn.Linear(2, 1)
    for parameter in critic.parameters():
        parameter.grad = torch.full_like(parameter, float(rank + 1))
    all_reduce_gradients(critic, context)
    results["critic_grad"] = critic.weight.grad.clone()

    torch.save(results, Path(out) / f"rank{rank}.pt")
    shutdown(context)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """Run the collectives once in two gloo processes on 127.0.0.1 and load what each saw."""
    from taa.distributed import free_loopback_port

    out = tmp_path_factory.mktemp("ranks")
    mp.spawn(_collectives_worker, args=(free_loopback_port(), str(out)), nprocs=WORLD)
    return [torch.load(out / f"rank{rank}.pt", weights_only=False) for rank in range(WORLD)]


def test_init_reads_rank_and_world_from_the_environment(two_ranks: list[dict[str, Any]]) -> None:
    """Check that each process learns its rank, the world size and the gloo backend on CPU."""
    assert [item["context"] for item in two_ranks] == [
        DistributedContext(0, 2, 0, "gloo"),
        DistributedContext(1, 2, 1, "gloo"),
    ]


def test_global_batchnorm_matches_batchnorm_on_the_whole_batch(
    two_ranks: list[dict[str, Any]],
) -> None:
    """Check that split rows normalised across ranks equal BatchNorm1d on all rows at once."""
    features, weights = _inputs()
    reference = nn.BatchNorm1d(3, momentum=0.3)
    with torch.no_grad():
        reference.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
        reference.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    whole = features.clone().requires_grad_(True)
    expected = reference(whole)
    (expected * weights).sum().backward()

    output = torch.cat([item["bn_output"] for item in two_ranks])
    input_grad = torch.cat([item["bn_input_grad"] for item in two_ranks])
    torch.testing.assert_close(output, expected.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(input_grad, whole.grad, atol=1e-5, rtol=1e-5)
    for item in two_ranks:
        torch.testing.assert_close(item["bn_weight_grad"], reference.weight.grad, atol=1e-5, rtol=0)
        torch.testing.assert_close(item["bn_bias_grad"], reference.bias.grad, atol=1e-5, rtol=0)


def test_global_batchnorm_running_statistics_match(two_ranks: list[dict[str, Any]]) -> None:
    """Check that running mean and unbiased running variance follow the global batch."""
    features, _ = _inputs()
    momentum = 0.3
    expected_mean = momentum * features.mean(0)
    expected_var = (1 - momentum) * torch.ones(3) + momentum * features.var(0, unbiased=True)
    for item in two_ranks:
        running_mean, running_var = item["bn_running"]
        torch.testing.assert_close(running_mean, expected_mean, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(running_var, expected_var, atol=1e-5, rtol=1e-5)


def test_gather_rows_concatenates_unequal_counts_in_rank_order(
    two_ranks: list[dict[str, Any]],
) -> None:
    """Check that 2 rows of rank 0 and 3 rows of rank 1 gather to 5 rows, rank 0 first."""
    for item in two_ranks:
        assert item["gathered"][:, 0].tolist() == [0, 0, 1, 1, 1]
        assert item["gathered"].dtype == torch.int64


def test_all_reduce_gradients_averages_over_ranks(two_ranks: list[dict[str, Any]]) -> None:
    """Check that gradients 1 and 2 on the two ranks become 1.5 on both."""
    for item in two_ranks:
        assert item["critic_grad"].tolist() == [[1.5, 1.5]]


def test_single_process_context_without_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    """Check that no WORLD_SIZE in the environment means one process and no process group."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    context = init_distributed(torch.device("cpu"))
    assert context == SINGLE_PROCESS
    assert not context.enabled and context.is_main


def test_partial_torchrun_environment_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Check that WORLD_SIZE without MASTER_ADDR and the rest is refused, naming what is missing."""
    for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match=r"WORLD_SIZE=2 is set but \['RANK', 'LOCAL_RANK', 'MAS"):
        init_distributed(torch.device("cpu"))


def test_non_integer_rank_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Check that a RANK that is not an integer is refused with the variable named."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "zero")
    for name in ("LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(name, "1")
    with pytest.raises(ConfigError, match=r"environment variable RANK='zero' is not an integer"):
        init_distributed(torch.device("cpu"))


def test_local_batch_size_refuses_an_uneven_split() -> None:
    """Check that a global batch of 10 over 4 processes is refused with the fix."""
    with pytest.raises(ConfigError, match=r"--batch-size got 10, .* over 4 processes; use a mul"):
        local_batch_size(10, DistributedContext(0, 4, 0, "gloo"))


def test_sync_batchnorm_swaps_layers_and_keeps_state() -> None:
    """Check that CPU conversion swaps nested BatchNorm1d layers, keeping the same parameters."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Sequential(nn.BatchNorm1d(4), nn.ReLU()))
    model[1][0].running_mean.fill_(0.5)
    state = {key: value.clone() for key, value in model.state_dict().items()}
    parameters = list(model.parameters())
    converted = sync_batchnorm(model, torch.device("cpu"))
    assert type(converted[1][0]) is GlobalBatchNorm1d
    assert all(a is b for a, b in zip(converted.parameters(), parameters, strict=True))
    assert converted.state_dict().keys() == state.keys()
    for key, value in converted.state_dict().items():
        assert torch.equal(value, state[key])


def test_global_batchnorm_alone_is_plain_batchnorm() -> None:
    """Check that without a process group the layer computes exactly what BatchNorm1d does."""
    torch.manual_seed(0)
    features = torch.randn(8, 3)
    reference = nn.BatchNorm1d(3)
    layer = GlobalBatchNorm1d(3)
    assert torch.equal(layer(features), reference(features))
    assert torch.equal(layer.running_var, reference.running_var)
