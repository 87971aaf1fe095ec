"""The random state a restored run needs to continue as recorded (dropout, a collator's
masks): torch's generators after each recorded step, recorded where the store can be
restored from (every parameter, quantity and row; :func:`zarrec.restore` sets them).

About 5 KB a step for the CPU generator (Mersenne Twister's state), 16 bytes for CUDA's
(a seed and an offset); the same state step after step (no random draws) compresses to
almost nothing.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from zarrec.record.recorder import Recorder
from zarrec.record.variables import Value
from zarrec.store import contract


def states_now(device: torch.device | None) -> dict[str, torch.Tensor]:
    """Torch's CPU generator state and, for a model on an accelerator, that device's, as bytes
    (host copies: reading a generator's state queues nothing on the device)."""
    states = {contract.RANDOM_STATE: torch.get_rng_state()}
    if device is not None:
        states[contract.random_state_of(device.type)] = torch.get_device_module(device.type).get_rng_state()
    return states


def label(recorder: Recorder, values: Mapping[str, Value]) -> None:
    """Name the dims and describe the random-state variables among a first step's ``values``."""
    for name in values:
        if name.startswith(contract.RANDOM_STATE):
            device_type = name.removeprefix(contract.RANDOM_STATE).lstrip("_") or "cpu"
            recorder.label(name, (f"{name}_byte",), **{contract.GENERATOR_ATTR: device_type}, description=(
                f"torch's {device_type} random generator state after step t, its bytes (as float32): what "
                "zarrec.restore sets to continue the run from step t (step 0: when recording began)"))
