"""The passes that reduce a parameter to the sums its health statistics come from
(:mod:`zarrec.capture.health`): per row, ``‖W‖², ‖g‖², ‖a‖², ‖u‖², ⟨a, u⟩, ‖a − u‖², ⟨g, m⟩,
‖m‖²`` with ``a = W − W[t−1]`` and ``u`` the optimizer's intended update.

A large parameter is reduced alone, by a ``torch.compile``d function: one pass over its
tensors, no temporary the size of the parameter. Small ones would cost more in per-operation
overhead than in arithmetic, so those of one param group are reduced together
(:class:`FlatGroup`): concatenated and multiplied elementwise at once, then summed per segment
(a row, or a whole parameter); compiled too where the group is large enough to repay a
compilation (the reference model's 116 k parameters: 1.4 ms a step on one core, 13 ms eagerly).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch

_LOGGER = logging.getLogger("zarrec")

# Parameters of at least this many entries are reduced by a compiled function (one pass, no
# temporaries); smaller ones by eager operations (a compilation costs seconds, once a shape kind).
COMPILE_FROM_ELEMENTS = 1 << 20
# A flat group of at least this many entries is compiled (4-12 s once, for its shapes: the tiny
# models of tests stay eager).
COMPILE_FLAT_FROM_ELEMENTS = 1 << 16

SUMS = 8  # the sums each pass returns per row, in this order:
W2, G2, A2, U2, AU, R2, GM, M2 = range(SUMS)


def adam_update(previous, m, v, k):
    """Adam's u; ``k`` = [lr / (1 − β1ᵗ), 1 / (1 − β2ᵗ), eps, lr · wd (AdamW; Adam: 0)]."""
    return -k[0] * m / ((v * k[1]).sqrt() + k[2]) - k[3] * previous


def sgd_update(previous, g, b, k):
    """SGD's u; ``k`` = [lr (gradient term), lr · wd, lr or lr · μ (momentum term)]."""
    return -k[0] * g - k[1] * previous - k[2] * b


def products(w, previous, g, m, u):
    """The 8 × entries products whose sums :func:`sums_of` returns (float32 inputs)."""
    a = w - previous
    r = a - u
    return torch.stack([w * w, g * g, a * a, u * u, a * u, r * r, g * m, m * m])


def sums_of(w, previous, g, m, u):
    """Per row: ‖W‖², ‖g‖², ‖a‖², ‖u‖², ⟨a, u⟩, ‖a − u‖², ⟨g, m⟩, ‖m‖² (float32, a = W − W[t−1]):
    :func:`products` summed, written out so that a compiled pass fuses each sum (no 8 × entries stack)."""
    a = w - previous
    r = a - u
    return torch.stack([(w * w).sum(-1), (g * g).sum(-1), (a * a).sum(-1), (u * u).sum(-1), (a * u).sum(-1),
                        (r * r).sum(-1), (g * m).sum(-1), (m * m).sum(-1)])


def _adam_sums(w, previous, g, m, v, k):
    """:func:`sums_of` with Adam's u (:func:`adam_update`)."""
    w, previous, g, m, v = w.float(), previous.float(), g.float(), m.float(), v.float()
    return sums_of(w, previous, g, m, adam_update(previous, m, v, k))


def _sgd_sums(w, previous, g, b, k):
    """:func:`sums_of` with SGD's u (:func:`sgd_update`)."""
    w, previous, g, b = w.float(), previous.float(), g.float(), b.float()
    return sums_of(w, previous, g, b, sgd_update(previous, g, b, k))


def _norm_sums(w, previous, g, m):
    """:func:`sums_of` without an intended update (NaN there)."""
    w, previous, g, m = w.float(), previous.float(), g.float(), m.float()
    return sums_of(w, previous, g, m, torch.full_like(w, float("nan")))


class Pass:
    """One of the passes, compiled where ``compiles(arguments)`` (by default: for a large
    parameter) when the compiler works here."""

    def __init__(self, function: Callable, compiles: Callable[[tuple], bool] | None = None, dynamic: bool = True) -> None:
        self.function = function
        self.compiles = compiles or (lambda arguments: arguments[0].numel() >= COMPILE_FROM_ELEMENTS)
        self.dynamic = dynamic
        self._compiled: Callable | None = None
        self._compiler_failed = False

    def __call__(self, *arguments: Any) -> torch.Tensor:
        if self._compiler_failed or not self.compiles(arguments):
            return self.function(*arguments)
        if self._compiled is None:
            self._compiled = torch.compile(self.function, dynamic=self.dynamic, fullgraph=True)
        try:
            return self._compiled(*arguments)
        except Exception as error:  # no compiler for this device: the same arithmetic, eagerly
            self._compiler_failed = True
            _LOGGER.warning("zarrec: health statistics computed without torch.compile (%s): slower, the same numbers",
                            str(error).splitlines()[0] if str(error) else type(error).__name__)
            return self.function(*arguments)


PASSES = {"adam": Pass(_adam_sums), "sgd": Pass(_sgd_sums), "norms": Pass(_norm_sums)}


class FlatGroup:
    """Small parameters of one param group (one device and dtype), reduced together: their
    ``W[t−1]`` copies are views of one buffer, and each step their tensors are concatenated,
    multiplied once (:func:`products`) and summed per parameter's segments. ``rows``: for
    each parameter, its segments (its rows when its statistics are kept per row, else 1)."""

    def __init__(self, parameters: Sequence[torch.Tensor], rows: Sequence[int]) -> None:
        self.shapes = [p.shape for p in parameters]
        self.rows = list(rows)
        self.sizes = [p.numel() for p in parameters]
        self.previous = torch.cat([p.detach().reshape(-1) for p in parameters])
        self._passes: dict[str, Pass] = {}  # by the optimizer's kind
        self._buffers = {False: torch.empty_like(self.previous), True: torch.empty_like(self.previous)}  # (copy_of_grads)
        self._views = {id(buffer): self._split(buffer) for buffer in self._buffers.values()}  # (made once: 28 views cost more than the copy)

    def copy_of_grads(self, grads: Sequence[torch.Tensor], before_clipping: bool = False) -> torch.Tensor:
        """``grads`` (one per parameter) copied into one of the group's flat gradient buffers (as
        the step uses them, or before clipping), in one fused copy; the buffer is reused, so
        the work that read its last copy must be done."""
        buffer = self._buffers[before_clipping]
        torch._foreach_copy_(self._views[id(buffer)], grads)
        return buffer

    def grads_of(self, copied: torch.Tensor) -> list[torch.Tensor]:
        """Each parameter's gradient in a copy made by :meth:`copy_of_grads`."""
        return self._views[id(copied)]

    def previous_of(self) -> list[torch.Tensor]:
        """Each parameter's ``W[t−1]``, a view of the group's buffer."""
        return self._split(self.previous)

    def _split(self, flat: torch.Tensor) -> list[torch.Tensor]:
        return [part.view(shape) for part, shape in zip(flat.split(self.sizes), self.shapes)]

    def sums(self, parameters: Sequence[torch.Tensor], grads: Sequence[torch.Tensor] | torch.Tensor,
             states: Sequence[Sequence[torch.Tensor]], kind: str, k: torch.Tensor) -> list[torch.Tensor]:
        """Each parameter's sums (8 × its segments) from the ``parameters`` now, their ``grads``
        (or their flat copy, :meth:`copy_of_grads`) and, per parameter, its state (Adam: ``exp_avg, exp_avg_sq``; SGD: the momentum buffer
        or its gradient), then keeps the parameters as the next ``W[t−1]``."""
        if kind not in self._passes:
            sizes, rows, large = list(self.sizes), list(self.rows), sum(self.sizes) >= COMPILE_FLAT_FROM_ELEMENTS

            def reduce(ws, previous, g, firsts, seconds, k):  # (sizes and rows: constants of the compiled code)
                return _flat_sums(kind, sizes, rows, ws, previous, g, firsts, seconds, k)

            self._passes[kind] = Pass(reduce, compiles=lambda _: large, dynamic=False)
        g = grads if isinstance(grads, torch.Tensor) else _flat(grads)
        seconds = [state[1] for state in states] if kind == "adam" else []
        totals = self._passes[kind](list(parameters), self.previous, g, [state[0] for state in states], seconds, k)
        return list(totals.split(self.rows, dim=1))


def _flat_sums(kind: str, sizes: list[int], rows: list[int], ws: list[torch.Tensor], previous: torch.Tensor,
               g: torch.Tensor, firsts: list[torch.Tensor], seconds: list[torch.Tensor], k: torch.Tensor) -> torch.Tensor:
    """:meth:`FlatGroup.sums` as one function (compiled for a large group): the 8 sums of each
    parameter's segments side by side (8 × all segments); ``previous`` becomes the ``ws``."""
    w = torch.cat([t.detach().reshape(-1) for t in ws])
    w32, previous32, g32, first = w.float(), previous.float(), g.float(), _flat(firsts)
    u = adam_update(previous32, first, _flat(seconds), k) if kind == "adam" else sgd_update(previous32, g32, first, k)
    product = products(w32, previous32, g32, first, u)
    previous.copy_(w)
    # (per parameter, a reshape and a sum: faster on a CPU than one index_add over every entry)
    return torch.cat([part.reshape(SUMS, count, -1).sum(-1) for part, count in zip(product.split(sizes, dim=1), rows)], dim=1)


def _flat(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1) for t in tensors]).float()
