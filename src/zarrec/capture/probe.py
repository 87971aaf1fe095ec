"""A fixed probe: one input, given once, whose logits are evaluated with the current weights.

The training logits (sequence 0 of each batch) change with the batch; a probe's logits
change only with the weights, so they show how the prediction of one fixed context
evolves over training. Stored as ``probe_logits (step, probe_position, token)``, with the
probe's input token at each position as the coordinate ``probe_input``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from zarrec.errors import ConfigError
from zarrec.store import contract


class Probe:
    """Logits of ``model`` on a fixed input at chosen positions.

    Args:
        inputs: token ids, or a text: encoded by ``tokenizer`` when given, else as bytes
            (for byte-level models, whose token ids are byte values).
        positions: positions whose logits are kept (negative ones count from the end);
            default: every position.
        every: evaluate at recorded steps divisible by ``every`` (and step 0).
        tokenizer: a Hugging Face tokenizer (the Trainer's ``processing_class``), for a text.
    """

    def __init__(
        self,
        inputs: str | Sequence[int],
        positions: Sequence[int] | None = None,
        every: int = 1,
        tokenizer: Any = None,
    ) -> None:
        if every < 1:
            raise ConfigError(f"the probe's every must be a positive number of steps, got {every}")
        if isinstance(inputs, str):
            ids = tokenizer(inputs)["input_ids"] if tokenizer is not None else list(inputs.encode("utf-8"))
        else:
            ids = [int(i) for i in inputs]
        if not ids:
            raise ConfigError("the probe is empty; give it some text or token ids")
        length = len(ids)
        positions = list(range(length)) if positions is None else [int(p) for p in positions]
        outside = [p for p in positions if not -length <= p < length]
        if outside:
            raise ConfigError(f"probe positions {outside} lie outside its {length} tokens; use 0..{length - 1} or -1..-{length}")
        self.ids = ids
        self.positions = [p % length for p in positions]
        self.every = every
        self.text = inputs if isinstance(inputs, str) else None

    def check_vocabulary(self, vocab_size: int) -> None:
        """Refuse token ids the model cannot embed (e.g. non-ASCII text for a 128-byte vocabulary)."""
        beyond = sorted({i for i in self.ids if not 0 <= i < vocab_size})
        if beyond:
            raise ConfigError(
                f"the probe has token ids {beyond[:5]} outside the model's vocabulary of {vocab_size}; "
                "use text the model's tokenizer covers (ASCII for a byte-level model) or valid token ids"
            )

    def evaluates(self, step: int) -> bool:
        return step % self.every == 0

    @torch.no_grad()
    def logits(self, model: torch.nn.Module) -> torch.Tensor:
        """``(positions, vocabulary)`` logits with the current weights, in evaluation mode (no
        dropout); the model's mode is restored. Stays on the model's device: no sync."""
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        try:
            output = model(input_ids=torch.tensor([self.ids], device=device))
        finally:
            model.train(was_training)
        logits = output.logits if hasattr(output, "logits") else output
        return logits[0, self.positions].detach()

    def coords(self) -> dict[str, tuple[str, np.ndarray]]:
        """The probe's coordinates for a :class:`~zarrec.Recorder`."""
        return {
            contract.PROBE_POSITION: (contract.PROBE_POSITION, np.array(self.positions, dtype=np.int64)),
            contract.PROBE_INPUT: (contract.PROBE_POSITION, np.array([self.ids[p] for p in self.positions], dtype=np.int64)),
        }

    def attrs(self) -> dict[str, Any]:
        return {"probe_text": self.text, "probe_ids": self.ids, "probe_every": self.every}


def make_probe(model: torch.nn.Module, tokenizer: Any, inputs, positions, every) -> Probe:
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
