"""Where evaluate's fits run: one thread each, side by side on the machine's cores.

The fits of a comparison are many small, independent problems (folds x strategies). A
second torch thread speeds one of them up by ~1.25x at best (a learned pooler's ops are
too small to split well), while a second *process* running another fit doubles the
throughput. So every fit runs single-threaded, in one of ``count`` worker processes
forked from this one, which share the cached token states and pooled vectors copy-on-write
(nothing is pickled but the job's row indices and its results).

Every fit is single-threaded wherever it runs, so the numbers a seed gives do not depend
on how many workers ran them. Where ``fork`` is unsafe or missing (macOS, Windows, a process
that has started CUDA), with one worker, or for a single job, the fits run here, one after
another, still on one thread.
"""

from __future__ import annotations

import multiprocessing
import sys
from concurrent.futures import BrokenExecutor, ProcessPoolExecutor
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from seqpool.errors import SeqpoolError
from seqpool.threads import available_cpus, limited_threads

if TYPE_CHECKING:  # annotations only: the workers run the jobs of whatever fitter they are given
    from seqpool.evaluation.classifiers import Task
    from seqpool.evaluation.fitting import Corpus, Fitter, Runs

#: (strategy, training corpus, test corpus, tasks): one call of :meth:`Fitter.fitted`.
Job = tuple[str, "Corpus", "Corpus", Sequence["Task"]]

#: A worker's fitter and corpora: inherited through the fork (fork does not pickle a process' arguments).
_worker_state: tuple[Any, Sequence[Any]] | None = None


def fork_is_safe() -> bool:
    """Linux and other Unixes fork safely; macOS's system libraries do not survive a fork with
    threads running, Windows has no fork, and a process that has started CUDA (an encoder on
    the GPU) cannot hand it to a forked child."""
    if sys.platform == "darwin" or "fork" not in multiprocessing.get_all_start_methods():
        return False
    torch = sys.modules.get("torch")
    return torch is None or not torch.cuda.is_initialized()


class FitWorkers:
    """Runs :data:`Job` s and yields their :class:`Runs` in submission order.

    ``count`` workers (default: the CPUs this process may use); the processes are forked
    on the first :meth:`run` with several jobs and kept until the ``with`` block ends.
    """

    def __init__(self, fitter: "Fitter", corpora: Sequence["Corpus"], count: int | None = None):
        self.fitter, self.corpora = fitter, list(corpora)
        self.count = max(1, count if count is not None else available_cpus())
        self._executor: ProcessPoolExecutor | None = None

    def __enter__(self) -> "FitWorkers":
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def run(self, jobs: Sequence[Job]) -> Iterator["Runs"]:
        """Each job's runs, in order, as soon as it and every job before it are done."""
        encoded = [(strategy, self._index(train), self._index(test), list(tasks))
                   for strategy, train, test, tasks in jobs]
        if self.count == 1 or len(encoded) < 2 or not fork_is_safe():
            for job in encoded:
                with limited_threads(1):
                    yield _run_job(job, self.fitter, self.corpora)
            return
        futures = [self._pool().submit(_run_in_worker, job) for job in encoded]
        try:
            for future in futures:
                yield future.result()
        except BrokenExecutor:
            raise SeqpoolError("a fitting worker process died (killed, or out of memory?); rerun with "
                               "--threads 1 to fit in this process") from None
        finally:
            for future in futures:
                future.cancel()

    def _index(self, corpus: "Corpus") -> int:
        return next(i for i, known in enumerate(self.corpora) if known is corpus)

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            self._executor = ProcessPoolExecutor(self.count, mp_context=multiprocessing.get_context("fork"),
                                                 initializer=_start_worker, initargs=(self.fitter, self.corpora))
        return self._executor


def _start_worker(fitter: "Fitter", corpora: Sequence["Corpus"]) -> None:
    """A forked worker keeps the parent's fitter and corpora and runs one torch / BLAS thread."""
    global _worker_state
    import torch
    from threadpoolctl import threadpool_limits

    _worker_state = (fitter, corpora)
    torch.set_num_threads(1)
    threadpool_limits(limits=1)


def _run_in_worker(job: tuple[str, int, int, list["Task"]]) -> "Runs":
    fitter, corpora = _worker_state
    return _run_job(job, fitter, corpora)


def _run_job(job: tuple[str, int, int, list["Task"]], fitter: "Fitter", corpora: Sequence["Corpus"]) -> "Runs":
    strategy, train, test, tasks = job
    return fitter.fitted(strategy, corpora[train], corpora[test], tasks)
