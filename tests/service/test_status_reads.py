"""/status never waits on a store that does not answer: each of its store reads is bounded in time."""

from __future__ import annotations

import threading
import time

import pytest

from syncd.errors import StoreError
from syncd.service.status import bounded_read


class Owner:
    """Stands in for the runtime the reads belong to (any object that can be weakly referenced)."""


def test_a_read_that_does_not_answer_is_an_error_in_time_and_is_never_started_twice() -> None:
    owner, release, calls = Owner(), threading.Event(), []

    def slow() -> dict[str, int]:
        calls.append(1)
        release.wait(30)
        return {"rows": 7}

    for _ in range(3):  # the read under way is waited for again, never started twice
        started = time.monotonic()
        with pytest.raises(StoreError, match="did not answer within 0.2 s"):
            bounded_read(owner, "stats", slow, wait=0.2)
        assert time.monotonic() - started < 5
    assert len(calls) == 1
    release.set()
    assert bounded_read(owner, "stats", slow, wait=5) == {"rows": 7}


def test_a_read_that_fails_raises_its_own_error_and_a_later_read_runs_again() -> None:
    owner, answers = Owner(), iter([StoreError("bucket gone"), {"rows": 1}])

    def read() -> dict[str, int]:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    with pytest.raises(StoreError, match="bucket gone"):
        bounded_read(owner, "stats", read)
    assert bounded_read(owner, "stats", read) == {"rows": 1}
