"""The Hugging Face Trainer callback: a thin adapter from Trainer events to a :class:`~zarrec.ModelRecorder`.

Events, per optimizer step t (``state.global_step`` is t - 1 until the step ends):

- ``on_step_begin``: a step begins;
- a forward hook on the model: each training micro-batch's output (loss, logits);
- post-accumulate-grad hooks: each gradient's norm before clipping (the Trainer has no
  event between the last backward and clipping);
- ``on_pre_optimizer_step`` (after accumulation and clipping): the gradients the
  optimizer is about to use;
- ``on_optimizer_step`` (after the update): step t ends and is recorded;
- ``on_log`` (the Trainer's logging steps): with ``log_statistics``, the health statistics of
  the last step reach the Trainer's reporters (W&B, TensorBoard, MLflow, ...).
"""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import (
    CallbackHandler,
    DefaultFlowCallback,
    PrinterCallback,
    ProgressCallback,
)

from zarrec.capture.attributes import common_attributes
from zarrec.capture.health import refuse_logging_without_statistics
from zarrec.capture.model_recorder import ModelRecorder
from zarrec.capture.sharding import is_sharded
from zarrec.errors import ConfigError, ZarrecWarning
from zarrec.record.recorder import Recorder
from zarrec.store.location import StoreLike, store_exists
from zarrec.store.schedule import StepSchedule


class ZarrecCallback(TrainerCallback):
    """Record parameters and their training state at every step into a Zarr store.

    ``Trainer(..., callbacks=[ZarrecCallback("run.zarr")])`` writes the store contract
    (:mod:`zarrec.store.contract`): by default the input embedding as ``embeddings``, ``grads``
    and, with AdamW, ``momentum`` and ``variance``; then ``logits``, ``loss`` and ``lr``,
    labelled by the Trainer's ``global_step``; step 0 is the initial state. Only the main
    process writes, but under FSDP2 (DTensor parameters) every rank writes its own rows
    (:mod:`zarrec.record.ranks`).

    Args:
        out: path, fsspec URL or Zarr store to create.
        params: glob patterns over ``model.named_parameters()``, e.g. ``["*.attn.c_attn.*"]``;
            default: the input embedding. Other parameters are stored as ``<name>``,
            ``<name>.grad`` and ``<name>.<optimizer state key>`` (see :mod:`zarrec.capture.selection`).
        quantities: of each parameter, from ``"param"``, ``"grad"`` and the optimizer's state
            keys (``"exp_avg"``, ``"momentum_buffer"``, ...); default: all of them.
        rows: record only these rows: token ids of the input embedding (a list, a ``slice``),
            or ``{glob: ids}`` per parameter (see :class:`~zarrec.ModelRecorder`).
        statistics: the health of every trained parameter at every step, into the store's
            ``statistics`` group, whatever ``every`` keeps of the full state (default; ``"norms"``:
            a lighter set, False: none; :mod:`zarrec.capture.health`).
        log_statistics: also hand the last step's statistics of every parameter to the Trainer's
            other callbacks at its logging steps (``logging_steps``), so that W&B, TensorBoard or
            MLflow chart them as ``<statistic>/<param>``: one ``on_log`` call of their own beside
            the Trainer's (the console's log lines stay short), one copy from the device each.
        every: which steps to record: every N-th, or a schedule such as ``"1:1000,10"``
            (:class:`~zarrec.store.schedule.StepSchedule`); step 0 always.
        probe: a fixed input (text, or token ids) whose logits are evaluated with the current
            weights (``torch.no_grad()``, evaluation mode) at recorded steps divisible by
            ``probe_every``, at ``probe_positions`` (default: all), as ``probe_logits``
            (:class:`~zarrec.capture.probe.Probe`). A text is encoded by the Trainer's tokenizer
            (``processing_class``), or as bytes for a byte-level model.
        chunk_steps: recorded steps per Zarr chunk; by default about 16 MB per chunk (see :class:`Recorder`).
        token_coords: coordinates along ``token`` as ``{name: ("token", values)}``,
            e.g. :meth:`zarrec.reference.corpus.Corpus.token_coords`.
        attrs: extra run attributes (e.g. how the data and the model were made).
        overwrite: replace an existing store at ``out``.
        resume: continue the store at ``out`` if it exists, as training resumes from a
            checkpoint (``trainer.train(resume_from_checkpoint=...)``): steps recorded
            after the checkpoint are dropped first. The run must be the recorded one
            (hyperparameters, model, data, selection); a difference is refused, naming it.
        mantissa_bits, staging_bytes, flush_every, on_error: as for :class:`~zarrec.Recorder`
            (``mantissa_bits=7``: every recorded tensor rounded to bfloat16's precision, stored as
            float32, default exact; ``staging_bytes``: host memory for staging, default 512 MiB).
    """

    def __init__(
        self,
        out: StoreLike,
        *,
        params: Sequence[str] | None = None,
        quantities: Sequence[str] | None = None,
        rows: Sequence[int] | slice | Mapping[str, Sequence[int] | slice] | None = None,
        statistics: bool | str = True,
        log_statistics: bool = False,
        every: int | str | StepSchedule = 1,
        probe: str | Sequence[int] | None = None,
        probe_positions: Sequence[int] | None = None,
        probe_every: int = 1,
        chunk_steps: int | None = None,
        token_coords: Mapping[str, tuple[str, Any]] | None = None,
        attrs: Mapping[str, Any] | None = None,
        overwrite: bool = False,
        resume: bool = False,
        mantissa_bits: int | None = None,
        staging_bytes: int | None = None,
        flush_every: int | None = None,
        on_error: str = "raise",
    ) -> None:
        self.out = out
        self.params = None if params is None else list(params)
        self.quantities = None if quantities is None else list(quantities)
        self.rows = rows
        refuse_logging_without_statistics(log_statistics, statistics)
        self.statistics = statistics
        self.log_statistics = log_statistics
        self.schedule = StepSchedule.parse(every)
        self.probe_spec = (probe, probe_positions, probe_every) if probe is not None else None
        self.chunk_steps = chunk_steps
        self.token_coords = dict(token_coords or {})
        self.attrs = dict(attrs or {})
        self.overwrite = overwrite
        self.resume = resume
        self.mantissa_bits = mantissa_bits
        self.staging_bytes = staging_bytes
        self.flush_every = flush_every
        self.on_error = on_error
        self.capture: ModelRecorder | None = None
        self._hook: torch.utils.hooks.RemovableHandle | None = None
        self._handler: CallbackHandler | None = None  # the Trainer's, found by on_log

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if not state.is_world_process_zero and not is_sharded(model):
            return  # every other event returns at once while self.capture is None (FSDP2: every rank records its rows)
        resuming = self.resume and store_exists(self.out)
        probe, positions, probe_every = self.probe_spec or (None, None, 1)
        self.capture = ModelRecorder(
            self.out, model, optimizer, params=self.params, quantities=self.quantities, rows=self.rows,
            statistics=self.statistics, every=self.schedule, probe=probe, probe_positions=positions, probe_every=probe_every, tokenizer=kwargs.get("processing_class"),
            coords=self.token_coords, attrs={**run_attributes(args, state, model, optimizer), **self.attrs},
            chunk_steps=self.chunk_steps, overwrite=self.overwrite, initial_step=state.global_step, steps=state.max_steps,
            resume_from=state.global_step if resuming else None, mantissa_bits=self.mantissa_bits,
            staging_bytes=self.staging_bytes, flush_every=self.flush_every, on_error=self.on_error,
        )
        self._hook = model.register_forward_hook(self._capture_forward, with_kwargs=True)
        if args.world_size == 1:  # across processes each would see only its own gradients
            self.capture.track_norms_before_clipping()

    @property
    def recorder(self) -> Recorder | None:
        return self.capture.recorder if self.capture is not None else None

    def on_step_begin(self, args, state, control, **kwargs):
        if self.capture is not None:
            self.capture.begin_step()

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self.capture is not None:
            self.capture.gradients_used()

    def on_optimizer_step(self, args, state, control, **kwargs):
        if self.capture is None:
            return
        try:
            self.capture.end_step(state.global_step + 1)
        except ConfigError:
            self.close()  # the Trainer does not end its callbacks on an error
            raise

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not (self.log_statistics and self.capture is not None and logs and "loss" in logs):
            return  # (the Trainer logs evaluations and a summary at the end too: statistics go with training's logs)
        statistics = self.capture.statistics_to_log()
        if statistics:
            for callback in self._reporters():
                callback.on_log(args, state, control, logs=dict(statistics), **kwargs)

    def _reporters(self) -> list[TrainerCallback]:
        """The Trainer's callbacks that report logs somewhere (the integrations, users' own), not
        its flow and console printers. The Trainer hands a callback no reference to its
        CallbackHandler: it is the ``self`` of the ``call_event`` frame that calls this one."""
        if self._handler is None:
            frame = sys._getframe(1)
            while frame is not None and not isinstance(frame.f_locals.get("self"), CallbackHandler):
                frame = frame.f_back
            if frame is None:
                warnings.warn("zarrec: log_statistics found no Trainer CallbackHandler calling on_log; the statistics "
                              "are not logged (they are in the store)", ZarrecWarning, stacklevel=2)
                self.log_statistics = False
                return []
            self._handler = frame.f_locals["self"]
        own = (DefaultFlowCallback, PrinterCallback, ProgressCallback, ZarrecCallback)
        return [callback for callback in self._handler.callbacks if not isinstance(callback, own)]

    def on_train_end(self, args, state, control, **kwargs):
        self.close()

    def close(self, reason: str | None = None) -> None:
        """Write every recorded step and detach from the model (called at the end of training);
        a ``reason`` marks the store interrupted (see :meth:`Recorder.close`)."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self.capture is not None:
            self.capture.close(reason)

    def _capture_forward(self, module, args, kwargs, output) -> None:
        if module.training and torch.is_grad_enabled():  # not evaluation, not a probe
            self.capture.add_output(output, token_share=kwargs.get("num_items_in_batch") is not None)


def run_attributes(args, state, model, optimizer) -> dict[str, Any]:
    """The run's attributes (:func:`zarrec.capture.attributes.common_attributes`) and the Trainer's settings
    needed to re-derive it, as JSON-ready values."""
    config = getattr(model, "config", None)
    attrs = {
        **common_attributes(
            "transformers", model, optimizer, steps=state.max_steps,
            gradient_accumulation_steps=args.gradient_accumulation_steps, max_grad_norm=args.max_grad_norm,
            autocast_dtype="bfloat16" if args.bf16 else "float16" if args.fp16 else None, world_size=args.world_size,
        ),
        "learning_rate": args.learning_rate,
        "weight_decay": args.weight_decay,  # the Trainer's setting, for the parameters it decays
        "optimizer": str(getattr(args.optim, "value", args.optim)),
        "lr_scheduler": str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)),
        "warmup_steps": args.warmup_steps,
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "seed": args.seed,
        "model_class": type(model).__name__,
        "model_config": json.loads(config.to_json_string()) if config is not None else {},
    }
    if attrs["optimizer_class"] in ("Adam", "AdamW"):
        attrs.update(adam_beta1=args.adam_beta1, adam_beta2=args.adam_beta2, adam_epsilon=args.adam_epsilon)
    return attrs
