"""The Hugging Face Trainer callback: a thin adapter from Trainer events to a :class:`Recorder`.

Events, per optimizer step t (``state.global_step`` is t - 1 until the step ends):

- a forward hook on the model sums the micro-batch losses of step t and keeps the
  logits of its first batch at sequence 0, last position;
- ``on_pre_optimizer_step`` (after accumulation and clipping) keeps a device copy
  of the embedding gradient the optimizer is about to use;
- ``on_optimizer_step`` (after the update) hands the matrix, that gradient, the
  AdamW moments, the loss, the logits and the group's learning rate to the recorder.

Nothing here calls ``.item()`` or copies to the host: the recorder's staging copy
is the only transfer, and it is non-blocking on CUDA.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import torch
from transformers import TrainerCallback

from zarrec import contract
from zarrec.errors import ConfigError
from zarrec.recorder import Recorder
from zarrec.store import StoreLike, store_exists
from zarrec.versions import library_versions


# The loss of a step without one, in the dtype of a captured loss (detached, as float32), so
# that the variable has one source dtype whichever step a recording (or its resumption) starts at.
_NAN_LOSS = torch.tensor(float("nan"))


class _StepCapture:
    """What the forward hook and ``on_pre_optimizer_step`` saw during one optimizer step."""

    def __init__(self) -> None:
        self.loss_sum: torch.Tensor | None = None
        self.micro_batches = 0
        self.loss_is_token_share = False  # each micro loss was already divided by the step's token count
        self.logits: torch.Tensor | None = None
        self.grad: torch.Tensor | None = None

    @property
    def loss(self) -> torch.Tensor | float:
        if self.loss_sum is None:
            return _NAN_LOSS
        return self.loss_sum if self.loss_is_token_share else self.loss_sum / self.micro_batches


class ZarrecCallback(TrainerCallback):
    """Record the input-embedding matrix and its training state at every step into a Zarr store.

    ``Trainer(..., callbacks=[ZarrecCallback("run.zarr")])`` writes the store contract
    (:mod:`zarrec.contract`): ``embeddings``, ``grads``, ``momentum``, ``variance``
    (AdamW-family optimizers), ``logits``, ``loss`` and ``lr``, labelled by the
    Trainer's ``global_step``; step 0 is the initial state. Only the main process writes.

    Args:
        out: path, fsspec URL or Zarr store to create.
        every: record steps divisible by ``every`` (and step 0).
        chunk_steps: recorded steps per Zarr chunk; by default about 16 MB per chunk (see :class:`Recorder`).
        token_coords: coordinates along ``token`` as ``{name: ("token", values)}``,
            e.g. :meth:`zarrec.corpus.Corpus.token_coords`.
        attrs: extra run attributes (e.g. how the data and the model were made).
        overwrite: replace an existing store at ``out``.
        resume: continue the store at ``out`` if it exists, as training resumes from a
            checkpoint (``trainer.train(resume_from_checkpoint=...)``): steps recorded
            after the checkpoint are dropped first. The run must be the recorded one
            (hyperparameters, model, data); a difference is refused, naming it.
        flush_every, on_error: as for :class:`~zarrec.Recorder`.
    """

    def __init__(
        self,
        out: StoreLike,
        *,
        every: int = 1,
        chunk_steps: int | None = None,
        token_coords: Mapping[str, tuple[str, Any]] | None = None,
        attrs: Mapping[str, Any] | None = None,
        overwrite: bool = False,
        resume: bool = False,
        flush_every: int | None = None,
        on_error: str = "raise",
    ) -> None:
        if every < 1:
            raise ConfigError(f"every must be a positive number of steps, got {every}")
        self.out = out
        self.every = every
        self.chunk_steps = chunk_steps
        self.token_coords = dict(token_coords or {})
        self.attrs = dict(attrs or {})
        self.overwrite = overwrite
        self.resume = resume
        self.flush_every = flush_every
        self.on_error = on_error
        self.recorder: Recorder | None = None
        self._weight: torch.Tensor | None = None
        self._group: dict[str, Any] | None = None
        self._optimizer_state: Mapping[torch.Tensor, dict[str, torch.Tensor]] = {}
        self._records_moments = False
        self._hook: torch.utils.hooks.RemovableHandle | None = None
        self._step = _StepCapture()

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if not state.is_world_process_zero:
            return  # every other event returns at once while self.recorder is None
        self._weight = model.get_input_embeddings().weight
        inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the optimizer
        self._group = next((g for g in inner.param_groups if any(p is self._weight for p in g["params"])), None)
        if self._group is None:
            raise ConfigError(
                "the model's input-embedding matrix is not trained by the optimizer; "
                "unfreeze it (requires_grad=True) or record with zarrec.Recorder directly"
            )
        self._optimizer_state = inner.state
        self._records_moments = "betas" in self._group  # Adam-family: exp_avg and exp_avg_sq exist
        self._hook = model.register_forward_hook(self._capture_forward, with_kwargs=True)
        attrs = {**run_attributes(args, state, model, self._weight, self._group), **self.attrs}
        resuming = self.resume and store_exists(self.out)
        self.recorder = Recorder(
            self.out,
            chunk_steps=self.chunk_steps,
            coords=self.token_coords,
            attrs=attrs,
            overwrite=self.overwrite,
            # From step 0, nothing is kept: step 0 is recorded again below.
            resume_from=(state.global_step if state.global_step else -1) if resuming else None,
            flush_every=self.flush_every,
            on_error=self.on_error,
        )
        if resuming and state.global_step:
            self._refuse_a_gap(state.global_step)
        if state.global_step == 0:
            self._record_initial_state()

    def on_step_begin(self, args, state, control, **kwargs):
        if self.recorder is not None:
            self._step = _StepCapture()

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self.recorder is not None and self._records(state.global_step + 1) and self._weight.grad is not None:
            self._step.grad = self._weight.grad.detach().clone()

    def on_optimizer_step(self, args, state, control, **kwargs):
        step = state.global_step + 1
        if self.recorder is None or not self._records(step):
            return
        values = {
            contract.EMBEDDINGS: self._weight,
            contract.GRADS: self._step.grad if self._step.grad is not None else self._nan_like_weight(),
            contract.LOGITS: self._step.logits if self._step.logits is not None else self._nan_logits(),
            contract.LOSS: self._step.loss,
            contract.LR: self._group["lr"],
        }
        if self._records_moments:
            moments = self._optimizer_state[self._weight]
            values[contract.MOMENTUM] = moments["exp_avg"]
            values[contract.VARIANCE] = moments["exp_avg_sq"]
        self.recorder.record(step, **values)

    def on_train_end(self, args, state, control, **kwargs):
        self.close()

    def close(self, reason: str | None = None) -> None:
        """Write every recorded step and detach from the model (called at the end of training);
        a ``reason`` marks the store interrupted (see :meth:`Recorder.close`)."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self.recorder is not None:
            self.recorder.close(reason)

    def _records(self, step: int) -> bool:
        return step % self.every == 0

    def _refuse_a_gap(self, resume_step: int) -> None:
        """Refuse to resume after a checkpoint that is newer than the store's last commit."""
        missing = first_unrecorded_step(self.recorder.committed_step, resume_step, self.every)
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

    def _record_initial_state(self) -> None:
        values = {
            contract.EMBEDDINGS: self._weight,
            contract.GRADS: self._nan_like_weight(),
            contract.LOGITS: self._nan_logits(),
            contract.LOSS: _NAN_LOSS,
            contract.LR: float("nan"),
        }
        if self._records_moments:
            values[contract.MOMENTUM] = torch.zeros_like(self._weight)
            values[contract.VARIANCE] = torch.zeros_like(self._weight)
        self.recorder.record(0, **values)

    def _nan_like_weight(self) -> torch.Tensor:
        return torch.full_like(self._weight, float("nan"))

    def _nan_logits(self) -> torch.Tensor:
        # In the model's dtype, as its logits are: one source dtype from step 0 on.
        return torch.full(self._weight.shape[:1], float("nan"), dtype=self._weight.dtype, device=self._weight.device)


def first_unrecorded_step(committed: int | None, resume_step: int, every: int) -> int | None:
    """The first step that ``every`` records after ``committed`` (the store's last step) and at
    or before ``resume_step`` (where training resumes), or None: resuming there leaves no gap."""
    following = 0 if committed is None else (committed // every + 1) * every
    return following if following <= resume_step else None


def run_attributes(args, state, model, weight: torch.Tensor, group: Mapping[str, Any]) -> dict[str, Any]:
    """Every Trainer hyperparameter needed to re-derive the recorded run, as JSON-ready values."""
    config = getattr(model, "config", None)
    return {
        "learning_rate": args.learning_rate,
        # The decay actually applied to the embedding (Trainer exempts biases and norms).
        "weight_decay": group.get("weight_decay", args.weight_decay),
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
        "dtype": str(weight.dtype).removeprefix("torch."),
        "device": str(weight.device),
        "model_class": type(model).__name__,
        "model_config": json.loads(config.to_json_string()) if config is not None else {},
        "versions": library_versions(),
    }
