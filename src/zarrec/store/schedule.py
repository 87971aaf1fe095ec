"""Which optimizer steps a recording keeps: ``every`` N-th step, or a schedule of phases.

A schedule is written ``"1:1000,10:5000,100"``: every step up to step 1000, then every
10th up to step 5000, then every 100th. A plain number ``"10"`` (or ``10``) is one phase.
Step 0, the initial state, is always kept. A step is kept when it is divisible by the
``every`` of the phase it falls in, so the kept steps are round numbers whatever phase
boundaries are chosen, and the store's ``step`` coordinate lists exactly the kept steps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from zarrec.errors import ConfigError

_SYNTAX = "write a number (every N-th step) or phases like '1:1000,10' (every step up to 1000, then every 10th)"


@dataclass(frozen=True)
class StepSchedule:
    """Phases ``(every, until)``: in each, steps divisible by ``every`` are kept, up to and
    including step ``until``; the last phase has ``until=None`` and runs to the end."""

    phases: tuple[tuple[int, int | None], ...]

    def __post_init__(self) -> None:
        if not self.phases:
            raise ConfigError(f"a step schedule needs at least one phase; {_SYNTAX}")
        previous_until = 0
        for index, (every, until) in enumerate(self.phases):
            last = index == len(self.phases) - 1
            if every < 1:
                raise ConfigError(f"every must be a positive number of steps, got {every}; {_SYNTAX}")
            if last != (until is None):
                raise ConfigError(f"only the last phase of a step schedule runs to the end ({self}); {_SYNTAX}")
            if until is not None:
                if until <= previous_until:
                    raise ConfigError(f"the phases of a step schedule must end at increasing steps ({self})")
                previous_until = until

    @classmethod
    def parse(cls, spec: int | str | StepSchedule) -> StepSchedule:
        """A schedule from ``10``, ``"10"`` or ``"1:1000,10"`` (see the module docstring)."""
        if isinstance(spec, StepSchedule):
            return spec
        if isinstance(spec, int):
            return cls(((spec, None),))
        phases = []
        try:
            for part in str(spec).split(","):
                every, _, until = part.strip().partition(":")
                phases.append((int(every), int(until) if until else None))
        except ValueError:
            raise ConfigError(f"cannot read the step schedule {spec!r}; {_SYNTAX}") from None
        return cls(tuple(phases))

    def __str__(self) -> str:
        return ",".join(f"{every}:{until}" if until is not None else str(every) for every, until in self.phases)

    def _phase(self, step: int) -> tuple[int, int | None]:
        return next(phase for phase in self.phases if phase[1] is None or step <= phase[1])

    def records(self, step: int) -> bool:
        """Whether ``step`` is kept."""
        if len(self.phases) == 1:  # (every=N: asked several times a step)
            return step % self.phases[0][0] == 0
        return step == 0 or step % self._phase(step)[0] == 0

    def count(self, after: int, through: int) -> int:
        """How many of the steps ``after + 1 .. through`` the schedule keeps."""
        kept, start = 0, 0
        for every, until in self.phases:  # phase: steps start+1 .. until
            end = through if until is None else min(until, through)
            low = max(start, after)
            if end > low:
                kept += end // every - low // every
            if until is None or until >= through:
                break
            start = until
        return kept

    def next_after(self, step: int) -> int:
        """The first kept step after ``step``."""
        candidate = step + 1
        while True:
            every, until = self._phase(candidate)
            kept = math.ceil(candidate / every) * every
            if until is None or kept <= until:
                return kept
            candidate = until + 1

    def gaps(self, steps: Sequence[int]) -> list[tuple[int, int]]:
        """The ranges of steps this schedule keeps between the first and the last of ``steps``
        (ascending) that ``steps`` lacks, each as (first missing, last missing)."""
        recorded, last = set(steps), steps[-1]
        gaps: list[tuple[int, int]] = []
        missing_run: tuple[int, int] | None = None
        expected = self.next_after(steps[0])
        while expected <= last:
            if expected in recorded:
                if missing_run is not None:
                    gaps.append(missing_run)
                    missing_run = None
            else:
                missing_run = (missing_run[0], expected) if missing_run else (expected, expected)
            expected = self.next_after(expected)
        return gaps
