"""Resuming a capture after a checkpoint: the store must hold every step the schedule records
up to the checkpoint's, or some step would never be recorded."""

from __future__ import annotations

import os

from zarrec.errors import ConfigError
from zarrec.record.recorder import Recorder
from zarrec.store import contract
from zarrec.store.schedule import StepSchedule


def first_unrecorded_step(committed: int | None, resume_step: int, every: int | str | StepSchedule) -> int | None:
    """The first step that ``every`` records after ``committed`` (the store's last step) and at
    or before ``resume_step`` (where training resumes), or None: resuming there leaves no gap."""
    following = 0 if committed is None else StepSchedule.parse(every).next_after(committed)
    return following if following <= resume_step else None


def starting_step(initial_step: int | None, resume_from: int | None) -> int:
    """The step training starts after: ``initial_step``, which defaults to ``resume_from`` (a
    plain loop resumed after step k records k + 1 next); the two may not disagree."""
    if initial_step is None:
        return resume_from or 0
    if resume_from is not None and initial_step != resume_from:
        raise ConfigError(
            f"resume_from={resume_from} but initial_step={initial_step}: training resumes after one step; "
            "pass resume_from alone (initial_step follows it)"
        )
    return initial_step


def refuse_a_gap(recorder: Recorder, resume_step: int, schedule: StepSchedule) -> None:
    """Refuse to resume after a checkpoint that is newer than the store's last commit (the
    recorder is closed first, its store as it was)."""
    missing = first_unrecorded_step(recorder.committed_step, resume_step, schedule)
    if missing is not None:
        recorder.close("refused to resume: steps would be missing")
        raise gap_error(recorder.store_name, recorder.committed_step, resume_step, missing)


def statistics_of(out: str | os.PathLike) -> str:
    """Where the health statistics of the store at ``out`` are: its ``statistics`` group."""
    return f"{os.fspath(out).rstrip('/')}/{contract.STATISTICS_GROUP}"


def gap_error(store_name: str, committed: int | None, resume_step: int, missing: int) -> ConfigError:
    return ConfigError(
        f"{store_name} holds steps up to {committed}, but training resumes after step {resume_step}: step {missing} "
        f"would never be recorded; resume from a checkpoint at or before step {committed}"
    )
