"""The logits' spread against a numpy reference."""

from __future__ import annotations

import numpy as np
import pytest

import zarrec  # noqa: F401  (registers ds.zarrec)
from conftest import close
from zarrec import analysis


def test_logit_stats(ds):
    z = ds.logits.values.astype(np.float64)
    live = ds.live.values
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    stats = analysis.logit_stats(ds)
    close(stats["range"], z.max(1) - z.min(1))
    close(stats["std"], z.std(1))
    close(stats["entropy"], -(p * np.log(p)).sum(1))
    close(stats["live_mass"], p[:, live].sum(1))
    close(stats["dead_mass"], p[:, ~live].sum(1))
    assert stats["entropy"].attrs["max_entropy"] == pytest.approx(np.log(ds.sizes["token"]))


def test_uniform_logits_have_zero_range_and_maximal_entropy(ds):
    uniform = ds.copy().assign(logits=ds.logits * 0 + 7.6875)
    stats = analysis.logit_stats(uniform).compute()
    assert (stats["range"] == 0).all()
    np.testing.assert_allclose(stats["entropy"], np.log(ds.sizes["token"]), rtol=1e-6)
