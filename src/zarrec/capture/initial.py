"""Step 0: the model as it was when recording started (and the random state then, where it
is recorded), kept until the first step is recorded."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from zarrec.capture.selection import ParameterSelection
from zarrec.record.variables import Value
from zarrec.store import contract


class InitialState:
    """The selected parameters (and the probe's logits), copied on their device before the first
    step changes them; recorded as step 0 with the first step, which fixes the variables."""

    def __init__(self, selection: ParameterSelection, probe_logits: torch.Tensor | None,
                 random_states: dict[str, torch.Tensor]) -> None:
        self.parameters = selection.snapshot()
        self.extra: dict[str, Value] = {**random_states, **({} if probe_logits is None else {contract.PROBE_LOGITS: probe_logits})}

    def values(self, selection: ParameterSelection, first: Mapping[str, Value]) -> dict[str, Value]:
        """Step 0's values: the parameters as they were, their optimizer state as it starts, and
        NaN for what the first step's ``first`` values hold and step 0 did not have yet."""
        not_yet = {name: _nan_like(value) for name, value in first.items() if name not in self.extra}
        return {**selection.initial_values(self.parameters), **not_yet, **self.extra}


def _nan_like(value: Value) -> Value:
    """NaN in the shape and dtype of ``value``: one source dtype per variable from step 0 on."""
    if isinstance(value, torch.Tensor):
        return torch.full_like(value, float("nan"))
    return float("nan")
