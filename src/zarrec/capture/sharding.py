"""Which sharded models the capture records, and which it refuses: FSDP2's DTensors sharded
on their rows are recorded rank by rank (:mod:`zarrec.record.ranks`); FSDP1's flat parameters
and ZeRO-3's partitioned ones would be recorded as if they were whole matrices."""

from __future__ import annotations

import sys

import torch

from zarrec.capture.selection import ParameterSelection
from zarrec.errors import ConfigError
from zarrec.record.ranks import check_layout, is_dtensor


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether ``model`` is sharded by FSDP2 (its parameters are DTensors): then every rank records its own rows."""
    return any(is_dtensor(p) for p in model.parameters())


def refuse_unsupported_sharding(selection: ParameterSelection) -> None:
    """Refuse a selected parameter laid out other than FSDP2's: it would not be recorded as a whole matrix."""
    for name, parameter in selection.parameters.items():
        if is_dtensor(parameter):
            check_layout(name, parameter, torch.distributed.get_world_size())


def refuse_partitioned_parameters(model: torch.nn.Module) -> None:
    """Refuse FSDP1's flat parameters and ZeRO-3's partitioned ones: a rank holds a flat or empty
    tensor there, which zarrec would record as if it were the whole matrix."""
    fsdp1 = getattr(sys.modules.get("torch.distributed.fsdp"), "FullyShardedDataParallel", None)  # (imported if used)
    if fsdp1 is not None and any(isinstance(module, fsdp1) for module in model.modules()):
        raise ConfigError(
            "the model is wrapped in FSDP1 (FullyShardedDataParallel), whose flat parameters hold no matrix whole; "
            "shard it with FSDP2 (torch.distributed.fsdp.fully_shard), which zarrec records rank by rank"
        )
    partitioned = [name for name, p in model.named_parameters() if hasattr(p, "ds_id") or hasattr(p, "ds_shape")]
    if partitioned:
        raise ConfigError(
            f"{partitioned[0]} is partitioned by DeepSpeed ZeRO-3 (each rank holds an empty or flat part); zarrec "
            "does not record ZeRO-3: use ZeRO stage 1 or 2, or FSDP2 (fully_shard)"
        )
