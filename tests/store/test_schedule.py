"""Step schedules: which steps are kept, and the first kept step after any step."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zarrec import ConfigError
from zarrec.store.schedule import StepSchedule


def kept(schedule: StepSchedule, last: int) -> list[int]:
    return [step for step in range(last + 1) if schedule.records(step)]


def test_a_number_keeps_every_nth_step_and_step_zero():
    assert kept(StepSchedule.parse(3), 10) == [0, 3, 6, 9]
    assert StepSchedule.parse("3") == StepSchedule.parse(3)


def test_phases_change_the_stride_after_their_last_step():
    schedule = StepSchedule.parse("1:4,5:20,10")
    assert kept(schedule, 40) == [0, 1, 2, 3, 4, 5, 10, 15, 20, 30, 40]
    assert str(schedule) == "1:4,5:20,10"


@pytest.mark.parametrize(("spec", "message"), [
    ("0", "positive"), ("1:10", "only the last phase"), ("1:10,2:5,3", "increasing"), ("a", "cannot read"),
    ("1:x,2", "cannot read"), ("", "cannot read"),
])
def test_bad_schedules_name_the_problem(spec, message):
    with pytest.raises(ConfigError, match=message):
        StepSchedule.parse(spec)


schedules = st.lists(st.tuples(st.integers(1, 7), st.integers(1, 30)), max_size=3).flatmap(
    lambda phases: st.integers(1, 7).map(
        lambda last_every: StepSchedule(
            tuple(zip([e for e, _ in phases], _increasing([u for _, u in phases]))) + ((last_every, None),)
        )
    )
)


def _increasing(lengths: list[int]) -> list[int]:
    total, ends = 0, []
    for length in lengths:
        total += length
        ends.append(total)
    return ends


@given(schedules, st.integers(0, 120))
def test_next_after_is_the_first_kept_step_after(schedule, step):
    following = schedule.next_after(step)
    assert following > step and schedule.records(following)
    assert not any(schedule.records(s) for s in range(step + 1, following))


@pytest.mark.parametrize("spec", ["1", "7", "1:10,5", "1:1000,10:5000,100", "3:9,4:20,7"])
def test_count_is_the_number_of_kept_steps(spec):
    schedule = StepSchedule.parse(spec)
    for after, through in ((0, 1), (0, 37), (5, 100), (12, 6000), (9, 9)):
        assert schedule.count(after, through) == sum(schedule.records(s) for s in range(after + 1, through + 1))
