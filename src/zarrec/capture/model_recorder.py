"""The per-step capture: what every zarrec recording takes from a training run, and when.

:class:`ModelRecorder` is the one home of it. The Hugging Face and Lightning callbacks
translate their framework's events into its calls; a plain PyTorch loop calls it itself::

    with zarrec.ModelRecorder("run.zarr", model, optimizer) as recorder:
        for batch in loader:
            loss = model(**batch).loss
            loss.backward()
            recorder.before_clipping()                    # optional: the gradient norm before clipping
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            recorder.step(loss=loss)                      # after the update, before zero_grad()
            optimizer.zero_grad()

Per optimizer step t it records the selected parameters (default: the input embedding)
after the update, the gradients the update used (after accumulation and clipping), the
optimizer's state, and the scalars of :data:`STEP_SCALARS`: ``loss``, ``lr``, the global
gradient norm before and after clipping; the training logits and a probe's logits when
there are. Step 0, kept when recording starts, is the initial state. Nothing here calls
``.item()`` or copies to the host: the recorder's staging copy is the only transfer.

Under FSDP2 (the model's parameters are DTensors) it is created on every rank: each records
its own rows, rank 0 the rest (:mod:`zarrec.record.ranks`); the global gradient norms are summed over
the ranks once a chunk.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from zarrec.store import contract
from zarrec.errors import ConfigError
from zarrec.capture.probe import Probe
from zarrec.record.ranks import check_layout, is_dtensor, sharded
from zarrec.record.recorder import Recorder, Value
from zarrec.capture.row_statistics import RowStatistics
from zarrec.store.schedule import StepSchedule
from zarrec.capture.selection import ParameterSelection
from zarrec.store.run_store import StoreLike, committed_step, store_exists
from zarrec.capture.attributes import library_versions

_LOGGER = logging.getLogger("zarrec")
# What each step records besides the selection, whichever adapter captured it.
STEP_SCALARS = (contract.LOSS, contract.LR, contract.GRAD_NORM, contract.GRAD_NORM_BEFORE_CLIPPING)
_NAN = torch.tensor(float("nan"))  # a scalar the step did not see, in the dtype of a captured one (float32)


class _Step:
    """What one optimizer step showed the capture, reset when the next one begins."""

    def __init__(self) -> None:
        self.loss_sum: torch.Tensor | None = None
        self.micro_batches = 0
        self.loss_is_token_share = False  # each micro loss was already divided by the step's token count
        self.logits: torch.Tensor | None = None
        self.grads: Mapping[str, torch.Tensor | None] = {}
        self.grad_norm: torch.Tensor = _NAN
        self.grad_norm_before_clipping: torch.Tensor = _NAN
        self.lr: float | torch.Tensor | None = None

    def loss_description(self) -> str:
        """What :attr:`loss` is, from how the step's micro-batch losses came."""
        if self.micro_batches <= 1:
            return "training loss of step t's batch, as the model computed it"
        if self.loss_is_token_share:
            return (
                f"sum over step t's {self.micro_batches} micro-batches of the model's loss, each given the step's "
                "token count (num_items_in_batch) to divide by: the mean over the step's tokens for a model that "
                "uses it; for one that ignores it (e.g. BERT), the sum of the micro-batch means, as the Trainer logs it"
            )
        return f"mean over step t's {self.micro_batches} micro-batches of the model's loss"

    @property
    def loss(self) -> torch.Tensor:
        if self.loss_sum is None:
            return _NAN
        return self.loss_sum if self.loss_is_token_share else self.loss_sum / self.micro_batches


class ModelRecorder:
    """Record a model's training, every optimizer step, into a Zarr store.

    Args:
        out: path, fsspec URL or Zarr store to create (or, with ``resume_from``, to continue).
        model: the module being trained.
        optimizer: its optimizer (an accelerate wrapper is unwrapped).
        params: glob patterns over ``model.named_parameters()``, e.g. ``["*.attn.c_attn.*"]``;
            default: the input embedding (``model.get_input_embeddings()``), stored as
            ``embeddings``, ``grads``, ``momentum``, ``variance``; other parameters as
            ``<name>``, ``<name>.grad``, ``<name>.<optimizer state key>``.
        quantities: of each parameter, from ``"param"``, ``"grad"`` and the optimizer's state
            keys (``"exp_avg"``, ``"momentum_buffer"``, ...); default: all of them.
        rows: record only these rows of the input embedding (token ids, a ``slice``, e.g. the
            corpus's live tokens), or of the parameters named (``{glob: ids}``); the row dim's
            coordinate holds the ids (:class:`~zarrec.capture.selection.ParameterSelection`). Chosen
            tokens also choose what is recorded along ``token`` (logits, probe logits, ``coords``).
        every: which steps to record: every N-th, or a schedule such as ``"1:1000,10"``
            (:class:`~zarrec.store.schedule.StepSchedule`); step 0 always.
        summaries: also record, at every step, per-row statistics of each parameter (norms of
            its rows, of its gradient's and its update's, the cosine of gradient and momentum),
            computed on the device, into the store's ``summaries`` group
            (:mod:`zarrec.capture.row_statistics`); the full tensors follow ``every``. Keeps a device
            copy of each parameter (its previous value) for the update's norm.
        probe: a fixed input (text, or token ids) whose logits are evaluated with the current
            weights at recorded steps divisible by ``probe_every``, at ``probe_positions``
            (default: all), as ``probe_logits`` (:class:`~zarrec.capture.probe.Probe`). A text is
            encoded by ``tokenizer``, or as bytes for a byte-level model.
        coords: static coordinates, ``{name: (dim, values)}``, e.g.
            :meth:`zarrec.reference.corpus.Corpus.token_coords`.
        attrs: run attributes (hyperparameters, how the data were made).
        initial_step: the optimizer step training starts after (a checkpoint's); step 0, the
            initial state, is recorded only from 0.
        steps: the run's length in optimizer steps, if known: the cost line logged at the first
            recorded step (logger ``zarrec``) then projects the store's size and files.
        resume_from: continue the store at ``out`` after this step (where training resumes;
            0: from the start): steps recorded after it are dropped. The run must be the recorded one.
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
        summaries: bool = False,
        probe: str | Sequence[int] | None = None,
        probe_positions: Sequence[int] | None = None,
        probe_every: int = 1,
        tokenizer: Any = None,
        coords: Mapping[str, tuple[str, Any]] | None = None,
        attrs: Mapping[str, Any] | None = None,
        chunk_steps: int | None = None,
        overwrite: bool = False,
        initial_step: int = 0,
        steps: int | None = None,
        resume_from: int | None = None,
        mantissa_bits: int | None = None,
        staging_bytes: int | None = None,
        flush_every: int | None = None,
        on_error: str = "raise",
    ) -> None:
        if summaries and resume_from and isinstance(out, (str, os.PathLike)):
            _refuse_a_gap_in_summaries(out, resume_from)  # before any store is opened (and rolled back)
        self.model = model
        refuse_partitioned_parameters(model)
        self.sharded = is_sharded(model)
        self.selection = ParameterSelection(model, optimizer, params, quantities, rows)
        if self.sharded:
            refuse_unsupported_sharding(self.selection, rows=rows is not None, summaries=summaries)
        self.schedule = StepSchedule.parse(every)
        self.probe = _make_probe(model, tokenizer, probe, probe_positions, probe_every) if probe is not None else None
        run_attrs = {
            contract.PARAMS_ATTR: self.selection.names,
            contract.QUANTITIES_ATTR: None if quantities is None else list(dict.fromkeys(quantities)),
            contract.SCHEDULE_ATTR: str(self.schedule),
            "dtype": str(self.selection.dtype).removeprefix("torch."),
            **({contract.ROWS_ATTR: self.selection.rows_of()} if self.selection.rows else {}),
            **(self.probe.attrs() if self.probe is not None else {}),
            **(attrs or {}),
        }
        chosen = {dim: ids for dim, (_, ids) in self.selection.row_coords().items()}
        self._token_rows = self.selection.rows.get(self.selection.embedding_name) if contract.TOKEN in chosen else None
        all_coords = {
            name: (dim, np.asarray(values)[chosen[dim]] if dim in chosen else values)
            for name, (dim, values) in {**(coords or {}), **(self.probe.coords() if self.probe is not None else {})}.items()
        }
        all_coords.update(self.selection.row_coords())
        self.recorder = Recorder(
            out, chunk_steps=chunk_steps, coords=all_coords, attrs=run_attrs, overwrite=overwrite,
            resume_from=(resume_from or -1) if resume_from is not None else None,  # from step 0 nothing is kept
            mantissa_bits=mantissa_bits, staging_bytes=staging_bytes, flush_every=flush_every, on_error=on_error,
            distributed=self.sharded,
            norms_over_ranks=(contract.GRAD_NORM, contract.GRAD_NORM_BEFORE_CLIPPING) if self.sharded else (),
        )
        self.last_step = initial_step
        self.steps = steps
        if resume_from:
            self._refuse_a_gap(resume_from)
        self._started = False
        self._cost_untold = True
        self._initial: dict[str, torch.Tensor] | None = None
        self._initial_values: dict[str, Value] = {}
        if initial_step == 0:
            self._keep_initial_state()
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        self._norm_queued = False  # a backward's norm before clipping is queued on the autograd engine
        self._step = _Step()
        self.statistics: RowStatistics | None = None
        self.summary_recorder: Recorder | None = None
        if summaries:
            self._start_summaries(out, all_coords, overwrite, resume_from, flush_every, on_error)

    # Events, in the order a step sees them.

    def begin_step(self) -> None:
        """A new optimizer step begins (its first micro-batch is next)."""
        self._step = _Step()

    def add_output(self, output: Any, token_share: bool = False) -> None:
        """A training forward's output (a model output with ``loss`` and ``logits``, a
        Lightning ``training_step``'s dict or loss): its loss adds to the step's, and the first
        one's logits at sequence 0, last position are the step's. ``token_share``: the loss is
        already divided by the step's token count (the Trainer's ``num_items_in_batch``)."""
        loss = output.get("loss") if isinstance(output, Mapping) else getattr(output, "loss", output)
        if isinstance(loss, (int, float)):
            loss = torch.tensor(float(loss))
        if isinstance(loss, torch.Tensor):
            loss = loss.detach().float()
            self._step.loss_sum = loss if self._step.loss_sum is None else self._step.loss_sum + loss
            self._step.micro_batches += 1
            self._step.loss_is_token_share = token_share
        logits = output.get("logits") if isinstance(output, Mapping) else getattr(output, "logits", None)
        if self._step.logits is None and isinstance(logits, torch.Tensor) and logits.ndim == 3:
            self._step.logits = self._at_token_rows(logits.detach()[0, -1]).clone()

    def track_norms_before_clipping(self) -> None:
        """For a framework with no event between the last backward and clipping (the HF
        Trainer): the global gradient norm is taken at the end of each backward (the step's
        last micro-batch's value stands), from a callback that the first parameter to finish
        accumulating queues on the autograd engine: one fused norm a backward, not one a
        parameter."""
        for parameter in _trained(self.model):
            self._hooks.append(parameter.register_post_accumulate_grad_hook(self._queue_norm_before_clipping))

    def before_clipping(self) -> None:
        """The gradients are accumulated, not yet clipped: keep their global norm, and the
        learning rate the step will use."""
        if self.wants(self.last_step + 1):
            self._step.grad_norm_before_clipping = self._gradient_norm()
            self._keep_lr()

    def gradients_used(self) -> None:
        """The gradients are those the optimizer uses (after clipping, before ``zero_grad``):
        keep the selected ones (:meth:`~zarrec.capture.selection.ParameterSelection.grads`), their global norm, and the learning rate (if
        :meth:`before_clipping` did not: before the scheduler steps)."""
        if not self.wants(self.last_step + 1):
            return
        if self.selection.wants_grads():
            self._step.grads = self.selection.grads()
        self._step.grad_norm = self._gradient_norm()
        self._keep_lr()

    def end_step(self, step: int, **values: Value) -> None:
        """Optimizer step ``step`` is done: record it if the schedule keeps it, with ``values``
        (and its row statistics, with ``summaries``: the gradients are still there)."""
        self.last_step = step
        if self.statistics is not None:
            grads = {name: p.grad for name, p in self.selection.parameters.items()}
            self.summary_recorder.record(step, **self.statistics.of_step(grads))
        if not self.wants(step):
            return
        captured = {
            contract.LOSS: self._step.loss, contract.LR: self._step.lr if self._step.lr is not None else float("nan"),
            contract.GRAD_NORM: self._step.grad_norm,
            contract.GRAD_NORM_BEFORE_CLIPPING: self._step.grad_norm_before_clipping,
        }
        if self._step.logits is not None:
            captured[contract.LOGITS] = self._step.logits
        if self.probe is not None and self.probe.evaluates(step) and self.schedule.records(step):
            captured[contract.PROBE_LOGITS] = self._at_token_rows(self.probe.logits(self.model))
        if not self._started:
            self._start({**captured, **values})
        if self.schedule.records(step):
            self.recorder.record(step, **{**self.selection.values(self._step.grads), **captured, **values})
            if self._cost_untold:
                self._cost_untold = False
                recorded = self.recorder.recorded_rows + self.schedule.count(step, self.steps) if self.steps else None
                _LOGGER.info(self.recorder.cost_line(recorded))

    def step(self, **values: Value) -> None:
        """For a plain loop, after ``optimizer.step()`` and before ``zero_grad()`` and the
        scheduler's step: record the next optimizer step (counted from ``initial_step`` + 1)
        with ``values`` (``loss=loss`` is the step's loss; others are recorded as given)."""
        loss = values.pop(contract.LOSS, None)
        if loss is not None:
            self.add_output(loss)
        self.gradients_used()
        self.end_step(self.last_step + 1, **values)
        self.begin_step()

    def wants(self, step: int) -> bool:
        """Whether step ``step``'s values are needed: a recorded step, or the first."""
        return not self._started or self.schedule.records(step)

    def close(self, reason: str | None = None) -> None:
        """Write every recorded step and detach from the model; a ``reason`` marks the store
        interrupted (see :meth:`Recorder.close`)."""
        self._remove_hooks()
        try:
            self.recorder.close(reason)
        finally:
            if self.summary_recorder is not None:
                self.summary_recorder.close(reason)

    def __enter__(self) -> ModelRecorder:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, traceback: object) -> None:
        self._remove_hooks()
        try:
            self.recorder.__exit__(exc_type, exc, traceback)
        finally:
            if self.summary_recorder is not None:
                self.summary_recorder.__exit__(exc_type, exc, traceback)

    def _remove_hooks(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    def _start_summaries(self, out, coords, overwrite, resume_from, flush_every, on_error) -> None:
        """The second recorder, of the ``summaries`` group: its variables labelled, step 0 recorded."""
        if not isinstance(out, (str, os.PathLike)):
            self.recorder.close("refused to record: summaries need a path")
            raise ConfigError("summaries=True records into the store's summaries group, so out must be a path or URL")
        self.statistics = RowStatistics(self.selection)
        rows = {self.selection.dims(name)[0] for name in self.statistics.params}
        try:
            self.summary_recorder = Recorder(
                _summaries_of(out), overwrite=overwrite,
                coords={name: (dim, values) for name, (dim, values) in coords.items() if dim in rows},
                attrs={"description": "per-row statistics of the recorded parameters at every optimizer step"},
                resume_from=(resume_from or -1) if resume_from is not None else None, flush_every=flush_every,
                on_error=on_error,
            )
        except BaseException as error:
            self.recorder.close(f"refused to record: {error}")  # the run's store is released, as it was
            raise
        for name, (dims, attrs) in self.statistics.labels().items():
            self.summary_recorder.label(name, dims, **attrs)
        if self._initial is not None:
            self.summary_recorder.record(0, **self.statistics.initial(self._initial))

    def _keep_lr(self) -> None:
        if self._step.lr is None:
            self._step.lr = self.selection.group["lr"]

    def _keep_initial_state(self) -> None:
        """Copy the selected parameters (and the probe's logits) now, before the first step
        changes them: step 0, recorded with the first step."""
        self._initial = self.selection.snapshot()
        if self.probe is not None:
            self._initial_values = {contract.PROBE_LOGITS: self._at_token_rows(self.probe.logits(self.model))}

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
        self.recorder.label(contract.LOSS, description=self._step.loss_description())
        self._started = True
        if self._initial is not None:
            not_yet = {name: _nan_like(value) for name, value in values.items()}
            self.recorder.record(0, **{**self.selection.initial_values(self._initial), **not_yet, **self._initial_values})
            self._initial = None

    def _at_token_rows(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits along the vocabulary (last dim) at the chosen tokens, when tokens are chosen."""
        return logits if self._token_rows is None else logits.index_select(-1, self._token_rows.to(logits.device))

    def _queue_norm_before_clipping(self, parameter: torch.nn.Parameter) -> None:
        if self.wants(self.last_step + 1) and not self._norm_queued:
            self._norm_queued = True
            torch.autograd.Variable._execution_engine.queue_callback(self._norm_before_clipping)

    def _norm_before_clipping(self) -> None:
        self._norm_queued = False
        self._step.grad_norm_before_clipping = self._gradient_norm()

    def _gradient_norm(self) -> torch.Tensor:
        """The global gradient norm; under FSDP2 this rank's share of its square (its own rows,
        and on rank 0 every unsharded gradient): the recorder sums the shares over the ranks
        once a chunk, never a step."""
        grads = [p.grad for p in _trained(self.model)]
        if not self.sharded:
            return _global_norm(grads)
        rank, own = torch.distributed.get_rank(), []
        for grad in grads:
            if grad is not None and (sharded(grad) or rank == 0):
                own.append(grad.to_local() if is_dtensor(grad) else grad)
        return _global_norm(own).square() if own else torch.zeros(())

    def _refuse_a_gap(self, resume_step: int) -> None:
        """Refuse to resume after a checkpoint that is newer than the store's last commit."""
        missing = first_unrecorded_step(self.recorder.committed_step, resume_step, self.schedule)
        if missing is not None:
            self.recorder.close("refused to resume: steps would be missing")
            raise _gap_error(self.recorder.store_name, self.recorder.committed_step, resume_step, missing)


def common_attributes(
    framework: str,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    steps: int,
    gradient_accumulation_steps: int,
    max_grad_norm: float | None,
    autocast_dtype: str | None,
    world_size: int,
) -> dict[str, Any]:
    """The run attributes every adapter writes, under one set of names (a framework adds its own
    settings beside them): ``autocast_dtype`` is mixed precision's forward dtype (None: none),
    the parameters' own dtype is ``dtype``; each recorded parameter's optimizer hyperparameters
    are in its arrays' ``optimizer_hyperparameters``."""
    return {
        "framework": framework,
        "optimizer_class": type(getattr(optimizer, "optimizer", optimizer)).__name__,
        "steps": steps,
        "gradient_accumulation_steps": gradient_accumulation_steps,
        "max_grad_norm": max_grad_norm,
        "autocast_dtype": autocast_dtype,
        "world_size": world_size,
        "device": str(next(model.parameters()).device),
        "versions": library_versions(),
    }


def first_unrecorded_step(committed: int | None, resume_step: int, every: int | str | StepSchedule) -> int | None:
    """The first step that ``every`` records after ``committed`` (the store's last step) and at
    or before ``resume_step`` (where training resumes), or None: resuming there leaves no gap."""
    following = 0 if committed is None else StepSchedule.parse(every).next_after(committed)
    return following if following <= resume_step else None


def _summaries_of(out: str | os.PathLike) -> str:
    """Where the summaries of the store at ``out`` are: its ``summaries`` group."""
    return f"{os.fspath(out).rstrip('/')}/{contract.SUMMARIES_GROUP}"


def _refuse_a_gap_in_summaries(out: str | os.PathLike, resume_step: int) -> None:
    """The summaries, recorded every step, commit apart from the run's store: refuse to resume
    after a checkpoint newer than their last commit."""
    summaries = _summaries_of(out)
    if store_exists(summaries):
        committed = committed_step(summaries)
        missing = first_unrecorded_step(committed, resume_step, 1)
        if missing is not None:
            raise _gap_error(summaries, committed, resume_step, missing)


def _gap_error(store_name: str, committed: int | None, resume_step: int, missing: int) -> ConfigError:
    return ConfigError(
        f"{store_name} holds steps up to {committed}, but training resumes after step {resume_step}: step {missing} "
        f"would never be recorded; resume from a checkpoint at or before step {committed}"
    )


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether ``model`` is sharded by FSDP2 (its parameters are DTensors): then every rank records its own rows."""
    return any(is_dtensor(p) for p in model.parameters())


def refuse_unsupported_sharding(selection: ParameterSelection, *, rows: bool, summaries: bool) -> None:
    """Refuse what a sharded run cannot record yet, or not as a whole matrix: chosen rows and
    summaries (each would gather across ranks), and a parameter laid out other than FSDP2's."""
    if rows or summaries:
        raise ConfigError(
            f"{'rows=' if rows else 'summaries='} is not supported for a sharded (FSDP2) model yet: each would gather "
            "across ranks every step; record whole parameters (params=[...]) and every=N instead"
        )
    for name, parameter in selection.parameters.items():
        if is_dtensor(parameter):
            check_layout(name, parameter, torch.distributed.get_world_size())


def refuse_partitioned_parameters(model: torch.nn.Module) -> None:
    """Refuse FSDP1's flat parameters and ZeRO-3's partitioned ones: a rank holds a flat or empty
    tensor there, which zarrec would record as if it were the whole matrix."""
    fsdp1 = getattr(sys.modules.get("torch.distributed.fsdp"), "FullyShardedDataParallel", None)  # (imported if used)
    if fsdp1 is not None and any(isinstance(module, fsdp1) for module in model.modules()):
        raise ConfigError(
            "the model is wrapped in FSDP1 (FullyShardedDataParallel), whose flat parameters hold no matrix whole; "
            "shard it with FSDP2 (torch.distributed.fsdp.fully_shard), which zarrec records rank by rank"
        )
    partitioned = [name for name, p in model.named_parameters() if hasattr(p, "ds_id") or hasattr(p, "ds_shape")]
    if partitioned:
        raise ConfigError(
            f"{partitioned[0]} is partitioned by DeepSpeed ZeRO-3 (each rank holds an empty or flat part); zarrec "
            "does not record ZeRO-3: use ZeRO stage 1 or 2, or FSDP2 (fully_shard)"
        )


def _trained(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def _global_norm(tensors: Sequence[torch.Tensor | None]) -> torch.Tensor:
    """``√Σ‖x‖²`` over the tensors that exist, as ``clip_grad_norm_`` computes it (float32, on their device)."""
    present = [t.detach() for t in tensors if t is not None]
    if not present:
        return _NAN
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(present)).float())


def _make_probe(model: torch.nn.Module, tokenizer: Any, inputs, positions, every) -> Probe:
    """The probe, its text encoded by the tokenizer, or as bytes only for a byte-level model."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    vocab_size = getattr(embeddings, "num_embeddings", None)
    if vocab_size is None:
        raise ConfigError(f"a probe needs the model's input embedding (get_input_embeddings()); {type(model).__name__} has none")
    if isinstance(inputs, str) and tokenizer is None and vocab_size > 256:
        raise ConfigError(
            f"the probe is text, but there is no tokenizer and the model's vocabulary ({vocab_size}) is not "
            "bytes; pass the tokenizer (Trainer(processing_class=tokenizer)) or give the probe as token ids"
        )
    probe = Probe(inputs, positions, every, tokenizer)
    probe.check_vocabulary(vocab_size)
    return probe


def _nan_like(value: Value) -> Value:
    """NaN in the shape and dtype of ``value``: one source dtype per variable from step 0 on."""
    if isinstance(value, torch.Tensor):
        return torch.full_like(value, float("nan"))
    return float("nan")
