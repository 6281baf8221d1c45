"""The core split: decoding and the model take every core in turn, never both at once."""

from __future__ import annotations

import pytest

from vitdex.indexer import cores
from vitdex.indexer.cores import CoreSplit, core_split, cpu_budget, decode_workers


@pytest.mark.parametrize("budget", [1, 2, 8, 64])
def test_automatic_split_relays_every_core(budget: int) -> None:
    split = core_split(0, budget)
    assert split == CoreSplit(
        budget=budget, model_threads=budget, decode_idle=budget, decode_busy=0
    )
    # The pool holds enough threads for a whole machine of decoding while the model waits.
    assert split.pool_size == budget


def test_configured_workers_run_beside_the_forward_pass() -> None:
    split = core_split(3, 2)
    assert split.decode_busy == 3
    assert split.decode_idle == 3  # never fewer while the model waits than beside it
    assert split.pool_size == 3
    assert split.model_threads == 2
    assert core_split(1, 8).decode_idle == 8


def test_with_a_gpu_the_cpus_decode_during_the_forward_pass() -> None:
    split = core_split(0, 8, accelerator=True)
    assert split.decode_busy == 7  # one core feeds the GPU
    assert split.decode_idle == 8
    assert core_split(0, 1, accelerator=True).decode_busy == 1
    assert core_split(2, 8, accelerator=True).decode_busy == 2


def test_budget_is_at_least_one_core() -> None:
    assert core_split(0, 0).budget == 1
    assert core_split(0, 0).pool_size == 1
    assert cpu_budget() >= 1


def test_negative_configuration_is_refused() -> None:
    with pytest.raises(ValueError, match="decode workers"):
        core_split(-1, 4)


def test_model_threads_and_pool_follow_the_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cores, "cpu_budget", lambda: 6)
    assert cores.model_threads() == 6
    assert decode_workers() == 6
    assert decode_workers(9) == 9
