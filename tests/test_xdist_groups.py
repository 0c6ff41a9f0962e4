"""The test suite's own setup: the tests that share an expensive fixture run on one xdist worker.

Nothing fails when the groups are lost: each worker just builds the session's Ray and the
module fixtures again (two Rays on two cores, every export twice), and the suite is slower. So
this checks that ``conftest.py`` marks the tests and that pytest-xdist applied the marks.
"""

from __future__ import annotations

import pytest

from conftest import shared_fixture_group


def test_every_test_using_a_shared_fixture_is_marked_with_its_group(request):
    items = request.session.items
    for item in items:
        marks = [mark.args[0] for mark in item.iter_markers("xdist_group")]
        expected = shared_fixture_group(item)
        assert marks == ([expected] if expected else []), item.nodeid


def test_pytest_xdist_applies_the_groups_when_told_to(request):
    """Under ``--dist loadgroup`` a grouped test's node id carries ``@group``, which is what
    pytest-xdist's scheduler reads; pytest 9.2 with xdist 3.8 loses it (pytest-dev/pytest-xdist#1386)."""
    if not getattr(request.config.option, "loadgroup", False):
        pytest.skip("runs under pytest -n N --dist loadgroup (the README's test command)")
    grouped = [item for item in request.session.items if shared_fixture_group(item)]
    if not grouped:
        pytest.skip("none of the collected tests uses a shared fixture")
    lost = [item.nodeid for item in grouped if not item.nodeid.endswith(f"@{shared_fixture_group(item)}")]
    assert not lost, f"{len(lost)} of {len(grouped)} grouped tests lost their group, e.g. {lost[:1]}"
