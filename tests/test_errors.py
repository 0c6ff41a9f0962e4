"""``SeqpoolError``: a ``ValueError`` that can say which Python parameters its message is about."""

from __future__ import annotations

import pickle

import pytest

from seqpool.errors import SeqpoolError


def test_parameters_is_a_declared_tuple_empty_unless_given():
    assert SeqpoolError("plain").parameters == ()
    error = SeqpoolError("folds must be at least 2", parameters=["folds", "tune=False"])
    assert error.parameters == ("folds", "tune=False") and str(error) == "folds must be at least 2"
    assert "parameters" in SeqpoolError.__annotations__
    assert isinstance(error, ValueError)


def test_parameters_survive_pickling():
    """Errors raised in evaluate's forked fit workers and Ray actors come back pickled."""
    error = pickle.loads(pickle.dumps(SeqpoolError("bad", parameters=("seed",))))
    assert type(error) is SeqpoolError and str(error) == "bad" and error.parameters == ("seed",)


def test_parameters_is_keyword_only():
    with pytest.raises(TypeError):
        SeqpoolError("message", ("folds",))  # type: ignore[misc]
