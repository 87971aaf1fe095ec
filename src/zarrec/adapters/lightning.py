"""The PyTorch Lightning callback: a thin adapter from Lightning events to a :class:`~zarrec.ModelRecorder`.

Events, per optimizer step (``pip install lightning``):

- ``on_before_optimizer_step`` (gradients accumulated, not yet clipped): the gradient norm
  before clipping and the learning rate the step uses (Lightning steps its schedulers
  before the batch ends); the batch is the one whose step runs;
- ``on_train_batch_end``: the batch's ``training_step`` output (its loss; its ``logits``
  when it returns them); after the stepping batch, the gradients the optimizer used
  (Lightning clips them before the step and zeroes them only in the next one), and the
  step ends, labelled by ``trainer.global_step``; with ``log_statistics``, at Lightning's
  logging steps, the step's health statistics go to ``log_dict`` (so to its loggers).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from zarrec.capture.attributes import common_attributes
from zarrec.capture.health import refuse_logging_without_statistics
from zarrec.capture.model_recorder import ModelRecorder
from zarrec.capture.sharding import is_sharded
from zarrec.errors import ConfigError, MissingDependencyError
from zarrec.record import shutdown
from zarrec.store.location import StoreLike, store_exists
from zarrec.store.schedule import StepSchedule

try:
    from lightning.pytorch import Callback
except ImportError as exc:  # an optional dependency
    raise MissingDependencyError("ZarrecLightningCallback needs Lightning: pip install 'zarrec[lightning]'") from exc

# Lightning's precision setting → the autocast dtype of the forward ("32-true": none).
_AUTOCAST = {"bf16-mixed": "bfloat16", "16-mixed": "float16"}


class ZarrecLightningCallback(Callback):
    """Record parameters and their training state into a Zarr store from a Lightning ``Trainer``.

    ``Trainer(callbacks=[ZarrecLightningCallback("run.zarr")])`` records, per optimizer step,
    what :class:`zarrec.ModelRecorder` records: the selected parameters (default: the module's
    ``get_input_embeddings()``, as ``embeddings``), their gradients, the optimizer's state,
    the loss (mean over the step's batches), the learning rate, the gradient norm before and
    after clipping, and the logits when ``training_step`` returns them (``{"loss": ...,
    "logits": ...}``); step 0 is the initial state. Only global rank 0 writes.

    Args:
        out: path, fsspec URL or Zarr store to create.
        params, quantities, every, statistics, probe, probe_positions, probe_every, tokenizer, coords, chunk_steps,
            overwrite, flush_every, on_error: as for :class:`zarrec.ModelRecorder` (a probe calls
            the module with ``input_ids=``).
        attrs: extra run attributes; the module's ``hparams`` are stored as ``hparams``.
        resume: continue the store at ``out`` if it exists, as ``trainer.fit(ckpt_path=...)``
            resumes: steps recorded after the checkpoint are dropped first.
        log_statistics: also log the step's health statistics of every parameter
            (``<statistic>/<param>``) with ``pl_module.log_dict`` at Lightning's logging steps
            (``log_every_n_steps``), so that its loggers (W&B, TensorBoard, MLflow, CSV) chart
            them: one copy from the device each.
    """

    def __init__(
        self,
        out: StoreLike,
        *,
        params: Sequence[str] | None = None,
        quantities: Sequence[str] | None = None,
        every: int | str | StepSchedule = 1,
        attrs: Mapping[str, Any] | None = None,
        resume: bool = False,
        log_statistics: bool = False,
        **options: Any,
    ) -> None:
        refuse_logging_without_statistics(log_statistics, options.get("statistics", True))
        self.out = out
        self.params = params
        self.quantities = quantities
        self.schedule = StepSchedule.parse(every)
        self.attrs = dict(attrs or {})
        self.resume = resume
        self.log_statistics = log_statistics
        self.options = options
        self.capture: ModelRecorder | None = None
        self._stepping = False  # the current batch's optimizer step runs

    def on_train_start(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero and not is_sharded(pl_module):
            return  # every other event returns at once while self.capture is None (FSDP2: every rank records its rows)
        if len(trainer.optimizers) != 1:
            raise ConfigError(f"{type(self).__name__} records a module with one optimizer; this one has {len(trainer.optimizers)}")
        (optimizer,) = trainer.optimizers
        attrs = {
            **common_attributes(
                "lightning", pl_module, optimizer, steps=trainer.max_steps,
                gradient_accumulation_steps=trainer.accumulate_grad_batches, max_grad_norm=trainer.gradient_clip_val,
                autocast_dtype=_AUTOCAST.get(str(trainer.precision)), world_size=trainer.world_size,
            ),
            "hparams": json.loads(json.dumps(dict(getattr(pl_module, "hparams", {})), default=str)),
            **self.attrs,
        }
        resuming = self.resume and store_exists(self.out)
        self.capture = ModelRecorder(
            self.out, pl_module, optimizer, params=self.params, quantities=self.quantities, every=self.schedule,
            attrs=attrs, initial_step=trainer.global_step, steps=trainer.max_steps if trainer.max_steps > 0 else None,
            resume_from=trainer.global_step if resuming else None,
            **self.options,
        )

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self.capture is not None:
            self.capture.before_clipping()
            self._stepping = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.capture is None:
            return
        self.capture.add_output(outputs)
        if not self._stepping:
            return  # gradients are still accumulating
        self._stepping = False
        self.capture.gradients_used()
        self.capture.end_step(trainer.global_step)
        self.capture.begin_step()
        # (Lightning writes the step's logs right after this hook where this holds: its LearningRateMonitor asks the same)
        if self.log_statistics and trainer._logger_connector.should_update_logs:
            pl_module.log_dict(self.capture.statistics_to_log(), on_step=True, on_epoch=False)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.capture is not None:
            self.capture.close()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if self.capture is not None:
            self.capture.close(shutdown.stop_reason(exception))
