"""The global gradient norm, as ``clip_grad_norm_`` computes it: one fused norm over the
trained parameters' gradients, on their device; under FSDP2 this rank's share of its square."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from zarrec.capture.step import NAN
from zarrec.record.ranks import is_dtensor, sharded


def gradient_norm(parameters: Sequence[torch.nn.Parameter], sharded_model: bool) -> torch.Tensor:
    """The global gradient norm of the trained ``parameters``; under FSDP2 (``sharded_model``)
    this rank's share of its square (its own rows, and on rank 0 every unsharded gradient): the
    recorder sums the shares over the ranks once a chunk, never a step."""
    grads = [p.grad for p in parameters]
    if not sharded_model:
        return global_norm(grads)
    rank, own = torch.distributed.get_rank(), []
    for grad in grads:
        if grad is not None and (sharded(grad) or rank == 0):
            own.append(grad.to_local() if is_dtensor(grad) else grad)
    return global_norm(own).square() if own else torch.zeros(())


def trained(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def global_norm(tensors: Sequence[torch.Tensor | None]) -> torch.Tensor:
    """``√Σ‖x‖²`` over the tensors that exist, as ``clip_grad_norm_`` computes it (float32, on their device)."""
    present = [t for t in tensors if t is not None]  # (gradients: no autograd history to detach from)
    if not present:
        return NAN
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(present)).float())


def at_each_backward_end(parameters: Sequence[torch.nn.Parameter], wanted: Callable[[], bool],
                         callback: Callable[[], None]) -> list[torch.utils.hooks.RemovableHandle]:
    """Hooks that run ``callback`` once at the end of each backward where ``wanted()``: the first
    of ``parameters`` to finish accumulating its gradient queues it on the autograd engine (one
    call a backward, not one a parameter)."""
    queued = False

    def at_the_end() -> None:
        nonlocal queued
        queued = False
        callback()

    def queue(parameter: torch.nn.Parameter) -> None:
        nonlocal queued
        if not queued and wanted():
            queued = True
            torch.autograd.Variable._execution_engine.queue_callback(at_the_end)

    return [parameter.register_post_accumulate_grad_hook(queue) for parameter in parameters]
