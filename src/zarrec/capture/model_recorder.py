"""The per-step capture: what every zarrec recording takes from a training run, and when.

:class:`ModelRecorder` is the one home of it. The Hugging Face and Lightning callbacks
translate their framework's events into its calls; a plain PyTorch loop calls it itself::

    with zarrec.ModelRecorder("run.zarr", model, optimizer) as recorder:
        for batch in loader:
            loss = model(**batch).loss
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            recorder.step(loss=loss, grad_norm_before_clipping=norm)  # after the update, before zero_grad()
            optimizer.zero_grad()

(A loop that clips otherwise, or not at all, calls ``recorder.before_clipping()`` after the
backward instead of handing over the norm: it takes the norm itself, from a copy of the
gradients where the step's work is queued on a CPU.)

Per optimizer step t it records the selected parameters (default: the input embedding)
after the update, the gradients the update used (after accumulation and clipping), the
optimizer's state, and the scalars of :data:`STEP_SCALARS`: ``loss``, ``lr``, the global
gradient norm before and after clipping; the training logits and a probe's logits when
there are. Step 0, kept when recording starts, is the initial state. Nothing here calls
``.item()`` or copies to the host: the recorder's staging copy is the only transfer.

The per-step work is queued where the health statistics queue theirs
(:meth:`~zarrec.capture.health.HealthStatistics.start_queue`): on an accelerator, its kernels
join the stream as they are called; on a CPU, for a model of small parameters, the training
thread copies the gradients (one fused copy, before clipping too when asked) and a worker
thread does the rest: the norms, the staging copies, the statistics.

Under FSDP2 (the model's parameters are DTensors) it is created on every rank: each records
its own rows, rank 0 the rest (:mod:`zarrec.record.ranks`); the global gradient norms are summed over
the ranks once a chunk.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch

from zarrec.capture import random_state
from zarrec.capture.attributes import optimizer_attributes
from zarrec.capture.health import HealthStatistics, start_statistics
from zarrec.capture.initial import InitialState
from zarrec.capture.norms import (
    at_each_backward_end,
    global_norm,
    gradient_norm,
    trained,
)
from zarrec.capture.probe import Probe, make_probe
from zarrec.capture.random_state import states_now
from zarrec.capture.resume import refuse_a_gap, starting_step
from zarrec.capture.selection import ParameterSelection
from zarrec.capture.sharding import (
    is_sharded,
    refuse_partitioned_parameters,
    refuse_unsupported_sharding,
)
from zarrec.capture.step import CapturedStep
from zarrec.errors import ConfigError
from zarrec.record.device_queue import accelerator_of
from zarrec.record.ranks import norms_over_ranks
from zarrec.record.recorder import Recorder
from zarrec.record.variables import Value
from zarrec.store import contract
from zarrec.store.location import StoreLike
from zarrec.store.schedule import StepSchedule

_LOGGER = logging.getLogger("zarrec")
# What each step records besides the selection, whichever adapter captured it.
STEP_SCALARS = (contract.LOSS, contract.LR, contract.GRAD_NORM, contract.GRAD_NORM_BEFORE_CLIPPING)


class ModelRecorder:
    """Record a model's training, every optimizer step, into a Zarr store.

    Args:
        out: path, fsspec URL or Zarr store to create (or, with ``resume_from``, to continue).
        model: the module being trained.
        optimizer: its optimizer (an accelerate wrapper is unwrapped).
        params: glob patterns over ``model.named_parameters()``, e.g. ``["*.attn.c_attn.*"]``;
            default: the input embedding (``model.get_input_embeddings()``), stored as
            ``embeddings``, ``grads``, ``momentum``, ``variance``; other parameters as
            ``<name>``, ``<name>.grad``, ``<name>.<optimizer state key>``; ``[]``: no
            parameter's full state (the scalars and the health statistics only).
        quantities: of each parameter, from ``"param"``, ``"grad"`` and the optimizer's state
            keys (``"exp_avg"``, ``"momentum_buffer"``, ...); default: all of them.
        rows: record only these rows of the input embedding (token ids, a ``slice``, e.g. the
            corpus's live tokens), or of the parameters named (``{glob: ids}``); the row dim's
            coordinate holds the ids (:class:`~zarrec.capture.selection.ParameterSelection`). Chosen
            tokens also choose what is recorded along ``token`` (logits, probe logits, ``coords``).
        every: which steps to record: every N-th, or a schedule such as ``"1:1000,10"``
            (:class:`~zarrec.store.schedule.StepSchedule`); step 0 always.
        statistics: record, at every optimizer step whatever ``every``, ``rows`` and ``params``
            keep of the full state, the health of every trained parameter (norms of it, its
            gradient, its update and the update its optimizer intended, their product, the
            residual, cos(gradient, momentum); per row for the recorded parameters), computed
            on the device into the store's ``statistics`` group (:mod:`zarrec.capture.health`).
            Keeps a device copy of every trained parameter (its previous value);
            ``"norms"``: no copy, only the norms of the parameters and gradients and
            cos(gradient, momentum); False: none. Needs ``out`` to be a path or URL.
        probe: a fixed input (text, or token ids) whose logits are evaluated with the current
            weights at recorded steps divisible by ``probe_every``, at ``probe_positions``
            (default: all), as ``probe_logits`` (:class:`~zarrec.capture.probe.Probe`). A text is
            encoded by ``tokenizer``, or as bytes for a byte-level model.
        coords: static coordinates, ``{name: (dim, values)}``, e.g.
            :meth:`zarrec.reference.corpus.Corpus.token_coords`.
        attrs: run attributes (hyperparameters, how the data were made).
        initial_step: the optimizer step training starts after (a checkpoint's); default:
            ``resume_from``, else 0. Step 0, the initial state, is recorded only from 0.
        steps: the run's length in optimizer steps, if known: the cost line logged at the first
            recorded step (logger ``zarrec``) then projects the store's size and files.
        resume_from: continue the store at ``out`` after this step (where training resumes;
            0: from the start): steps recorded after it are dropped, and the next step recorded
            is ``resume_from + 1``. The run must be the recorded one: a difference in the
            optimizer's hyperparameters (:func:`~zarrec.capture.attributes.optimizer_attributes`),
            the parameters' shapes or the variables is refused, naming each.
        chunk_steps, overwrite, mantissa_bits, staging_bytes, flush_every, on_error: as for
            :class:`~zarrec.Recorder`.
    """

    def __init__(
        self,
        out: StoreLike,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        params: Sequence[str] | None = None,
        quantities: Sequence[str] | None = None,
        rows: Sequence[int] | slice | Mapping[str, Sequence[int] | slice] | None = None,
        every: int | str | StepSchedule = 1,
        statistics: bool | str = True,
        probe: str | Sequence[int] | None = None,
        probe_positions: Sequence[int] | None = None,
        probe_every: int = 1,
        tokenizer: Any = None,
        coords: Mapping[str, tuple[str, Any]] | None = None,
        attrs: Mapping[str, Any] | None = None,
        chunk_steps: int | None = None,
        overwrite: bool = False,
        initial_step: int | None = None,
        steps: int | None = None,
        resume_from: int | None = None,
        mantissa_bits: int | None = None,
        staging_bytes: int | None = None,
        flush_every: int | None = None,
        on_error: str = "raise",
    ) -> None:
        initial_step = starting_step(initial_step, resume_from)
        if statistics not in (True, False, "norms"):
            raise ConfigError(f"statistics={statistics!r}: pass True (every statistic), 'norms' (no copy of the parameters) or False")
        self.model = model
        refuse_partitioned_parameters(model)
        self.sharded = is_sharded(model)
        self._trained = trained(model)  # (once: walking the modules each step costs more than the norm)
        self.selection = ParameterSelection(model, optimizer, params, quantities, rows)
        if self.sharded:
            refuse_unsupported_sharding(self.selection)
        self.schedule = StepSchedule.parse(every)
        self.probe = make_probe(model, tokenizer, probe, probe_positions, probe_every) if probe is not None else None
        self._token_rows = self.selection.rows.get(self.selection.embedding_name) if contract.TOKEN in self.selection.row_coords() else None
        all_coords = _coordinates(self.selection, self.probe, coords)
        self.recorder = Recorder(
            out, chunk_steps=chunk_steps, coords=all_coords, attrs=_run_attributes(self.selection, self.schedule, optimizer, self.probe, attrs),
            overwrite=overwrite,
            resume_from=(resume_from or -1) if resume_from is not None else None,  # from step 0 nothing is kept
            mantissa_bits=mantissa_bits, staging_bytes=staging_bytes, flush_every=flush_every, on_error=on_error,
            distributed=self.sharded,
            over_ranks=norms_over_ranks(contract.GRAD_NORM, contract.GRAD_NORM_BEFORE_CLIPPING) if self.sharded else None,
        )
        self.last_step = initial_step
        self.steps = steps
        if resume_from:
            refuse_a_gap(self.recorder, resume_from, self.schedule)
        self._started = False
        self._cost_untold = True
        self._initial = None
        # Where the store can be restored from (zarrec.restore), the random state after each recorded step too.
        self._random_states = partial(states_now, accelerator_of(self._trained)) if self.selection.restorable and not self.sharded else None
        if initial_step == 0:  # (before the first step changes them)
            probe_logits = self._at_token_rows(self.probe.logits(model)) if self.probe is not None else None
            self._initial = InitialState(self.selection, probe_logits, self._random_states() if self._random_states else {})
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        self._step = CapturedStep()
        self.health: HealthStatistics | None = None
        try:
            self.health = start_statistics(
                statistics, model, self.selection, out, all_coords, sharded=self.sharded, initial=initial_step == 0,
                overwrite=overwrite, resume_from=resume_from, flush_every=flush_every, on_error=on_error,
            )
        except BaseException as error:
            self.recorder.close(f"refused to record: {error}")  # the run's store is released, as it was
            raise
        # Whether each step's work is queued on a worker thread, from a copy of the gradients.
        self._queued = self.health is not None and self.health.copies_grads

    # Events, in the order a step sees them.

    def begin_step(self) -> None:
        """A new optimizer step begins (its first micro-batch is next)."""
        self._step = CapturedStep()

    def add_output(self, output: Any, token_share: bool = False) -> None:
        """A training forward's output (a model output with ``loss`` and ``logits``, a
        Lightning ``training_step``'s dict or loss): its loss adds to the step's, and the first
        one's logits at sequence 0, last position are the step's. ``token_share``: the loss is
        already divided by the step's token count (the Trainer's ``num_items_in_batch``)."""
        self._step.add_output(output, token_share, self._at_token_rows)

    def track_norms_before_clipping(self) -> None:
        """For a framework with no event between the last backward and clipping (the HF
        Trainer): the global gradient norm is taken at the end of each backward (the step's
        last micro-batch's value stands), from a callback that the first parameter to finish
        accumulating queues on the autograd engine: one fused norm a backward, not one a
        parameter."""
        def take() -> None:
            self._step.grad_norm_before_clipping = self._grad_norm(before_clipping=True)

        self._hooks += at_each_backward_end(self._trained, lambda: self.wants(self.last_step + 1), take)

    def before_clipping(self) -> None:
        """The gradients are accumulated, not yet clipped: keep their global norm, and the
        learning rate the step will use."""
        if self.wants(self.last_step + 1):
            self._step.grad_norm_before_clipping = self._grad_norm(before_clipping=True)
        self._step.keep_lrs(self.selection.group, self.selection.optimizer)  # (every step: the statistics use it)

    def gradients_used(self) -> None:
        """The gradients are those the optimizer uses (after clipping, before ``zero_grad``):
        keep the selected ones (:meth:`~zarrec.capture.selection.ParameterSelection.grads`), their global norm, and the learning rate (if
        :meth:`before_clipping` did not: before the scheduler steps)."""
        self._step.keep_lrs(self.selection.group, self.selection.optimizer)  # (every step: the statistics use it)
        if self._queued:
            self._step.grads_copy = self.health.copy_of_grads()
        if not self.wants(self.last_step + 1):
            return
        if self.selection.wants_grads():
            self._step.grads = self.selection.grads() if self._step.grads_copy is None else {}
        self._step.grad_norm = self._grad_norm()

    def end_step(self, step: int, /, **values: Value) -> None:
        """Optimizer step ``step`` is done: record it if the schedule keeps it, with ``values``,
        and its health statistics (every step: the gradients are still there)."""
        self.last_step = step
        captured, wanted = self._step, self.wants(step)
        lrs = captured.group_lrs or [group["lr"] for group in self.selection.optimizer.param_groups]
        if wanted and self.probe is not None and self.probe.evaluates(step) and self.schedule.records(step):
            captured.probe_logits = self._at_token_rows(self.probe.logits(self.model))  # (a forward: on this thread)
        if wanted and self._random_states is not None:
            captured.random_states = self._random_states()  # (now, on this thread: the state the next step starts from)
        if self._queued and self._started and captured.grads_copy is None:
            captured.grads_copy = self.health.copy_of_grads()  # (None: a parameter has no gradient; then now, from them)
        queued = self._queued and self._started and captured.grads_copy is not None  # (the first step: now, its errors the caller's)
        values = {name: v.detach().clone() if isinstance(v, torch.Tensor) else v for name, v in values.items()} if queued else values

        def work() -> None:
            handed = self._record_step(step, captured, values) if wanted else False
            if self.health is not None:
                self.health.record(step, lrs, captured.grads_copy)
                if handed:  # the statistics go with the run's chunk: both commit about together
                    self.health.recorder.flush()

        self.health.run(work, queued) if self.health is not None else work()

    def _record_step(self, step: int, captured: CapturedStep, values: Mapping[str, Value]) -> bool:
        """Stage step ``step``'s values, scalars, logits (on the queue); whether a chunk went to the writer."""
        scalars, values = captured.scalars(), {**values, **captured.random_states}
        if not self._started:
            self._start({**scalars, **values})
        if not self.schedule.records(step):
            return False
        grads = captured.grads if captured.grads_copy is None else self.health.grads_in(captured.grads_copy)
        self.recorder.record(step, **{**self.selection.values(grads), **scalars, **values})
        if self._cost_untold:
            self._cost_untold = False
            recorded = self.recorder.recorded_rows + self.schedule.count(step, self.steps) if self.steps else None
            _LOGGER.info(self.recorder.cost_line(recorded))
        return not self.recorder.staged_rows

    def step(self, **values: Value) -> None:
        """For a plain loop, after ``optimizer.step()``, before ``zero_grad()`` and the scheduler's step: record
        the next optimizer step (``initial_step`` + 1, ...) with ``values``: ``loss=loss``, the step's loss;
        ``grad_norm_before_clipping=norm``, what ``clip_grad_norm_`` returned (no copy of the gradients, as
        :meth:`before_clipping` makes); others as given."""
        loss = values.pop(contract.LOSS, None)
        if loss is not None:
            self.add_output(loss)
        self.gradients_used()
        self.end_step(self.last_step + 1, **values)
        self.begin_step()

    def statistics_to_log(self) -> dict[str, float]:
        """The last step's health statistics of every trained parameter, ``{"<statistic>/<param>":
        value}`` (``"grad_norm/transformer.h.0.attn.c_attn.weight"``), for your logger at its
        logging steps: ``wandb.log(recorder.statistics_to_log(), step=step)``. One copy from the
        device per call; empty without statistics, before the first step, or under FSDP2 (the
        store's ``statistics`` group has them there)."""
        return self.health.to_log() if self.health is not None else {}

    def wants(self, step: int) -> bool:
        """Whether step ``step``'s values are needed: a recorded step, or the first."""
        return not self._started or self.schedule.records(step)

    def close(self, reason: str | None = None) -> None:
        """Write every recorded step and detach from the model; a ``reason`` marks the store
        interrupted (see :meth:`Recorder.close`)."""
        self._close(lambda recorder: recorder.close(reason))

    def __enter__(self) -> ModelRecorder:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, traceback: object) -> None:
        self._close(lambda recorder: recorder.__exit__(exc_type, exc, traceback), raising=exc is None)

    def _close(self, close: Callable[[Recorder], None], raising: bool = True) -> None:
        """Detach, let the steps queued on a worker thread finish (their error raised, if
        ``raising``), then ``close`` the run's recorder and the statistics' one."""
        self._remove_hooks()
        try:
            if self.health is not None:
                self.health.stop_queue()
        except Exception:
            if raising:
                raise
        finally:
            try:
                close(self.recorder)
            finally:
                if self.health is not None:
                    close(self.health.recorder)

    def _remove_hooks(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    def _start(self, values: Mapping[str, Value]) -> None:
        """At the first step: fix the recorded variables (optimizers create their state at their
        first step), then record step 0 with NaN for what did not exist yet."""
        try:
            targets = self.selection.targets()
        except ConfigError as error:
            self.recorder.close(f"refused to record: {error}")
            raise
        for target in targets:
            self.recorder.label(target.variable, target.dims, **target.attrs)
        for variable, bounds in self.selection.splits().items():
            self.recorder.split_rows(variable, bounds)
        self.recorder.label(contract.LOSS, description=self._step.loss_description())
        random_state.label(self.recorder, values)
        self._started = True
        if self._initial is not None:
            self.recorder.record(0, **self._initial.values(self.selection, values))
            self._initial = None

    def _at_token_rows(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits along the vocabulary (last dim) at the chosen tokens, when tokens are chosen."""
        return logits if self._token_rows is None else logits.index_select(-1, self._token_rows.to(logits.device))

    def _grad_norm(self, before_clipping: bool = False) -> torch.Tensor | Callable[[], torch.Tensor]:
        """The global gradient norm now, or where the step's work is queued on a worker thread,
        its computation from a copy of the gradients (made now)."""
        copies = (self.health.copy_of_grads(before_clipping=True) if before_clipping else self._step.grads_copy) if self._queued else None
        return gradient_norm(self._trained, self.sharded) if copies is None else lambda: global_norm(self.health.grads_in(copies).values())


def _run_attributes(selection: ParameterSelection, schedule: StepSchedule, optimizer: torch.optim.Optimizer,
                    probe: Probe | None, attrs: Mapping[str, Any] | None) -> dict[str, Any]:
    """The store's run attributes: what is recorded (parameters, quantities, steps, rows, the
    optimizer's hyperparameters, the probe), then the run's own ``attrs``."""
    return {
        contract.PARAMS_ATTR: selection.names,
        contract.QUANTITIES_ATTR: None if selection.quantities is None else list(selection.quantities),
        contract.SCHEDULE_ATTR: str(schedule),
        "dtype": str(selection.dtype).removeprefix("torch."),
        **optimizer_attributes(optimizer),
        **({contract.ROWS_ATTR: selection.rows_of()} if selection.rows else {}),
        **(probe.attrs() if probe is not None else {}),
        **(attrs or {}),
    }


def _coordinates(selection: ParameterSelection, probe: Probe | None,
                 coords: Mapping[str, tuple[str, Any]] | None) -> dict[str, tuple[str, Any]]:
    """The static coordinates: the caller's and the probe's, at the chosen rows where rows are
    chosen, and the chosen rows' ids."""
    chosen = {dim: ids for dim, (_, ids) in selection.row_coords().items()}
    found = {
        name: (dim, np.asarray(values)[chosen[dim]] if dim in chosen else values)
        for name, (dim, values) in {**(coords or {}), **(probe.coords() if probe is not None else {})}.items()
    }
    return {**found, **selection.row_coords()}
