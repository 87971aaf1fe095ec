"""The passes behind the health statistics: small parameters reduced together give the sums each
gives alone, per row and per parameter, for Adam's and SGD's intended updates."""

from __future__ import annotations

import pytest
import torch

from zarrec.capture.passes import PASSES, FlatGroup


@pytest.mark.parametrize("kind", ["adam", "sgd"])
def test_a_flat_group_sums_as_each_parameter_alone(kind):
    generator = torch.Generator().manual_seed(0)
    shapes, rows = [(7, 5), (5,), (3, 4, 2)], [7, 1, 3]  # the first and the last kept per row
    parameters = [torch.randn(shape, generator=generator) for shape in shapes]
    flat = FlatGroup(parameters, rows)
    previous = [view.clone() for view in flat.previous_of()]
    for p in parameters:
        p.add_(torch.randn(p.shape, generator=generator) * 1e-2)  # the step's update
    grads = [torch.randn(p.shape, generator=generator) for p in parameters]
    states = [[torch.randn(p.shape, generator=generator), torch.rand(p.shape, generator=generator)] for p in parameters]
    if kind == "sgd":
        states = [state[:1] for state in states]
    k = torch.tensor([0.01, 0.9, 1e-8, 1e-3]) if kind == "adam" else torch.tensor([0.0, 0.0, 0.05])
    together = flat.sums(parameters, grads, states, kind, k)
    for p, count, before, g, state, total in zip(parameters, rows, previous, grads, states, together):
        alone = PASSES[kind](*(x.reshape(count, -1) for x in (p, before, g, *state)), k)
        torch.testing.assert_close(total, alone, rtol=1e-5, atol=1e-7)
    for p, view in zip(parameters, flat.previous_of()):
        assert torch.equal(view, p)  # kept as the next step's W[t − 1]
