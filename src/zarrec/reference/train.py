"""The reference experiment's training run: the model trained by the Hugging Face Trainer, recorded by zarrec.

This is the run of the notebook zarrec grew out of (``shared/seed``): vocabulary of
128 bytes, 64 dimensions, 2 layers, 2 heads, context 128, batch 32, AdamW with a
linear learning-rate decay, every token embedding started at one random unit
vector plus N(0, sigma²) noise. It trains with the Hugging Face Trainer and records
every step through :class:`zarrec.ZarrecCallback`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import TrainerCallback

from zarrec.adapters.huggingface import ZarrecCallback
from zarrec.analysis.summary import StoreSummary, summarize
from zarrec.branching.trainer_checkpoint import trainer_checkpoint
from zarrec.capture.resume import first_unrecorded_step
from zarrec.errors import CheckpointError, ConfigError, WriterError
from zarrec.record import shutdown
from zarrec.reference.config import TrainConfig
from zarrec.reference.corpus import ByteDataset, Corpus, load_corpus
from zarrec.reference.model import build_model
from zarrec.store import contract
from zarrec.store.location import (
    StoreLike,
    describe,
    ensure_new,
    ensure_resumable,
    local_directory,
    open_run,
)

logger = logging.getLogger("zarrec")

# Three, not one: a kill -9 can lose up to two chunks of recorded steps, and resuming needs a
# checkpoint at or before the store's last committed step.
CHECKPOINTS_KEPT = 3


def resolve_device(name: str) -> str:
    """``auto`` picks CUDA, then Apple MPS, then the CPU; an unavailable device is an error."""
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if name == "auto":
        return next(device for device in ("cuda", "mps", "cpu") if available[device])
    if not available[name]:
        raise ConfigError(f"device {name} is not available on this machine; use --device auto or cpu")
    return name


def is_main_process() -> bool:
    """Whether this process is the one that writes (rank 0 under torchrun/accelerate, or alone).

    Read from the launcher's environment: the process group does not exist until the Trainer starts."""
    return int(os.environ.get("RANK", "0")) == 0


def experiment_attributes(config: TrainConfig, corpus: Corpus, device: str) -> dict:
    """Store attributes describing the data and the initialisation (the Trainer's come from the callback)."""
    return {
        "experiment": "zarrec reference: byte-level GPT-2 with near-identical initial embeddings",
        "config": dataclasses.asdict(config),
        "batch_size": config.batch_size,
        "init_method": config.init,
        "init_sigma": config.init_sigma,
        "corpus_name": corpus.name,
        "corpus_sha256": corpus.sha256,
        "corpus_tokens": int(corpus.tokens.size),
        "device": device,
    }


def make_trainer(
    config: TrainConfig,
    output_dir: str,
    callbacks: Sequence[TrainerCallback] = (),
    *,
    corpus: Corpus | None = None,
    progress: bool = True,
    save_steps: int | None = None,
):
    """A Hugging Face Trainer for the reference experiment (no recording unless a callback records).

    With ``save_steps``, ``output_dir`` receives a checkpoint every ``save_steps`` steps (the
    newest three are kept); without, nothing but what the Trainer insists on writing.
    """
    from transformers import Trainer, TrainingArguments
    from transformers.utils import logging as hf_logging

    config.validate()
    device = resolve_device(config.device)
    corpus = corpus or load_corpus(config.corpus, config.vocab_size)
    hf_logging.set_verbosity_error()
    if not progress:
        hf_logging.disable_progress_bar()  # e.g. "Writing model shards" when saving a checkpoint
    logging.getLogger("accelerate").setLevel(logging.ERROR)
    args = TrainingArguments(
        output_dir=output_dir,
        max_steps=config.steps,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        adam_beta1=config.adam_beta1,
        adam_beta2=config.adam_beta2,
        adam_epsilon=config.adam_epsilon,
        max_grad_norm=config.max_grad_norm,
        optim=config.optimizer,
        optim_args=f"momentum={config.sgd_momentum}" if config.optimizer == "sgd" else None,
        lr_scheduler_type="linear",
        seed=config.seed,
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500,
        save_total_limit=CHECKPOINTS_KEPT,
        logging_steps=max(1, config.steps // 10),
        report_to="none",
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        use_cpu=device == "cpu",
        disable_tqdm=not progress,
        ddp_find_unused_parameters=False,  # every parameter is used; the search would cost a graph traversal
    )
    dataset = ByteDataset(corpus, config.context)
    return Trainer(model=build_model(config), args=args, train_dataset=dataset, callbacks=list(callbacks))


def default_checkpoint_dir(out: StoreLike) -> Path | None:
    """``<out>.checkpoints`` beside a local store; None for a URL or a Store object."""
    path = local_directory(out)
    return path.with_name(path.name + ".checkpoints") if path is not None else None


def checkpoint_steps(checkpoint_dir: str | os.PathLike) -> list[int]:
    """The steps of the Trainer checkpoints (``checkpoint-<step>``) in a directory, ascending."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    directory = Path(checkpoint_dir)
    names = (entry.name for entry in directory.iterdir()) if directory.is_dir() else ()
    return sorted(int(m[1]) for name in names if (m := re.fullmatch(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)", name)))


def is_complete(checkpoint: Path) -> bool:
    """Whether a Trainer checkpoint was written to the end: the Trainer writes
    ``trainer_state.json`` last, so one whose write failed (a full disk) has none, or a torn one."""
    try:
        json.loads((checkpoint / "trainer_state.json").read_text())  # transformers.trainer.TRAINER_STATE_NAME
    except (OSError, ValueError):
        return False
    return True


def recorded_config(out: StoreLike) -> dict:
    """The :class:`TrainConfig` settings a recording was made with (its ``config`` attribute)."""
    recorded = open_run(out).attrs.get("config")
    if not isinstance(recorded, dict):
        raise ConfigError(f"{describe(out)} was not recorded by zarrec train (it has no 'config' attribute); it cannot be "
                          "resumed or branched from")
    fields = {field.name for field in dataclasses.fields(TrainConfig)}
    return {name: value for name, value in recorded.items() if name in fields}


def refuse_resuming_a_branch(resume: bool, branch_from: StoreLike | None) -> None:
    if resume and branch_from is not None:
        raise ConfigError("--resume continues a run and --branch-from starts a new one from another; pass one of them")


def branch_attributes(config: TrainConfig, branch_from: StoreLike, branch_step: int) -> dict:
    """The ``branched_from`` attribute of a branch's store: the recorded run, the step, and
    each setting that differs from the recorded run's (``{name: [recorded, branch]}``)."""
    recorded = recorded_config(branch_from)
    if not 0 <= branch_step < config.steps:
        raise ConfigError(f"--branch-step {branch_step} is not a step before the branch's last ({config.steps}, --steps); "
                          f"pass a step from 0 to {config.steps - 1}")
    ours = dataclasses.asdict(config)
    changed = {name: [recorded[name], ours[name]] for name in sorted(recorded) if _jsonable(ours[name]) != recorded[name]}
    return {contract.BRANCHED_FROM_ATTR: {"store": describe(branch_from), "step": branch_step, "changed": changed}}


def _jsonable(value):
    return list(value) if isinstance(value, tuple) else value


def checkpoint_to_resume(out: StoreLike, checkpoint_dir: str | os.PathLike, every: int | str) -> str:
    """The newest checkpoint from which training can resume without leaving a gap in the store."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    ensure_resumable(out)
    steps = open_run(out)[contract.STEP][:]
    committed = int(steps[-1]) if steps.size else None
    present = checkpoint_steps(checkpoint_dir)
    complete = [step for step in present if is_complete(Path(checkpoint_dir) / f"{PREFIX_CHECKPOINT_DIR}-{step}")]
    if incomplete := sorted(set(present) - set(complete)):
        logger.warning(
            "zarrec: passing over %s in %s: written in part (its write failed), they cannot be resumed from",
            ", ".join(f"{PREFIX_CHECKPOINT_DIR}-{step}" for step in incomplete), checkpoint_dir,
        )
    usable = [step for step in complete if first_unrecorded_step(committed, step, every) is None]
    if not usable:
        raise ConfigError(
            f"{describe(out)} holds steps up to {committed}, and {checkpoint_dir} has no checkpoint at or before it "
            f"(checkpoints: {checkpoint_steps(checkpoint_dir) or 'none'}); the run cannot continue where its record "
            "ends: start it again with --overwrite"
        )
    return str(Path(checkpoint_dir) / f"{PREFIX_CHECKPOINT_DIR}-{max(usable)}")


def _earlier_checkpoints(checkpoint_dir: Path, overwrite: bool) -> list[Path]:
    """The checkpoints of an earlier run in a new run's checkpoint directory: refused unless
    ``overwrite``, then removed by :class:`_RemoveEarlierCheckpoints`."""
    if checkpoint_dir.exists() and not checkpoint_dir.is_dir():
        raise ConfigError(f"{checkpoint_dir} exists and is not a directory; pass another --checkpoint-dir")
    earlier = checkpoint_steps(checkpoint_dir)
    if earlier and not overwrite:
        raise ConfigError(
            f"{checkpoint_dir} holds checkpoints of an earlier run (steps {earlier}); pass --resume to continue "
            "that run, --overwrite to replace it, or another --checkpoint-dir"
        )
    return [checkpoint_dir / f"checkpoint-{step}" for step in earlier]


class _CheckpointWatch(TrainerCallback):
    """Knows whether the Trainer is writing a checkpoint: from the end of a step it decided to
    save at (its flow callback runs first) until ``on_save``."""

    def __init__(self) -> None:
        self.writing: int | None = None  # the step of the checkpoint being written

    def on_step_end(self, args, state, control, **kwargs):
        self.writing = state.global_step if control.should_save else None

    def on_save(self, args, state, control, **kwargs):
        self.writing = None


class _RemoveEarlierCheckpoints(TrainerCallback):
    """Removes the replaced run's checkpoints once the recorder (the callback before this one)
    has created the new store, holding its lock: a refused ``--overwrite``, such as one against
    a store another process is writing, removes nothing."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths

    def on_train_begin(self, args, state, control, **kwargs):
        for path in self.paths:
            shutil.rmtree(path)


def train(
    config: TrainConfig,
    out: StoreLike,
    *,
    overwrite: bool = False,
    resume: bool = False,
    checkpoint_dir: str | os.PathLike | None = None,
    save_steps: int | None = None,
    flush_every: int | None = None,
    progress: bool = True,
    callbacks: Sequence[TrainerCallback] = (),
    branch_from: StoreLike | None = None,
    branch_step: int | None = None,
) -> StoreSummary | None:
    """Train the reference model, recording the steps ``config.every`` selects into ``out``.

    With ``branch_from`` (a store of every parameter and its optimizer state, recorded by
    ``zarrec train``) and ``branch_step``, training starts after that recorded step, from its
    state (:func:`zarrec.trainer_checkpoint`), with ``config``'s settings (a changed learning
    rate, say): the store records the steps after it and its ``branched_from`` attribute
    names the run, the step and each setting changed.

    With ``checkpoint_dir`` and ``save_steps``, the Trainer saves a checkpoint every
    ``save_steps`` steps; ``resume`` continues an interrupted run from the newest
    checkpoint at or before the store's last step (steps recorded after it are dropped).
    If training stops early (an exception, SIGINT, SIGTERM), every recorded step is
    written and the store is marked interrupted. ``callbacks`` run after the recorder's.

    Under ``torchrun`` each process calls this; only the main one (rank 0) prepares and
    writes the store and returns its summary, the others return None.
    """
    config.validate()
    checkpoint, earlier = None, []
    refuse_resuming_a_branch(resume, branch_from)
    branched = branch_attributes(config, branch_from, branch_step) if branch_from is not None else {}
    if resume:
        if checkpoint_dir is None:
            raise ConfigError("resuming needs the run's checkpoints: pass --checkpoint-dir (checkpoint_dir)")
        checkpoint = checkpoint_to_resume(out, checkpoint_dir, config.every)
    elif is_main_process():
        ensure_new(out, overwrite=overwrite)
        if checkpoint_dir is not None:
            earlier = _earlier_checkpoints(Path(checkpoint_dir), overwrite)
    corpus = load_corpus(config.corpus, config.vocab_size)
    recorder = ZarrecCallback(
        out,
        params=config.params,
        quantities=config.quantities,
        rows=config.token_rows(corpus.counts(config.vocab_size) > 0),
        every=config.every,
        statistics={"all": True, "norms": "norms", "none": False}[config.statistics],
        probe=config.probe,
        probe_positions=config.probe_positions,
        probe_every=config.probe_every,
        chunk_steps=config.chunk_steps,
        mantissa_bits=config.mantissa_bits,
        token_coords=corpus.token_coords(config.vocab_size),
        attrs={**experiment_attributes(config, corpus, resolve_device(config.device)), **branched},
        overwrite=overwrite,
        resume=resume,
        flush_every=flush_every,
    )
    watch = _CheckpointWatch()
    with tempfile.TemporaryDirectory(prefix="zarrec-trainer-") as scratch:
        if branch_from is not None:  # (from a Trainer of its own: a refusal leaves no checkpoint directory behind)
            branching = make_trainer(config, str(Path(scratch) / "branching"), corpus=corpus, progress=progress)
            checkpoint = trainer_checkpoint(branch_from, branch_step, branching, Path(scratch) / f"branch-{branch_step}")
        trainer = make_trainer(
            config, str(checkpoint_dir or scratch), [recorder, _RemoveEarlierCheckpoints(earlier), watch, *callbacks],
            corpus=corpus, progress=progress,
            save_steps=save_steps if checkpoint_dir is not None else None,
        )
        try:
            trainer.train(resume_from_checkpoint=checkpoint)
        except BaseException as exc:
            if watch.writing is None or not isinstance(exc, Exception):  # not the checkpoint's write: a signal, a bug
                with contextlib.suppress(WriterError):  # the exception in flight says more
                    recorder.close(reason=shutdown.stop_reason(exc))
                raise
            failed = f"{checkpoint_dir}/checkpoint-{watch.writing}"
            reason = f"the Trainer could not write {failed} ({shutdown.stop_reason(exc).splitlines()[0]})"
            recorder.close(reason=reason)  # every recorded step is committed: the store's disk may not be full
            raise CheckpointError(
                f"{reason}; every recorded step is committed to {describe(out)}, marked interrupted: make room and "
                "continue with --resume (from the newest complete checkpoint)"
            ) from exc
        recorder.close()
    return summarize(out) if is_main_process() else None
