"""What one optimizer step showed the capture: its loss (summed over micro-batches), logits,
gradients, global gradient norms and learning rate; made anew when the next step begins."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from zarrec.store import contract

NAN = torch.tensor(float("nan"))  # a scalar the step did not see, in the dtype of a captured one (float32)


class CapturedStep:
    """What one optimizer step showed the capture, reset when the next one begins."""

    def __init__(self) -> None:
        self.loss_sum: torch.Tensor | None = None
        self.micro_batches = 0
        self.loss_is_token_share = False  # each micro loss was already divided by the step's token count
        self.logits: torch.Tensor | None = None
        self.grads: Mapping[str, torch.Tensor | None] = {}
        self.grads_copy: list[torch.Tensor] | None = None  # the gradients used, copied (a worker thread reads them)
        # (a norm to be computed where the step's work is queued: from a copy of the gradients)
        self.grad_norm: torch.Tensor | Callable[[], torch.Tensor] = NAN
        self.grad_norm_before_clipping: torch.Tensor | Callable[[], torch.Tensor] = NAN
        self.probe_logits: torch.Tensor | None = None
        self.lr: float | torch.Tensor | None = None
        self.group_lrs: list[float | torch.Tensor] | None = None  # every param group's
        self.random_states: dict[str, torch.Tensor] = {}  # after the step (zarrec.capture.random_state)

    def add_output(self, output: Any, token_share: bool, at_token_rows: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """A training forward's output (see :meth:`~zarrec.ModelRecorder.add_output`); its
        logits at sequence 0, last position, taken at the chosen tokens by ``at_token_rows``."""
        if isinstance(output, torch.Tensor):  # (a plain loop's loss: the common case, kept short)
            self._add_loss(output, token_share)
            return
        loss = output.get("loss") if isinstance(output, Mapping) else getattr(output, "loss", output)
        if isinstance(loss, (int, float)):
            loss = torch.tensor(float(loss))
        if isinstance(loss, torch.Tensor):
            self._add_loss(loss, token_share)
        logits = output.get("logits") if isinstance(output, Mapping) else getattr(output, "logits", None)
        if self.logits is None and isinstance(logits, torch.Tensor) and logits.ndim == 3:
            self.logits = at_token_rows(logits.detach()[0, -1]).clone()

    def _add_loss(self, loss: torch.Tensor, token_share: bool) -> None:
        loss = loss.detach()  # (in float32 where the step's work runs: see loss)
        self.loss_sum = loss if self.loss_sum is None else self.loss_sum.float() + loss.float()
        self.micro_batches += 1
        self.loss_is_token_share = token_share

    def keep_lrs(self, group: Mapping, optimizer: torch.optim.Optimizer) -> None:
        """The learning rates of the step, before a scheduler changes them (the first call of a
        step keeps them): ``group``'s (the recorded parameters'), and every group's (for the statistics)."""
        if self.lr is None:
            self.lr = group["lr"]
        if self.group_lrs is None:
            self.group_lrs = [g["lr"] for g in optimizer.param_groups]

    def scalars(self) -> dict[str, torch.Tensor | float]:
        """What the step records besides the parameters: its loss, learning rate, gradient
        norms, and its logits and probe's logits where it has them."""
        values = {
            contract.LOSS: self.loss, contract.LR: self.lr if self.lr is not None else float("nan"),
            contract.GRAD_NORM: _computed(self.grad_norm),
            contract.GRAD_NORM_BEFORE_CLIPPING: _computed(self.grad_norm_before_clipping),
        }
        if self.logits is not None:
            values[contract.LOGITS] = self.logits
        if self.probe_logits is not None:
            values[contract.PROBE_LOGITS] = self.probe_logits
        return values

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
            return NAN
        total = self.loss_sum.float()
        return total if self.loss_is_token_share else total / self.micro_batches


def _computed(norm: torch.Tensor | Callable[[], torch.Tensor]) -> torch.Tensor:
    return norm() if callable(norm) else norm
