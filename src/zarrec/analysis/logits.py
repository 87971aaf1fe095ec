"""How spread the recorded logits are, step by step: range, standard deviation, entropy, and
the probability mass on live and on dead tokens."""

from __future__ import annotations

import numpy as np
import xarray as xr

from zarrec.analysis.parameters import live_mask
from zarrec.errors import ConfigError
from zarrec.store import contract


def logit_stats(ds: xr.Dataset) -> xr.Dataset:
    """Per step, how spread the recorded logits ``z[t, token]`` are.

    ``range = max z − min z``; ``std`` (population, over tokens); ``entropy = −Σ p log p`` in
    nats with ``p = softmax(z)`` (uniform logits give ``ln V``, stored as the attribute
    ``max_entropy``); ``live_mass = Σ_live p`` and ``dead_mass = Σ_dead p``.
    """
    if contract.LOGITS not in ds:
        raise ConfigError("this dataset has no 'logits'; they are recorded by the zarrec callbacks when the model's output has them")
    token = contract.TOKEN
    if token in ds.attrs.get(contract.ROWS_ATTR, {}):
        raise ConfigError(
            f"logit_stats needs every token's logit, and this run recorded {ds.sizes[token]:,} of "
            f"{ds.attrs[contract.ROWS_ATTR][token]:,} tokens (rows=...); record without rows for the logits' spread"
        )
    z = ds[contract.LOGITS]
    shifted = z - z.max(token, skipna=False)
    log_p = shifted - np.log(np.exp(shifted).sum(token, skipna=False))
    p = np.exp(log_p)
    entropy = -(p * log_p).sum(token, skipna=False)
    entropy.attrs["max_entropy"] = float(np.log(z.sizes[token]))
    stats = {
        "range": z.max(token, skipna=False) - z.min(token, skipna=False),
        "std": z.std(token, skipna=False),
        "entropy": entropy,
    }
    if contract.LIVE in ds.coords or contract.LIVE in ds:
        mask = xr.DataArray(live_mask(ds), dims=token)
        stats["live_mass"] = p.where(mask, 0).sum(token, skipna=False)
        stats["dead_mass"] = p.where(~mask, 0).sum(token, skipna=False)
    return xr.Dataset(stats)
