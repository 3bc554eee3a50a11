"""poll_until, in real time: the first truthy value, the caller's error at the deadline (built
then), delays fixed or growing, and no sleep past the deadline."""

from __future__ import annotations

import itertools
import time

import pytest

from provisioning.polling import poll_until


class Gone(Exception):
    pass


def test_the_first_truthy_value_is_returned_at_once_or_later() -> None:
    assert poll_until(lambda: "ready", 5, Gone) == "ready"
    answers = iter([None, 0, "", [], {"rule": 1}])
    started = time.monotonic()
    assert poll_until(lambda: next(answers), 5, Gone, every=0.01) == {"rule": 1}
    assert time.monotonic() - started < 2


def test_the_callers_error_at_the_deadline_names_the_latest_state() -> None:
    tries: list[float] = []

    def never() -> bool:
        tries.append(time.monotonic())
        return False

    started = time.monotonic()
    with pytest.raises(Gone, match=r"after \d+ tries"):
        poll_until(never, 0.3, lambda: Gone(f"after {len(tries)} tries"), every=0.05)
    assert time.monotonic() - started >= 0.3
    # At once, about every 0.05 s (fewer on a loaded machine: a sleep may last longer, never
    # less), and once more at the deadline.
    assert 2 <= len(tries) <= 8 and tries[-1] - started >= 0.3


def test_a_growing_delay_grows_and_stops_at_its_cap() -> None:
    tries: list[float] = []
    with pytest.raises(Gone):
        poll_until(lambda: tries.append(time.monotonic()), 0.6, Gone, every=0.01, growth=10, at_most=0.03)
    gaps = [b - a for a, b in itertools.pairwise(tries)]
    slack = 0.002  # a sleep lasts at least as long as asked, up to the clock's rounding
    assert gaps[0] >= 0.01 - slack and all(g >= 0.03 - slack for g in gaps[1:-1])  # grown: 0.01, then 0.03
    # Capped: about 20 tries (uncapped, 0.01, 0.1, 1.0 would make 4); fewer on a loaded machine.
    assert len(tries) >= 8


def test_no_sleep_outlasts_the_deadline() -> None:
    tries: list[float] = []
    started = time.monotonic()
    with pytest.raises(Gone):
        poll_until(lambda: tries.append(time.monotonic()), 0.2, Gone, every=30)
    assert time.monotonic() - started < 5
    assert len(tries) == 2  # at once, and at the deadline


@pytest.mark.parametrize("timeout", [0, -5, float("nan")])
def test_no_time_left_tries_once(timeout: float) -> None:
    """A timeout from a request (a volume service's Timeout) may be anything: 0 or less, or NaN,
    asks once."""
    calls: list[int] = []
    with pytest.raises(TimeoutError):
        poll_until(lambda: calls.append(1), timeout, TimeoutError)
    assert calls == [1]


def test_an_error_the_check_raises_ends_the_wait_at_once() -> None:
    def broken() -> bool:
        raise Gone("the process exited before mounting")

    started = time.monotonic()
    with pytest.raises(Gone, match="exited"):
        poll_until(broken, 30, TimeoutError)
    assert time.monotonic() - started < 0.5


@pytest.mark.parametrize("every, growth", [(0, 1), (-0.1, 1), (0.1, 0.5)])
def test_nonsense_delays_are_named(every: float, growth: float) -> None:
    with pytest.raises(ValueError, match="poll_until"):
        poll_until(lambda: True, 1, TimeoutError, every=every, growth=growth)
