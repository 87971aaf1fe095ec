"""One training run being recorded: what every framework adapter does after an optimizer step.

The Hugging Face and Lightning callbacks capture their framework's events; this hands the
result to the :class:`~zarrec.Recorder`. Optimizers create their state at their first step,
so the recorded variables are fixed then; step 0 (the parameters as training began, kept by
:meth:`TrainingSession.keep_initial_state`) is recorded at that moment, just before step 1,
with NaN for everything that did not exist yet (gradients, loss, logits, learning rate) and
zeros for the optimizer's state.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from zarrec import contract
from zarrec.errors import ConfigError
from zarrec.recorder import Recorder, Value
from zarrec.schedule import StepSchedule
from zarrec.selection import ParameterSelection


class TrainingSession:
    """The steps of ``schedule`` of ``selection``'s quantities (and other values) into ``recorder``."""

    def __init__(self, recorder: Recorder, selection: ParameterSelection, schedule: StepSchedule) -> None:
        self.recorder = recorder
        self.selection = selection
        self.schedule = schedule
        self._started = False
        self._initial: dict[str, torch.Tensor] | None = None
        self._initial_values: dict[str, Value] = {}

    def keep_initial_state(self, **values: Value) -> None:
        """Copy the selected parameters now, before the first step changes them; ``values`` are
        other step-0 values that exist already (e.g. a probe's logits)."""
        self._initial = self.selection.snapshot()
        self._initial_values = values

    def wants(self, step: int) -> bool:
        """Whether :meth:`after_step` needs this step's values: a recorded step, or the first."""
        return not self._started or self.schedule.records(step)

    def after_step(self, step: int, grads: Mapping[str, torch.Tensor | None], **values: Value) -> None:
        """Record optimizer step ``step`` if the schedule keeps it: the selection's quantities
        (with ``grads``, the gradients the step used) and ``values`` (loss, lr, logits, ...)."""
        if not self._started:
            self._start(values)
        if self.schedule.records(step):
            self.recorder.record(step, **self.selection.values(grads), **values)

    def close(self, reason: str | None = None) -> None:
        self.recorder.close(reason)

    def _start(self, values: Mapping[str, Value]) -> None:
        try:
            targets = self.selection.targets()
        except ConfigError as error:
            self.recorder.close(f"refused to record: {error}")
            raise
        for target in targets:
            self.recorder.label(target.variable, target.dims, **target.attrs)
        self._started = True
        if self._initial is not None:
            not_yet = {name: _nan_like(value) for name, value in values.items()}
            self.recorder.record(0, **{**self.selection.initial_values(self._initial), **not_yet, **self._initial_values})
            self._initial = None


def selection_attributes(selection: ParameterSelection, schedule: StepSchedule) -> dict[str, Any]:
    """Group attributes saying what a recording selected (a resumed run must select the same)."""
    return {
        contract.PARAMS_ATTR: selection.names,
        contract.QUANTITIES_ATTR: None if selection.quantities is None else list(selection.quantities),
        contract.SCHEDULE_ATTR: str(schedule),
        "dtype": str(selection.dtype).removeprefix("torch."),
    }


def _nan_like(value: Value) -> Value:
    """NaN in the shape and dtype of ``value``: one source dtype per variable from step 0 on."""
    if isinstance(value, torch.Tensor):
        return torch.full_like(value, float("nan"))
    return float("nan")
