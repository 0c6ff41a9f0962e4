"""seqpool.threads: the one thread-limiting context restores what it changed, whatever happens."""

from __future__ import annotations

import pytest
import torch

from seqpool.errors import SeqpoolError
from seqpool.threads import available_cpus, check_thread_count, limited_threads


def blas_threads() -> int:
    from threadpoolctl import threadpool_info

    counts = [pool["num_threads"] for pool in threadpool_info()]
    return max(counts) if counts else 1


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_limits_torch_and_restores(two_threads):
    with limited_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2


def test_restores_after_an_error(two_threads):
    with pytest.raises(KeyError):
        with limited_threads(1, blas=False):
            assert torch.get_num_threads() == 1
            raise KeyError("boom")
    assert torch.get_num_threads() == 2


def test_none_changes_nothing(two_threads):
    with limited_threads(None):
        assert torch.get_num_threads() == 2


def test_nested_limits_unwind_in_order(two_threads):
    with limited_threads(1):
        with limited_threads(3, blas=False):
            assert torch.get_num_threads() == 3
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2


def test_blas_pools_follow_only_when_asked(two_threads):
    pytest.importorskip("threadpoolctl")
    import numpy  # noqa: F401  (loads the BLAS threadpoolctl reports)

    before = blas_threads()
    with limited_threads(1):
        assert blas_threads() == 1
    assert blas_threads() == before
    with limited_threads(1, blas=False):
        assert blas_threads() == before


@pytest.mark.parametrize("count,message", [(0, "at least 1"), (-2, "at least 1"), (1.5, "whole number"),
                                           (True, "whole number"), ("2", "whole number")])
def test_bad_counts_are_user_errors_naming_the_parameter(count, message):
    with pytest.raises(SeqpoolError, match=f"threads must be .*{message}|{message}"):
        with limited_threads(count):
            pass
    with pytest.raises(SeqpoolError, match=f"^workers must be"):
        check_thread_count(count, "workers")


def test_available_cpus_is_positive():
    assert available_cpus() >= 1
