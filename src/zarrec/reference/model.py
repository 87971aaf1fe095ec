"""The reference experiment's model: a byte-level GPT-2 whose token embeddings start nearly identical."""

from __future__ import annotations

import torch

from zarrec.reference.config import TrainConfig

TORCH_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


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
