"""The reference experiment: a byte-level GPT-2 with near-identical token embeddings.

This is the run of the notebook zarrec grew out of (``shared/seed``): vocabulary of
128 bytes, 64 dimensions, 2 layers, 2 heads, context 128, batch 32, AdamW with a
linear learning-rate decay, every token embedding started at one random unit
vector plus N(0, sigma²) noise. It trains with the Hugging Face Trainer and records
every step through :class:`zarrec.ZarrecCallback`.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from zarrec.callback import ZarrecCallback
from zarrec.config import TrainConfig
from zarrec.corpus import ByteDataset, Corpus, load_corpus
from zarrec.errors import ConfigError
from zarrec.store import StoreLike, ensure_new
from zarrec.summary import StoreSummary, summarize

if TYPE_CHECKING:
    from transformers import TrainerCallback

TORCH_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def resolve_device(name: str) -> str:
    """``auto`` picks CUDA, then Apple MPS, then the CPU; an unavailable device is an error."""
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if name == "auto":
        return next(device for device in ("cuda", "mps", "cpu") if available[device])
    if not available[name]:
        raise ConfigError(f"device {name} is not available on this machine; use --device auto or cpu")
    return name


def build_model(config: TrainConfig):
    """A GPT-2 LM with tied embeddings and no dropout, in ``config.dtype``, embeddings initialised."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(config.seed)
    model_config = GPT2Config(
        vocab_size=config.vocab_size,
        n_positions=config.context,
        n_embd=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        tie_word_embeddings=True,
        bos_token_id=None,  # GPT-2's 50256 lies outside a byte vocabulary
        eos_token_id=None,
    )
    model = GPT2LMHeadModel(model_config).to(TORCH_DTYPES[config.dtype])
    # transformers cannot infer the loss type from the class name "GPT2LMHeadModel"; without it
    # the Trainer counts unshifted labels and scales every loss by (context - 1) / context.
    model.loss_type = "ForCausalLM"
    with torch.no_grad():
        model.get_input_embeddings().weight.copy_(initial_embeddings(config))
    return model


def initial_embeddings(config: TrainConfig) -> torch.Tensor:
    """One random unit vector plus N(0, init_sigma²) noise per token, in the training dtype.

    ``f32_to_bf16`` draws and sums in float32, then casts (the notebook's method: the
    noise is far below bfloat16 resolution, so all tokens start identical in bf16).
    ``pure_bf16`` draws and sums in bfloat16 throughout.
    """
    generator = torch.Generator().manual_seed(config.seed)
    draw_dtype = torch.float32 if config.init == "f32_to_bf16" else torch.bfloat16
    direction = torch.randn(config.n_embd, generator=generator).to(draw_dtype)
    direction = direction / direction.norm()
    noise = torch.randn(config.vocab_size, config.n_embd, generator=generator).to(draw_dtype) * config.init_sigma
    return (direction + noise).to(TORCH_DTYPES[config.dtype])


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
):
    """A Hugging Face Trainer for the reference experiment (no recording unless a callback records).

    ``output_dir`` receives nothing but what the Trainer insists on writing (checkpoints are off).
    """
    from transformers import Trainer, TrainingArguments
    from transformers.utils import logging as hf_logging

    config.validate()
    device = resolve_device(config.device)
    corpus = corpus or load_corpus(config.corpus, config.vocab_size)
    hf_logging.set_verbosity_error()
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
        optim="adamw_torch",
        lr_scheduler_type="linear",
        seed=config.seed,
        save_strategy="no",
        logging_steps=max(1, config.steps // 10),
        report_to="none",
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        use_cpu=device == "cpu",
        disable_tqdm=not progress,
    )
    dataset = ByteDataset(corpus, config.context)
    return Trainer(model=build_model(config), args=args, train_dataset=dataset, callbacks=list(callbacks))


def train(
    config: TrainConfig,
    out: StoreLike,
    *,
    overwrite: bool = False,
    progress: bool = True,
    callbacks: Sequence[TrainerCallback] = (),
) -> StoreSummary:
    """Train the reference model, recording every ``config.every``-th step into ``out``.

    ``callbacks`` run after the recorder's, on the same events.
    """
    config.validate()
    ensure_new(out, overwrite=overwrite)
    corpus = load_corpus(config.corpus, config.vocab_size)
    recorder = ZarrecCallback(
        out,
        every=config.every,
        chunk_steps=config.chunk_steps,
        token_coords=corpus.token_coords(config.vocab_size),
        attrs=experiment_attributes(config, corpus, resolve_device(config.device)),
        overwrite=overwrite,
    )
    with tempfile.TemporaryDirectory(prefix="zarrec-trainer-") as trainer_dir:
        trainer = make_trainer(config, trainer_dir, [recorder, *callbacks], corpus=corpus, progress=progress)
        try:
            trainer.train()
        finally:
            recorder.close()
    return summarize(out)
