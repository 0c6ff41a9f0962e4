"""Evaluate's fits on forked single-thread workers: the same numbers as fitting in this process,
results in submission order, and a worker's failure reported, never hung on."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch

from seqpool.errors import SeqpoolError
from seqpool.evaluation import evaluate
from seqpool.evaluation.protocol import Corpus, Runs
from seqpool.evaluation.workers import FitWorkers, fork_is_safe
from seqpool.states import TokenStates

from test_evaluate import LEARNED_FAST, synthetic_rows, write_jsonl

needs_fork = pytest.mark.skipif(not fork_is_safe(), reason="fits run in this process where fork is unsafe")


class Probe:
    """A fitter that records where and how each job ran (accuracy = pid, macro_f1 = torch threads)."""

    settings = None

    def __init__(self, fail: str | None = None):
        self.fail = fail

    def fitted(self, strategy, train, test, tasks):
        if strategy == "exit" and self.fail == "exit":
            os._exit(3)
        if strategy == "error":
            raise SeqpoolError("bad job")
        time.sleep(0.05)  # long enough that both workers take jobs
        return Runs(accuracy=[os.getpid()], macro_f1=[torch.get_num_threads()],
                    rows=[np.asarray([task[2] for task in tasks])])


def corpus() -> Corpus:
    return Corpus(TokenStates(torch.zeros(2, 3), torch.tensor([0, 1, 2])), {}, np.array([0, 1]))


def jobs(count: int, side: Corpus) -> list:
    return [("mean", side, side, [(np.arange(1), np.arange(1), seed)]) for seed in range(count)]


@needs_fork
def test_jobs_run_single_threaded_in_forked_workers_and_come_back_in_order():
    side = corpus()
    with FitWorkers(Probe(), [side], count=2) as workers:
        runs = list(workers.run(jobs(8, side)))
    pids = {run.accuracy[0] for run in runs}
    assert os.getpid() not in pids and len(pids) == 2
    assert all(run.macro_f1 == [1] for run in runs)
    assert [int(run.rows[0][0]) for run in runs] == list(range(8))


def test_one_worker_fits_here_on_one_thread_and_restores_the_count():
    side, before = corpus(), torch.get_num_threads()
    with FitWorkers(Probe(), [side], count=1) as workers:
        runs = list(workers.run(jobs(3, side)))
    assert {run.accuracy[0] for run in runs} == {os.getpid()}
    assert all(run.macro_f1 == [1] for run in runs)
    assert torch.get_num_threads() == before


@needs_fork
def test_a_killed_worker_is_one_clear_error_not_a_hang():
    side = corpus()
    with pytest.raises(SeqpoolError, match="worker process died"):
        with FitWorkers(Probe(fail="exit"), [side], count=2) as workers:
            list(workers.run(jobs(3, side) + [("exit", side, side, [])]))


@needs_fork
def test_a_user_error_in_a_worker_reaches_the_caller():
    side = corpus()
    with pytest.raises(SeqpoolError, match="bad job"):
        with FitWorkers(Probe(), [side], count=2) as workers:
            list(workers.run(jobs(2, side) + [("error", side, side, [])]))


@needs_fork
def test_evaluate_gives_the_same_numbers_on_two_workers_as_on_one(tmp_path, tiny_bert_encoder):
    """Every fit is single-threaded wherever it runs, so the worker count changes nothing:
    folds, repeats with the seed-variance fits, learned and parameter-free strategies."""
    data = write_jsonl(tmp_path / "toy.jsonl", synthetic_rows(60, seed=4))

    def run(threads):
        result = evaluate(data, strategies="mean,attention,max,se_mean", folds=3, repeats=2, threads=threads,
                          encoder=tiny_bert_encoder, cache_dir=tmp_path / "cache", learned_options=LEARNED_FAST,
                          n_resamples=999, learning_curve=(4,), curve_experiments=2)
        return result.to_dict()

    one, two = run(1), run(2)
    for key in ("strategies", "comparisons", "learning_curve"):
        assert one[key] == two[key], key
    assert set(one["timings"]["fit_seconds_by_strategy"]) == {"mean", "attention", "max", "se_mean"}


def test_a_process_that_started_cuda_fits_here(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    assert not fork_is_safe()
    side = corpus()
    with FitWorkers(Probe(), [side], count=2) as workers:
        runs = list(workers.run(jobs(3, side)))
    assert {run.accuracy[0] for run in runs} == {os.getpid()}
