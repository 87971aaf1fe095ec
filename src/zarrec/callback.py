"""The Hugging Face Trainer callback: a thin adapter from Trainer events to a :class:`Recorder`.

Events, per optimizer step t (``state.global_step`` is t - 1 until the step ends):

- a forward hook on the model sums the micro-batch losses of step t and keeps the
  logits of its first batch at sequence 0, last position;
- ``on_pre_optimizer_step`` (after accumulation and clipping) keeps a device copy
  of the selected gradients the optimizer is about to use;
- ``on_optimizer_step`` (after the update) hands those gradients, the loss, the logits
  and the learning rate to the :class:`~zarrec.session.TrainingSession`, which records
  them with the selected parameters and their optimizer state (and, at the first step,
  step 0 from a copy of the parameters kept when training began).

Nothing here calls ``.item()`` or copies to the host: the recorder's staging copy
is the only transfer, and it is non-blocking on CUDA.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from transformers import TrainerCallback

from zarrec import contract
from zarrec.errors import ConfigError
from zarrec.probe import Probe
from zarrec.recorder import Recorder
from zarrec.schedule import StepSchedule
from zarrec.selection import ParameterSelection
from zarrec.session import TrainingSession, selection_attributes
from zarrec.store import StoreLike, store_exists
from zarrec.versions import library_versions

# The loss of a step without one, in the dtype of a captured loss (detached, as float32), so
# that the variable has one source dtype whichever step a recording (or its resumption) starts at.
_NAN_LOSS = torch.tensor(float("nan"))
# What a step whose values are not needed hands over.
_NO_GRADS: Mapping[str, torch.Tensor | None] = {}


class _StepCapture:
    """What the forward hook and ``on_pre_optimizer_step`` saw during one optimizer step."""

    def __init__(self) -> None:
        self.loss_sum: torch.Tensor | None = None
        self.micro_batches = 0
        self.loss_is_token_share = False  # each micro loss was already divided by the step's token count
        self.logits: torch.Tensor | None = None
        self.grads: Mapping[str, torch.Tensor | None] = _NO_GRADS

    @property
    def loss(self) -> torch.Tensor | float:
        if self.loss_sum is None:
            return _NAN_LOSS
        return self.loss_sum if self.loss_is_token_share else self.loss_sum / self.micro_batches


class ZarrecCallback(TrainerCallback):
    """Record parameters and their training state at every step into a Zarr store.

    ``Trainer(..., callbacks=[ZarrecCallback("run.zarr")])`` writes the store contract
    (:mod:`zarrec.contract`): by default the input embedding as ``embeddings``, ``grads``
    and, with AdamW, ``momentum`` and ``variance``; then ``logits``, ``loss`` and ``lr``,
    labelled by the Trainer's ``global_step``; step 0 is the initial state. Only the main
    process writes.

    Args:
        out: path, fsspec URL or Zarr store to create.
        params: glob patterns over ``model.named_parameters()``, e.g. ``["*.attn.c_attn.*"]``;
            default: the input embedding. Other parameters are stored as ``<name>``,
            ``<name>.grad`` and ``<name>.<optimizer state key>`` (see :mod:`zarrec.selection`).
        quantities: of each parameter, from ``"param"``, ``"grad"`` and the optimizer's state
            keys (``"exp_avg"``, ``"momentum_buffer"``, ...); default: all of them.
        every: which steps to record: every N-th, or a schedule such as ``"1:1000,10"``
            (:class:`~zarrec.schedule.StepSchedule`); step 0 always.
        probe: a fixed input (text, or token ids) whose logits are evaluated with the current
            weights (``torch.no_grad()``, evaluation mode) at recorded steps divisible by
            ``probe_every``, at ``probe_positions`` (default: all), as ``probe_logits``
            (:class:`~zarrec.probe.Probe`). A text is encoded by the Trainer's tokenizer
            (``processing_class``), or as bytes for a byte-level model.
        chunk_steps: recorded steps per Zarr chunk; by default about 16 MB per chunk (see :class:`Recorder`).
        token_coords: coordinates along ``token`` as ``{name: ("token", values)}``,
            e.g. :meth:`zarrec.corpus.Corpus.token_coords`.
        attrs: extra run attributes (e.g. how the data and the model were made).
        overwrite: replace an existing store at ``out``.
        resume: continue the store at ``out`` if it exists, as training resumes from a
            checkpoint (``trainer.train(resume_from_checkpoint=...)``): steps recorded
            after the checkpoint are dropped first. The run must be the recorded one
            (hyperparameters, model, data, selection); a difference is refused, naming it.
        flush_every, on_error: as for :class:`~zarrec.Recorder`.
    """

    def __init__(
        self,
        out: StoreLike,
        *,
        params: Sequence[str] | None = None,
        quantities: Sequence[str] | None = None,
        every: int | str | StepSchedule = 1,
        probe: str | Sequence[int] | None = None,
        probe_positions: Sequence[int] | None = None,
        probe_every: int = 1,
        chunk_steps: int | None = None,
        token_coords: Mapping[str, tuple[str, Any]] | None = None,
        attrs: Mapping[str, Any] | None = None,
        overwrite: bool = False,
        resume: bool = False,
        flush_every: int | None = None,
        on_error: str = "raise",
    ) -> None:
        self.out = out
        self.params = None if params is None else list(params)
        self.quantities = None if quantities is None else list(quantities)
        self.schedule = StepSchedule.parse(every)
        self.probe_spec = (probe, probe_positions, probe_every) if probe is not None else None
        self.probe: Probe | None = None
        self.chunk_steps = chunk_steps
        self.token_coords = dict(token_coords or {})
        self.attrs = dict(attrs or {})
        self.overwrite = overwrite
        self.resume = resume
        self.flush_every = flush_every
        self.on_error = on_error
        self.session: TrainingSession | None = None
        self._model: torch.nn.Module | None = None
        self._hook: torch.utils.hooks.RemovableHandle | None = None
        self._step = _StepCapture()

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if not state.is_world_process_zero:
            return  # every other event returns at once while self.session is None
        selection = ParameterSelection(model, optimizer, self.params, self.quantities)
        self._model = model
        attrs = {**run_attributes(args, state, model, selection), **selection_attributes(selection, self.schedule)}
        coords = dict(self.token_coords)
        if self.probe_spec is not None:
            self.probe = _make_probe(model, kwargs.get("processing_class"), *self.probe_spec)
            attrs.update(self.probe.attrs())
            coords.update(self.probe.coords())
        self._hook = model.register_forward_hook(self._capture_forward, with_kwargs=True)
        resuming = self.resume and store_exists(self.out)
        recorder = Recorder(
            self.out,
            chunk_steps=self.chunk_steps,
            coords=coords,
            attrs={**attrs, **self.attrs},
            overwrite=self.overwrite,
            # From step 0, nothing is kept: step 0 is recorded again.
            resume_from=(state.global_step if state.global_step else -1) if resuming else None,
            flush_every=self.flush_every,
            on_error=self.on_error,
        )
        self.session = TrainingSession(recorder, selection, self.schedule)
        if resuming and state.global_step:
            self._refuse_a_gap(state.global_step)
        if state.global_step == 0:
            initial = {contract.PROBE_LOGITS: self.probe.logits(model)} if self.probe is not None else {}
            self.session.keep_initial_state(**initial)

    @property
    def recorder(self) -> Recorder | None:
        return self.session.recorder if self.session is not None else None

    def on_step_begin(self, args, state, control, **kwargs):
        if self.session is not None:
            self._step = _StepCapture()

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self.session is not None and self.session.wants(state.global_step + 1) and self.session.selection.wants_grads():
            self._step.grads = self.session.selection.grads()

    def on_optimizer_step(self, args, state, control, **kwargs):
        step = state.global_step + 1
        if self.session is None or not self.session.wants(step):
            return
        values = {contract.LOSS: self._step.loss, contract.LR: self.session.selection.group["lr"]}
        if self._step.logits is not None:
            values[contract.LOGITS] = self._step.logits
        if self.probe is not None and self.probe.evaluates(step) and self.session.schedule.records(step):
            values[contract.PROBE_LOGITS] = self.probe.logits(self._model)
        try:
            self.session.after_step(step, self._step.grads, **values)
        except ConfigError:
            self.close()  # the Trainer does not end its callbacks on an error
            raise

    def on_train_end(self, args, state, control, **kwargs):
        self.close()

    def close(self, reason: str | None = None) -> None:
        """Write every recorded step and detach from the model (called at the end of training);
        a ``reason`` marks the store interrupted (see :meth:`Recorder.close`)."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self.session is not None:
            self.session.close(reason)

    def _refuse_a_gap(self, resume_step: int) -> None:
        """Refuse to resume after a checkpoint that is newer than the store's last commit."""
        missing = first_unrecorded_step(self.recorder.committed_step, resume_step, self.schedule)
        if missing is not None:
            self.recorder.close("refused to resume: steps would be missing")
            raise ConfigError(
                f"{self.recorder.store_name} holds steps up to {self.recorder.committed_step}, but training resumes after "
                f"step {resume_step}: step {missing} would never be recorded; resume from a checkpoint at or before "
                f"step {self.recorder.committed_step}"
            )

    def _capture_forward(self, module, args, kwargs, output) -> None:
        if not module.training or not torch.is_grad_enabled():
            return  # evaluation or a probe, not a training step
        loss = getattr(output, "loss", None)
        if loss is not None:
            loss = loss.detach().float()
            self._step.loss_sum = loss if self._step.loss_sum is None else self._step.loss_sum + loss
            self._step.micro_batches += 1
            self._step.loss_is_token_share = kwargs.get("num_items_in_batch") is not None
        logits = getattr(output, "logits", None)
        if self._step.logits is None and logits is not None:
            self._step.logits = logits.detach()[0, -1].clone()


def _make_probe(model, tokenizer, inputs, positions, every) -> Probe:
    """The probe, its text encoded by the Trainer's tokenizer, or as bytes only for a byte-level model."""
    vocab_size = model.get_input_embeddings().num_embeddings
    if isinstance(inputs, str) and tokenizer is None and vocab_size > 256:
        raise ConfigError(
            f"the probe is text, but the Trainer has no tokenizer and the model's vocabulary ({vocab_size}) is not "
            "bytes; pass Trainer(processing_class=tokenizer) or give the probe as token ids"
        )
    probe = Probe(inputs, positions, every, tokenizer)
    probe.check_vocabulary(vocab_size)
    return probe


def first_unrecorded_step(committed: int | None, resume_step: int, every: int | str | StepSchedule) -> int | None:
    """The first step that ``every`` records after ``committed`` (the store's last step) and at
    or before ``resume_step`` (where training resumes), or None: resuming there leaves no gap."""
    following = 0 if committed is None else StepSchedule.parse(every).next_after(committed)
    return following if following <= resume_step else None


def run_attributes(args, state, model, selection: ParameterSelection) -> dict[str, Any]:
    """Every Trainer hyperparameter needed to re-derive the recorded run, as JSON-ready values."""
    config = getattr(model, "config", None)
    return {
        "learning_rate": args.learning_rate,
        # The decay actually applied to the (first) recorded parameter (Trainer exempts biases and norms).
        "weight_decay": selection.group.get("weight_decay", args.weight_decay),
        "adam_beta1": args.adam_beta1,
        "adam_beta2": args.adam_beta2,
        "adam_epsilon": args.adam_epsilon,
        "max_grad_norm": args.max_grad_norm,
        "optimizer": str(getattr(args.optim, "value", args.optim)),
        "lr_scheduler": str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)),
        "warmup_steps": args.warmup_steps,
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "world_size": args.world_size,
        "steps": state.max_steps,
        "seed": args.seed,
        "device": str(next(iter(selection.parameters.values())).device),
        "model_class": type(model).__name__,
        "model_config": json.loads(config.to_json_string()) if config is not None else {},
        "versions": library_versions(),
    }
