"""Health statistics of every trained parameter at every optimizer step, computed on its device.

The full state of a large model costs more to record than to train; its health costs a few
numbers a parameter. For parameter ``W`` with gradient ``g`` (as the step used it), optimizer
state ``m`` (``exp_avg`` or ``momentum_buffer``) after step t, actual update
``a = W[t] − W[t−1]`` and the update ``u`` the optimizer intended by its own formula
(:data:`INTENDED`), each step records, per parameter (dims ``step`` × ``param``):

- ``param_norm = ‖W[t]‖``, ``grad_norm = ‖g‖``, ``update_norm = ‖a‖``
- ``intended_norm = ‖u‖``, ``update_dot_intended = ⟨a, u⟩``, ``residual_norm = ‖a − u‖``
  (so the realized fraction ``⟨a, u⟩ / ‖u‖²``)
- ``momentum_norm = ‖m‖``, ``cos_grad_momentum = ⟨g, m⟩ / (‖g‖ ‖m‖)``

and the same per row (the other dims reduced) for the recorded parameters with rows (the
input embedding by default: one value per token), as ``<param>.<statistic>`` along that
parameter's row dim. NaN where a quantity does not exist (no gradient this step; step 0 has
only ``param_norm``; ``u`` for an optimizer whose update zarrec does not know).

Cost: one pass over ``W``, ``W[t−1]``, ``g``, ``m``, ``v`` of each parameter (a
``torch.compile``d function for large parameters: eager operations would make a temporary per
operation), and one device copy of every trained parameter (``W[t−1]``, in its own dtype).
``statistics="norms"`` keeps no copy: ``param_norm``, ``grad_norm``, ``momentum_norm`` and
``cos_grad_momentum`` only. Nothing here waits for the device: the values are staged like
every recorded tensor. The work is queued on the parameters' device
(:mod:`~zarrec.record.device_queue`): on an accelerator its kernels join the stream; on a CPU,
for a model whose parameters are all reduced in flat groups (each below
``passes.COMPILE_FROM_ELEMENTS`` entries, with an optimizer zarrec knows), it runs on a worker
thread, from a copy of the gradients taken on the training thread (one fused copy: the
training thread may zero them in place) and from the live parameters and optimizer state,
which the optimizer's next step waits for (a step pre-hook that returns at once when the work
is done). A CPU run with a large parameter is reduced on the training thread: the cost of
large parameters is memory traffic, which a second thread does not remove.

Under FSDP2 each rank reduces its own rows: the per-row statistics are its rows' (recorded as
its part of the row dim), and of each parameter it records the sums above
(:data:`ADDENDS`), which the chunk's all-reduce sums over the ranks before the statistics are
taken from them (:class:`~zarrec.record.ranks.SumsOverRanks`): no collective per step.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from zarrec.capture import passes
from zarrec.capture.passes import PASSES, FlatGroup
from zarrec.capture.resume import statistics_of
from zarrec.capture.selection import ParameterSelection, input_embedding
from zarrec.errors import ConfigError, ZarrecWarning
from zarrec.record.device_queue import (
    Immediate,
    OnAWorkerThread,
    OnTheDevice,
    accelerator_of,
)
from zarrec.record.ranks import SumsOverRanks, is_dtensor, rows_part
from zarrec.record.recorder import Recorder
from zarrec.store import contract
from zarrec.store.contract import HEALTH_STATISTICS, MOMENTUM_KEYS, row_statistic
from zarrec.store.location import committed_step, store_exists

_LOGGER = logging.getLogger("zarrec")

DESCRIPTIONS = {
    "param_norm": "‖W[t]‖: norm of {of} after step t",
    "grad_norm": "‖g[t]‖: norm of the gradient of {of} that step t used",
    "update_norm": "‖a[t]‖, a[t] = W[t] − W[t−1]: norm of step t's actual update of {of}",
    "intended_norm": "‖u[t]‖: norm of the update of {of} that the optimizer intended at step t (its own formula)",
    "update_dot_intended": "⟨a[t], u[t]⟩ of {of}: the realized fraction is ⟨a, u⟩ / ‖u‖²",
    "residual_norm": "‖a[t] − u[t]‖: norm of what {of} did not take of the intended update",
    "momentum_norm": "‖m[t]‖: norm of the momentum of {of} (exp_avg or momentum_buffer after step t)",
    "cos_grad_momentum": "⟨g, m⟩ / (‖g‖ ‖m‖) of {of}'s gradient and momentum (exp_avg or momentum_buffer after step t)",
}

# Each statistic's sum over a parameter's entries (the pass's index): what a rank of a sharded
# run records of its part, summed over the ranks before the statistics are taken.
ADDENDS = {
    "param_norm": passes.W2, "grad_norm": passes.G2, "update_norm": passes.A2, "intended_norm": passes.U2,
    "update_dot_intended": passes.AU, "residual_norm": passes.R2, "momentum_norm": passes.M2,
    "cos_grad_momentum": passes.GM,
}

# The intended update u of each optimizer zarrec knows, with lr the step's learning rate, wd
# the group's weight decay, m̂ = m / (1 − β1ᵗ), v̂ = v / (1 − β2ᵗ), b the momentum buffer:
INTENDED = {
    "AdamW": "u = −lr · m̂ / (√v̂ + eps) − lr · wd · W[t−1]",
    "Adam": "u = −lr · m̂ / (√v̂ + eps)   (the weight decay is in g, so in m and v)",
    "SGD": "u = −lr · b (momentum); −lr · (g + wd · W[t−1]) − lr · μ · b (Nesterov); −lr · (g + wd · W[t−1]) (none)",
}

@dataclass
class _Tracked:
    """A trained parameter, its optimizer's kind and its copy of the previous step."""

    name: str
    parameter: torch.nn.Parameter
    group: int  # its param group's index
    kind: str  # "AdamW", "Adam", "SGD", or "" (its update unknown)
    rows: torch.Tensor | None  # its recorded rows (None: all), when its statistics are kept per row (sharded: ids in this rank's part)
    per_row: bool
    split: tuple[int, ...] | None = None  # sharded, rows chosen: where the ranks split the recorded rows
    previous: torch.Tensor | None = None


class HealthStatistics:
    """The statistics of every trained parameter of ``model`` at every step.

    ``selection``: the recorded parameters, whose rows (its chosen ones) are kept per row;
    ``light``: keep no copy of ``W[t−1]`` (no update statistics); ``sharded``: the model is
    sharded by FSDP2, this rank reduces its own rows.
    """

    def __init__(self, model: torch.nn.Module, selection: ParameterSelection, *, light: bool = False,
                 sharded: bool = False) -> None:
        optimizer = selection.optimizer
        groups = {id(p): index for index, group in enumerate(optimizer.param_groups) for p in group["params"]}
        self.optimizer = optimizer
        self.selection = selection
        self.light = light
        self.sharded = sharded
        kind = _kind(optimizer)
        self.tracked = [
            _Tracked(name, p, groups[id(p)], kind, selection.own_chosen.get(name, (selection.rows.get(name),))[0],
                     per_row=name in selection.parameters and p.ndim >= 2,
                     split=selection.own_chosen[name][1] if name in selection.own_chosen else None)
            for name, p in model.named_parameters() if p.requires_grad and id(p) in groups
        ]
        embedding = input_embedding(model)
        self.embedding_name = next((name for name, p in model.named_parameters() if p is embedding), None)
        self.flat_groups: list[tuple[FlatGroup, list[_Tracked]]] = []  # made by keep_previous
        self.recorder: Recorder | None = None  # opened by open_recorder
        self.latest: dict[str, torch.Tensor] = {}  # the last recorded step's statistics of each parameter (for to_log)
        self.queue: Immediate | OnAWorkerThread = Immediate()  # where each step's work runs (start_queue)
        self._drain_before_step: torch.utils.hooks.RemovableHandle | None = None
        self.unknown_update = "" if kind else (
            f"the intended update of {type(optimizer).__name__} is not known to zarrec "
            f"(it is for {', '.join(INTENDED)}): only the norms are recorded"
        )

    @property
    def params(self) -> list[str]:
        return [t.name for t in self.tracked]

    def labels(self) -> dict[str, tuple[tuple[str, ...], dict[str, str]]]:
        """Each variable's dims (after ``step``) and attributes."""
        labels = {
            statistic: ((contract.PARAM_DIM,), {"statistic": statistic, "description": DESCRIPTIONS[statistic].format(of="each parameter")})
            for statistic in HEALTH_STATISTICS
        }
        for t in self.tracked:
            if t.per_row:
                row_dim = self.selection.dims(t.name)[:1]
                for statistic in HEALTH_STATISTICS:
                    of = f"each row of {t.name}"
                    labels[row_statistic(t.name, statistic)] = (
                        row_dim, {contract.PARAM_ATTR: t.name, "statistic": statistic, "description": DESCRIPTIONS[statistic].format(of=of)},
                    )
        return labels

    def attrs(self) -> dict[str, Any]:
        """The group's attributes: what it holds and, per optimizer, the intended update's formula."""
        return {
            "description": "health statistics of every trained parameter at every optimizer step (zarrec.capture.health)",
            "intended_update": INTENDED.get(_kind(self.optimizer), self.unknown_update),
            "light": self.light,
            **({contract.EMBEDDING_ATTR: self.embedding_name} if self.embedding_name else {}),
        }

    def open_recorder(
        self, out: str | os.PathLike, coords: Mapping[str, tuple[str, Any]], *, overwrite: bool,
        resume_from: int | None, flush_every: int | None, on_error: str,
    ) -> Recorder:
        """The recorder of the statistics into the run store ``out``'s ``statistics`` group,
        every variable labelled, with the ``param`` coordinate and the run's ``coords`` along the
        rows kept. A run resumed from a store recorded without statistics starts them there; one
        whose statistics end before the step it resumes after (a crash between the commits of
        the run's arrays and of its statistics) continues them after a gap, with a warning."""
        where = statistics_of(out)
        if resume_from is not None and not store_exists(where):
            resume_from = None
        elif resume_from:
            committed = committed_step(where)
            if committed is None or committed < resume_from:
                lost = f"{0 if committed is None else committed + 1}..{resume_from}"
                warnings.warn(f"zarrec: {where} holds no statistics of steps {lost} (lost when the run stopped); "
                              f"they continue after step {resume_from}", ZarrecWarning, stacklevel=4)
                resume_from = committed if committed is not None else 0
        rows = {self.selection.dims(t.name)[0] for t in self.tracked if t.per_row}
        recorder = Recorder(
            where, overwrite=overwrite, attrs=self.attrs(),
            coords={contract.PARAM_DIM: (contract.PARAM_DIM, self.params),
                    **{name: (dim, values) for name, (dim, values) in coords.items() if dim in rows}},
            resume_from=(resume_from or -1) if resume_from is not None else None, flush_every=flush_every,
            on_error=on_error, distributed=self.sharded,
            over_ranks=SumsOverRanks(tuple(sorted(HEALTH_STATISTICS)), _finish) if self.sharded else None,
        )
        for name, (dims, attrs) in self.labels().items():
            recorder.label(name, dims, **attrs)
        for t in self.tracked:
            if t.per_row and t.split is not None:
                for statistic in HEALTH_STATISTICS:
                    recorder.split_rows(row_statistic(t.name, statistic), t.split)
        self.recorder = recorder
        return recorder

    def start_queue(self) -> None:
        """Queue each step's work on the parameters' device, or on a worker thread for a CPU
        run whose every parameter is reduced in a flat group (see the module's docstring)."""
        device = accelerator_of(t.parameter for t in self.tracked)
        grouped = sum(len(members) for _, members in self.flat_groups)
        if device is not None:
            self.queue = OnTheDevice(device)
        elif not self.sharded and self.flat_groups and grouped == len(self.tracked):
            self.queue = OnAWorkerThread("zarrec-statistics")
            self._grouped = [(flat, [t.parameter for t in members]) for flat, members in self.flat_groups]
            self._drain_before_step = self.optimizer.register_step_pre_hook(lambda *_: self.queue.drain())

    @property
    def copies_grads(self) -> bool:
        """Whether each step's work runs on a worker thread, from a copy of the gradients."""
        return isinstance(self.queue, OnAWorkerThread)

    def copy_of_grads(self, before_clipping: bool = False) -> list[torch.Tensor] | None:
        """Each flat group's gradients now, copied (one fused copy; the queue's work that read the
        last copy is done first); None where a parameter has none."""
        self.queue.drain()  # (done long ago, normally: the last step's work, which read the copy)
        try:
            return [flat.copy_of_grads([p.grad for p in parameters], before_clipping)  # (not sharded: no DTensor)
                    for flat, parameters in self._grouped]
        except TypeError:  # a parameter without a gradient this step (the fused copy takes tensors only)
            return None

    def grads_in(self, copies: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each parameter's gradient in a copy made by :meth:`copy_of_grads`, by name."""
        return {t.name: g for (flat, members), copy in zip(self.flat_groups, copies) for t, g in zip(members, flat.grads_of(copy))}

    def record(self, step: int, lrs: Sequence[float | torch.Tensor], grads: list[torch.Tensor] | None = None) -> None:
        """Record optimizer step ``step``'s statistics (its param groups used the rates ``lrs``),
        from the live gradients or ``grads`` (:meth:`copy_of_grads`), where the queue runs this."""
        values = self.of_step(lrs, grads)
        self.latest = {statistic: values[statistic] for statistic in HEALTH_STATISTICS if statistic in values}
        self.recorder.record(step, **values)

    def run(self, work: Callable[[], None], queued: bool) -> None:
        """A step's ``work``: queued (it reads copies of the gradients), or done now, after the
        queued work (one thread at a time records)."""
        if queued:
            self.queue.run(work)
        else:
            self.queue.drain()
            work()

    def to_log(self) -> dict[str, float]:
        """The last recorded step's statistics of each parameter, ``{"<statistic>/<param>": value}``,
        for a framework's logger: one copy from the device (empty before the first step; under
        FSDP2 this rank's addends are not the statistics, which the store holds)."""
        self.queue.drain()
        if not self.latest or self.sharded:
            return {}
        table = torch.stack(list(self.latest.values())).tolist()  # (one synchronisation)
        return {f"{statistic}/{param}": value for statistic, row in zip(self.latest, table) for param, value in zip(self.params, row)}

    def stop_queue(self) -> None:
        """Finish the queued work and stop the worker thread, if there is one (its error raised)."""
        if self._drain_before_step is not None:
            self._drain_before_step.remove()
            self._drain_before_step = None
        self.queue.close()

    @torch.no_grad()
    def keep_previous(self) -> None:
        """Copy every parameter as it is now: ``W[t−1]`` of the next step. Small parameters of
        a known optimizer are grouped (:class:`~zarrec.capture.passes.FlatGroup`) by param
        group, device and dtype: their copies are views of the group's buffer."""
        if self.light:
            return
        small: dict[tuple, list[_Tracked]] = {}
        for t in self.tracked:
            w = _local(t.parameter.detach())
            if t.kind and w.numel() < passes.COMPILE_FROM_ELEMENTS:
                small.setdefault((t.group, w.device, w.dtype), []).append(t)
            else:
                t.previous = w.clone()
        for members in small.values():
            weights = [_local(t.parameter.detach()) for t in members]
            flat = FlatGroup(weights, [w.shape[0] if t.per_row else 1 for t, w in zip(members, weights)])
            for t, view in zip(members, flat.previous_of()):
                t.previous = view
            self.flat_groups.append((flat, members))

    @torch.no_grad()
    def initial(self) -> dict[str, torch.Tensor]:
        """Step 0 (the parameters before training): ``param_norm``; the rest NaN."""
        sums = {t.name: _pass_of_norms(_local(t.parameter.detach()), None, None, None, t) for t in self.tracked}
        return self._values(sums, initial=True)

    @torch.no_grad()
    def of_step(self, lrs: Sequence[float | torch.Tensor], grads: list[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """After an optimizer step whose param groups used learning rates ``lrs``: its
        statistics, from the live parameters, their gradients (or ``grads``, each flat group's
        copy of them) and the optimizer's state; the parameters are then kept as the next
        step's ``W[t−1]``."""
        coefficients: dict[tuple[int, Any], torch.Tensor] = {}
        sums = {}
        for index, (flat, members) in enumerate(self.flat_groups):
            sums.update(self._flat_sums(flat, members, lrs, coefficients, None if grads is None else grads[index]))
        for t in self.tracked:
            if t.name in sums:
                continue
            state, momentum = self._state_of(t)
            w, g = _local(t.parameter.detach()), _local(t.parameter.grad)
            previous = t.previous
            k = self._coefficients(t, state, lrs[t.group], coefficients) if g is not None and previous is not None else None
            if k is None:
                sums[t.name] = _pass_of_norms(w, previous, g, momentum, t)
            elif t.kind == "SGD":
                sums[t.name] = PASSES["sgd"](*_rows(t, w, previous, g, g if momentum is None else momentum), k)
                if momentum is None:
                    sums[t.name][[passes.GM, passes.M2]] = float("nan")
            else:
                sums[t.name] = PASSES["adam"](*_rows(t, w, previous, g, momentum, _local(state["exp_avg_sq"])), k)
            if previous is not None:
                previous.copy_(w)
        return self._values({t.name: sums[t.name] for t in self.tracked})

    def _flat_sums(self, flat: FlatGroup, members: list[_Tracked], lrs: Sequence[float | torch.Tensor],
                   cache: dict[tuple[int, Any], torch.Tensor], copied: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """The sums of a group of small parameters in one pass, from their live gradients or
        ``copied`` (the group's copy of them); none (each is then reduced alone) where one of
        them lacks a gradient or state this step, or their constants differ."""
        grads = flat.grads_of(copied) if copied is not None else [_local(t.parameter.grad) for t in members]
        states, constants, without_momentum = [], [], []
        for t, g in zip(members, grads):
            state, momentum = self._state_of(t)
            k = self._coefficients(t, state, lrs[t.group], cache) if g is not None else None
            if k is None or (t.kind != "SGD" and momentum is None):
                return {}
            states.append([momentum, _local(state["exp_avg_sq"])] if t.kind != "SGD" else [g if momentum is None else momentum])
            constants.append(k)
            without_momentum.append(momentum is None)
        if any(k is not constants[0] for k in constants):
            return {}
        weights = [_local(t.parameter.detach()) for t in members]
        found = flat.sums(weights, grads if copied is None else copied, states, "sgd" if members[0].kind == "SGD" else "adam",
                          constants[0])
        for total, missing in zip(found, without_momentum):
            if missing:  # (plain SGD: its gradient stood in for the momentum)
                total[[passes.GM, passes.M2]] = float("nan")
        return {t.name: total for t, total in zip(members, found)}

    def _state_of(self, t: _Tracked) -> tuple[Mapping[str, Any], torch.Tensor | None]:
        """The optimizer's state of ``t``'s parameter, and its momentum (None: it keeps none;
        this rank's part of it when sharded)."""
        state = self.optimizer.state.get(t.parameter, {})
        return state, _local(next((state[key] for key in MOMENTUM_KEYS if key in state), None))

    def _coefficients(self, t: _Tracked, state: Mapping[str, Any], lr: float | torch.Tensor,
                      cache: dict[tuple[int, Any], torch.Tensor]) -> torch.Tensor | None:
        """The constants ``k`` of ``t``'s intended update this step (see
        :func:`~zarrec.capture.passes.adam_update`, :func:`~zarrec.capture.passes.sgd_update`),
        on its device; None where its optimizer's update is not known."""
        group = self.optimizer.param_groups[t.group]
        if not t.kind or group.get("maximize") or group.get("amsgrad"):
            return None
        if t.kind in ("Adam", "AdamW") and not ("exp_avg" in state and "exp_avg_sq" in state and "step" in state):
            return None
        step = state.get("step", 0)
        step = step.item() if isinstance(step, torch.Tensor) and step.device.type == "cpu" else step
        key = (t.group, step if not isinstance(step, torch.Tensor) else id(step))
        if key not in cache:
            wd = float(group.get("weight_decay", 0.0))
            if t.kind == "SGD":
                momentum, nesterov = float(group.get("momentum", 0.0)), bool(group.get("nesterov"))
                if momentum and not nesterov:
                    values = [0.0, 0.0, lr]
                else:
                    values = [lr, lr * wd, lr * momentum]
            else:
                beta1, beta2 = group["betas"]
                values = [lr / (1 - beta1**step), 1 / (1 - beta2**step), group["eps"], lr * wd if t.kind == "AdamW" else 0.0]
            device = t.parameter.device
            cache[key] = torch.stack([torch.as_tensor(v, dtype=torch.float32).to(device, non_blocking=True) for v in values])
        return cache[key]

    def _values(self, sums: Mapping[str, torch.Tensor], initial: bool = False) -> dict[str, torch.Tensor]:
        """The recorded values from each parameter's per-row sums (8 × rows): its statistics,
        or when sharded its :data:`ADDENDS`, and those of its rows (this rank's part)."""
        totals = torch.stack([s.sum(-1) for s in sums.values()], dim=1)  # 8 × params
        values = {name: totals[index] for name, index in ADDENDS.items()} if self.sharded else _statistics(totals)
        for t in self.tracked:
            if t.per_row:
                per_row = sums[t.name] if t.rows is None else sums[t.name].index_select(1, t.rows.to(sums[t.name].device))
                for statistic, value in _statistics(per_row).items():
                    values[row_statistic(t.name, statistic)] = _as_part_of(value, t) if self.sharded else value
        if initial:
            for name, value in values.items():
                if not name.endswith("param_norm"):
                    value.fill_(float("nan"))
        return values


def _kind(optimizer: torch.optim.Optimizer) -> str:
    """The optimizer's name in :data:`INTENDED`, or "" (its update unknown)."""
    for cls in (torch.optim.AdamW, torch.optim.Adam, torch.optim.SGD):
        if type(optimizer) is cls:
            return cls.__name__
    return ""


def _rows(t: _Tracked, *tensors: torch.Tensor) -> list[torch.Tensor]:
    """The tensors (of one shape) as rows × entries: their rows when kept per row, else one row."""
    rows = tensors[0].shape[0] if t.per_row else 1
    shape = (rows, -1) if rows else (0, 0)  # (a rank may hold none of a small parameter's rows)
    return [x.detach().reshape(shape) for x in tensors]


def _local(tensor: torch.Tensor | None) -> torch.Tensor | None:
    """This rank's part of a DTensor (FSDP2: its own rows); any other tensor as it is."""
    return tensor.to_local() if is_dtensor(tensor) else tensor


def _as_part_of(per_row: torch.Tensor, t: _Tracked) -> torch.Tensor:
    """This rank's per-row values of ``t``'s sharded parameter, as the DTensor of every
    recorded row whose part they are (the recorder records each rank's part)."""
    if not is_dtensor(t.parameter):
        return per_row
    return rows_part(per_row, t.parameter, t.split[-1] if t.split is not None else t.parameter.shape[0])


def _pass_of_norms(w, previous, g, momentum, t: _Tracked) -> torch.Tensor:
    """The sums without an intended update, NaN for what is missing (no copy of ``W[t−1]``, no
    gradient or momentum): ``W`` stands in for it, then its sums are set to NaN."""
    sums = PASSES["norms"](*_rows(t, w, w if previous is None else previous, w if g is None else g,
                                   w if momentum is None else momentum))
    missing = [passes.A2, passes.R2] * (previous is None) + [passes.G2, passes.GM] * (g is None) + [passes.GM, passes.M2] * (momentum is None)
    if missing:
        sums[missing] = float("nan")
    return sums


def _statistics(sums: torch.Tensor | np.ndarray) -> dict[str, torch.Tensor | np.ndarray]:
    """The statistics from sums of squares and products (``sums[i]`` as in
    :func:`~zarrec.capture.passes.sums_of`), of torch tensors or numpy arrays."""
    return {
        "param_norm": sums[passes.W2] ** 0.5,
        "grad_norm": sums[passes.G2] ** 0.5,
        "update_norm": sums[passes.A2] ** 0.5,
        "intended_norm": sums[passes.U2] ** 0.5,
        "update_dot_intended": sums[passes.AU],
        "residual_norm": sums[passes.R2] ** 0.5,
        "momentum_norm": sums[passes.M2] ** 0.5,
        "cos_grad_momentum": sums[passes.GM] / (sums[passes.G2] * sums[passes.M2]) ** 0.5,
    }


def _finish(summed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The statistics of each parameter of a sharded run from its :data:`ADDENDS` summed over the ranks."""
    sums = np.stack([summed[name] for name in sorted(ADDENDS, key=ADDENDS.get)])
    with np.errstate(invalid="ignore", divide="ignore"):  # (no gradient or momentum: 0 / 0, NaN)
        return _statistics(sums)


def refuse_logging_without_statistics(log_statistics: bool, statistics: bool | str) -> None:
    """The callbacks' ``log_statistics=True`` needs the statistics recorded."""
    if log_statistics and not statistics:
        raise ConfigError("log_statistics=True logs the health statistics, which statistics=False turns off; "
                          "drop one of them")


def start_statistics(
    statistics: bool | str, model: torch.nn.Module, selection: ParameterSelection, out: Any,
    coords: Mapping[str, tuple[str, Any]], *, sharded: bool, initial: bool, overwrite: bool, resume_from: int | None,
    flush_every: int | None, on_error: str,
) -> HealthStatistics | None:
    """The statistics of ``model``'s run into ``out``'s ``statistics`` group, recording: step 0
    recorded (with ``initial``), the parameters kept as the first step's ``W[t−1]``. None where
    ``statistics`` is off, or they cannot be recorded here (logged, with why)."""
    if not statistics:
        return None
    if not isinstance(out, (str, os.PathLike)):
        _LOGGER.info("zarrec: health statistics are recorded into the store's statistics group, which needs a path "
                     "or URL, not a %s: pass one to record them", type(out).__name__)
        return None
    health = HealthStatistics(model, selection, light=statistics == "norms", sharded=sharded)
    health.open_recorder(out, coords, overwrite=overwrite, resume_from=resume_from, flush_every=flush_every,
                         on_error=on_error)
    if initial:
        health.recorder.record(0, **health.initial())
    health.keep_previous()
    health.start_queue()
    return health
