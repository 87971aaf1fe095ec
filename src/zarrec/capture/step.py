"""What one optimizer step showed the capture: its loss (summed over micro-batches), logits,
gradients, global gradient norms and learning rate; made anew when the next step begins."""

from __future__ import annotations

from collections.abc import Mapping

import torch

NAN = torch.tensor(float("nan"))  # a scalar the step did not see, in the dtype of a captured one (float32)


class CapturedStep:
    """What one optimizer step showed the capture, reset when the next one begins."""

    def __init__(self) -> None:
        self.loss_sum: torch.Tensor | None = None
        self.micro_batches = 0
        self.loss_is_token_share = False  # each micro loss was already divided by the step's token count
        self.logits: torch.Tensor | None = None
        self.grads: Mapping[str, torch.Tensor | None] = {}
        self.grad_norm: torch.Tensor = NAN
        self.grad_norm_before_clipping: torch.Tensor = NAN
        self.lr: float | torch.Tensor | None = None
        self.group_lrs: list[float | torch.Tensor] | None = None  # every param group's

    def keep_lrs(self, group: Mapping, optimizer: torch.optim.Optimizer) -> None:
        """The learning rates of the step, before a scheduler changes them (the first call of a
        step keeps them): ``group``'s (the recorded parameters'), and every group's (for the statistics)."""
        if self.lr is None:
            self.lr = group["lr"]
        if self.group_lrs is None:
            self.group_lrs = [g["lr"] for g in optimizer.param_groups]

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
        return self.loss_sum if self.loss_is_token_share else self.loss_sum / self.micro_batches
