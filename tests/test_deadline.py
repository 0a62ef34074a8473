"""Deadlines: the clock object, the active context, and every method answering MAYBE on expiry."""

from __future__ import annotations

import math
import time

import pytest

from verify import deadline
from verify.deadline import Deadline, DeadlineExpired


def test_deadline_clock_basics():
    never = Deadline.after(None)
    assert not never.limited and never.remaining() == math.inf and not never.expired()
    never.check("nowhere")
    past = Deadline.after(0)
    assert past.expired() and past.remaining() == 0.0
    with pytest.raises(DeadlineExpired, match="timeout in the loop") as info:
        past.check("the loop")
    assert isinstance(info.value, TimeoutError) and info.value.where == "the loop"
    soon = Deadline.after(100.0)
    assert 99.0 < soon.remaining() <= 100.0 and not soon.expired()
    with pytest.raises(ValueError):
        Deadline.after(float("nan"))


def test_split_takes_a_fraction_of_what_remains():
    whole = Deadline.after(100.0)
    part = whole.split(0.25)
    assert 24.0 < part.remaining() <= 25.0
    assert whole.split(1.0).end <= whole.end
    assert Deadline.after(None).split(0.5).limited is False
    with pytest.raises(ValueError):
        whole.split(1.5)


def test_limits_nest_inward_and_restore():
    assert not deadline.active().limited
    with deadline.limit(100.0) as outer:
        assert deadline.active() is outer
        with deadline.limit(1000.0) as inner:  # cannot extend the enclosing limit
            assert inner.end == outer.end
        with deadline.limit(10.0) as inner:
            assert inner.remaining() <= 10.0
        assert deadline.active() is outer
        with deadline.limit(Deadline.after(0)):
            with pytest.raises(DeadlineExpired):
                deadline.check("inside")
    assert not deadline.active().limited
    deadline.check("outside")  # no limit: never raises


def test_limit_is_restored_after_an_exception():
    with pytest.raises(DeadlineExpired):
        with deadline.limit(0.0):
            time.sleep(0.001)
            deadline.check("x")
    assert not deadline.active().limited
