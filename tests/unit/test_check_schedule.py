"""When the agent's periodic consistency check runs (agent.CheckSchedule): at least its
interval apart, stretched so that checking takes at most its share of the agent's time,
and after a poll that brought no change unless it is overdue by a whole interval."""
from __future__ import annotations

import argparse

import pytest

from controlplane.agent.agent import CheckSchedule
from controlplane.agent.commands import _share


def test_not_due_before_the_interval_after_a_sync_nor_before_a_sync_of_its_time_would_allow():
    checks = CheckSchedule(30.0, max_share=0.005)
    checks.synced(100.0, 0.01)
    assert not checks.due(129.9, quiet=True)
    assert checks.due(130.0, quiet=True)
    checks.synced(101.0, 1.0)                     # a 1 s sync: as a 1 s check, 200 s to the next
    assert not checks.due(300.9, quiet=True) and checks.due(301.0, quiet=True)


def test_waiting_on_the_store_is_charged_as_twice_the_work_it_hid():
    """A retry sync after a store outage takes seconds of the clock and little CPU: the
    next check comes at the interval, not 200 times the wait later. Work is charged by
    the clock."""
    assert CheckSchedule.cost(6.2, 0.05) == pytest.approx(0.1)   # mostly waiting
    assert CheckSchedule.cost(1.6, 1.5) == pytest.approx(1.6)    # work: the clock's time
    checks = CheckSchedule(30.0, max_share=0.005)
    checks.synced(106.2, CheckSchedule.cost(6.2, 0.05))
    assert checks.due(136.2, quiet=True)
    checks.checked(200.0, 206.0, 0.05)
    assert checks.took_s == pytest.approx(6.0) and checks.next_at == pytest.approx(236.0)


def test_a_burst_of_changes_goes_first_until_the_check_is_a_whole_interval_overdue():
    checks = CheckSchedule(30.0)
    checks.synced(0.0, 0.0)
    assert not checks.due(31.0, quiet=False)      # a change came with this poll: it waits
    assert checks.due(31.5, quiet=True)           # the next quiet poll
    assert not checks.due(59.9, quiet=False)
    assert checks.due(60.0, quiet=False)          # changes never stop: it runs anyway


def test_a_long_check_stretches_the_interval_to_its_share():
    checks = CheckSchedule(30.0, max_share=0.005)
    checks.checked(100.0, 101.6, 1.6)             # 1.6 s: at 0.5 %, the next 320 s later
    assert checks.took_s == pytest.approx(1.6)
    assert checks.next_at == pytest.approx(101.6 + 320.0)
    assert not checks.due(101.6 + 319.0, quiet=True) and checks.due(101.6 + 320.0, quiet=True)
    checks.checked(500.0, 500.01, 0.01)           # a quick one: the interval again
    assert checks.next_at == pytest.approx(530.01)


@pytest.mark.parametrize("text", ["0", "-0.1", "1.5", "nan", "half"])
def test_the_share_flag_takes_fractions_only(text):
    with pytest.raises(argparse.ArgumentTypeError, match="fraction"):
        _share(text)
    assert _share("0.01") == 0.01 and _share("1") == 1.0
