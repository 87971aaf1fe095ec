"""Per-row statistics of the recorded parameters at every step, computed on their device.

Recording a large model's full state every step costs more than training (a GPT-2
embedding, its gradient and Adam moments are 618 MB a step); its per-row statistics cost
a few kilobytes. With ``ModelRecorder(summaries=True)`` they are recorded at every optimizer
step into the store's ``summaries`` group, while the full tensors follow ``every``. For
parameter ``W`` with gradient ``g`` and momentum ``m`` (the optimizer's ``exp_avg`` or
``momentum_buffer`` after step t), per row ``r`` (the other dims reduced):

- ``param_norm[t, r]  = ‖W[t, r]‖``
- ``grad_norm[t, r]   = ‖g[t, r]‖``
- ``update_norm[t, r] = ‖W[t, r] − W[t−1, r]‖`` (a copy of ``W[t−1]`` is kept on the device)
- ``cos_grad_momentum[t, r] = ⟨g[t, r], m[t, r]⟩ / (‖g[t, r]‖ ‖m[t, r]‖)``

:func:`zarrec.analysis.row_statistics` reads them back, or computes them from a store's full
state with the same formulas.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from zarrec.capture.selection import ParameterSelection
from zarrec.record.recorder import Recorder
from zarrec.store import contract
from zarrec.store.contract import MOMENTUM_KEYS, STATISTICS, summary_variable

DESCRIPTIONS = {
    "param_norm": "‖W[t, r]‖: norm of row r of {param} after step t",
    "grad_norm": "‖g[t, r]‖: norm of row r of the gradient of {param} that step t used",
    "update_norm": "‖W[t, r] − W[t−1, r]‖: norm of row r of step t's update of {param}",
    "cos_grad_momentum": "⟨g, m⟩ / (‖g‖ ‖m‖) of row r of {param}'s gradient and momentum (after step t)",
}


class RowStatistics:
    """Computes the statistics of every selected parameter with rows (``ndim ≥ 1``)."""

    def __init__(self, selection: ParameterSelection) -> None:
        self.selection = selection
        self.params = [name for name, p in selection.parameters.items() if p.ndim >= 1]
        self._previous: dict[str, torch.Tensor] = {}

    def labels(self) -> dict[str, tuple[tuple[str, ...], dict[str, str]]]:
        """Each variable's dims and attributes."""
        return {
            summary_variable(name, statistic): (
                self.selection.dims(name)[:1],
                {contract.PARAM_ATTR: name, "statistic": statistic, "description": DESCRIPTIONS[statistic].format(param=name)},
            )
            for name in self.params for statistic in STATISTICS
        }

    def open_recorder(
        self, out: str, coords: Mapping[str, tuple[str, Any]], *, overwrite: bool, resume_from: int | None,
        flush_every: int | None, on_error: str,
    ) -> Recorder:
        """The recorder of the statistics at ``out`` (the store's ``summaries`` group), with the
        run's ``coords`` along the parameters' rows and every statistic labelled."""
        rows = {self.selection.dims(name)[0] for name in self.params}
        recorder = Recorder(
            out, overwrite=overwrite,
            coords={name: (dim, values) for name, (dim, values) in coords.items() if dim in rows},
            attrs={"description": "per-row statistics of the recorded parameters at every optimizer step"},
            resume_from=(resume_from or -1) if resume_from is not None else None, flush_every=flush_every,
            on_error=on_error,
        )
        for name, (dims, attrs) in self.labels().items():
            recorder.label(name, dims, **attrs)
        return recorder

    @torch.no_grad()
    def initial(self, snapshot: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Step 0: the parameters' row norms; the rest NaN. Keeps them as the previous step."""
        values = {}
        for name in self.params:
            weights = self.selection.at_rows(name, snapshot[name])
            self._previous[name] = weights.clone()
            norms = _row_norms(weights)
            values.update({summary_variable(name, s): torch.full_like(norms, float("nan")) for s in STATISTICS})
            values[summary_variable(name, "param_norm")] = norms
        return values

    @torch.no_grad()
    def of_step(self, grads: Mapping[str, torch.Tensor | None]) -> dict[str, torch.Tensor]:
        """After an optimizer step: its statistics, from the live parameters, ``grads`` (a
        parameter's gradient this step; None: it had none) and the optimizer's state."""
        values = {}
        for name in self.params:
            weights = self.selection.at_rows(name, self.selection.parameters[name])
            norms = _row_norms(weights)
            nan = torch.full_like(norms, float("nan"))
            values[summary_variable(name, "param_norm")] = norms
            previous = self._previous.get(name)
            if previous is None:
                values[summary_variable(name, "update_norm")] = nan
                self._previous[name] = weights.clone()
            else:  # in place: no step-sized temporary
                values[summary_variable(name, "update_norm")] = _row_norms(previous.sub_(weights))
                previous.copy_(weights)
            grad = grads.get(name)
            grad = self.selection.at_rows(name, grad) if grad is not None else None
            values[summary_variable(name, "grad_norm")] = _row_norms(grad) if grad is not None else nan
            state = self.selection.optimizer.state.get(self.selection.parameters[name], {})
            momentum = next((state[key] for key in MOMENTUM_KEYS if key in state), None)
            if grad is not None and momentum is not None:
                momentum = self.selection.at_rows(name, momentum)
                values[summary_variable(name, "cos_grad_momentum")] = _row_dot(grad, momentum) / (
                    values[summary_variable(name, "grad_norm")] * _row_norms(momentum)
                )
            else:
                values[summary_variable(name, "cos_grad_momentum")] = nan
        return values


def _row_norms(x: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(x.float(), dim=tuple(range(1, x.ndim))) if x.ndim > 1 else x.float().abs()


def _row_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """⟨a[r], b[r]⟩ for every row r, as a batched matrix product: no product-sized temporary."""
    if a.ndim == 1:
        return a.float() * b.float()
    rows = a.float().reshape(len(a), 1, -1)
    return torch.bmm(rows, b.float().reshape(len(b), -1, 1)).reshape(len(a))
