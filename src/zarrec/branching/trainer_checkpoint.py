"""A Hugging Face Trainer checkpoint made from a recorded step, so that a Trainer continues a
recorded run from any step it recorded (a branch, with its own settings, or the same run)::

    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[ZarrecCallback("branch.zarr")])
    checkpoint = zarrec.trainer_checkpoint("run.zarr", 30, trainer, "run-at-30")
    trainer.train(resume_from_checkpoint=checkpoint)

The Trainer resumes from it as from its own checkpoint: it loads the weights, the optimizer's
and the scheduler's state, starts counting at the step, and skips the batches of the steps
before it in its data order (seeded by ``args.seed``: the same order as the recorded run's).
Its ``rng_state.pth`` holds torch's generator states recorded at the step (a store of every
parameter records them), which the Trainer sets after skipping those batches, so that dropout
draws what the recorded run drew; Python's and NumPy's generators are this process's (the
store does not record them; the Trainer's own code does not draw from them).
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zarrec.branching.restore import restore_and_tell_random_states
from zarrec.errors import ConfigError
from zarrec.store.location import StoreLike


def trainer_checkpoint(store: StoreLike, step: int, trainer: Any, directory: str | os.PathLike) -> str:
    """Write into ``directory`` (new, or empty) a checkpoint of ``trainer`` at recorded
    ``step`` of ``store``, for ``trainer.train(resume_from_checkpoint=...)``; returns its path.

    The trainer's model and its optimizer and scheduler, created here as the Trainer creates
    them from its arguments (the learning rate, schedule and ``max_steps`` of ``trainer.args``,
    changed or not), are set to the recorded step by :func:`~zarrec.branching.restore.restore`
    (which refuses, in one line, a store that lacks what it needs)."""
    from transformers.trainer import OPTIMIZER_NAME, SCHEDULER_NAME, TRAINER_STATE_NAME
    from transformers.trainer_callback import ExportableState, TrainerState

    target = Path(directory)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ConfigError(f"{target} exists and is not an empty directory; pass a new directory for the checkpoint")
    args = trainer.args
    if args.max_steps <= step:
        raise ConfigError(f"the trainer stops at step {args.max_steps} (max_steps), not after the branch's step {step}: "
                          "pass a larger max_steps")
    trainer.create_optimizer_and_scheduler(num_training_steps=args.max_steps)
    with torch.random.fork_rng(devices=[]):  # (this process's generators stay: the Trainer's data order draws from them)
        random_states = restore_and_tell_random_states(store, step, trainer.model, trainer.optimizer, trainer.lr_scheduler)
    target.mkdir(parents=True, exist_ok=True)
    trainer.save_model(str(target))
    torch.save(trainer.optimizer.state_dict(), target / OPTIMIZER_NAME)
    torch.save(trainer.lr_scheduler.state_dict(), target / SCHEDULER_NAME)
    state = TrainerState(global_step=step, max_steps=args.max_steps, logging_steps=args.logging_steps,
                         eval_steps=args.eval_steps, save_steps=args.save_steps,
                         train_batch_size=args.per_device_train_batch_size,
                         stateful_callbacks=[callback for callback in [*trainer.callback_handler.callbacks, trainer.control]
                                             if isinstance(callback, ExportableState)])  # (as the Trainer's own)
    state.save_to_json(str(target / TRAINER_STATE_NAME))
    if "cpu" in random_states:  # (the Trainer sets them once it has skipped the batches before the step)
        torch.save({"python": random.getstate(), "numpy": np.random.get_state(), **random_states}, target / "rng_state.pth")
    return str(target)
