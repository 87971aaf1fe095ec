"""Every recorded step is a checkpoint: a live model and optimizer set to the state a store
recorded at a step, so that training continues from there as the recorded run did.

A store recorded with every parameter and the optimizer's whole state (``params="*"``, the
default quantities) holds, at each recorded step ``t``, what a checkpoint holds of the
model and optimizer: ``W[t]`` of every parameter and every state tensor the optimizer keeps
for it (AdamW: ``exp_avg``, ``exp_avg_sq``; SGD: ``momentum_buffer``). What it does not hold
is derived: the optimizer's step count of each parameter is ``t`` (every parameter updated at
every step since step 0, as the recorder requires), a scheduler's position is ``t`` scheduler
steps from its start. Values are stored as float32, which holds a bfloat16 or float16 value
exactly, so the restore is bit for bit.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Mapping

import numpy as np
import torch
import zarr

from zarrec.errors import ConfigError
from zarrec.store import contract
from zarrec.store.location import StoreLike, committed_steps, describe, open_run


def restore(store: StoreLike, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
            scheduler: torch.optim.lr_scheduler.LRScheduler | None = None) -> None:
    """Set ``model``'s parameters and ``optimizer``'s state to those ``store`` recorded at
    optimizer step ``step``, and ``scheduler`` (fresh: made with the optimizer, not stepped)
    to that step, so that the next ``optimizer.step()`` is step ``step + 1`` of the recorded run.

    Refused, in one line naming what is missing, before anything changes: a step the store did
    not record, a parameter (or a state tensor the optimizer keeps) it did not record, rows
    thinned by ``rows=``, rounded values (``mantissa_bits``), a model whose parameters differ
    in names or shapes, state the optimizer keeps per parameter besides tensors and its step
    count, or a scheduler already stepped. Step 0 is the model as it was made, the optimizer
    with no state yet. Where the store recorded the random state (a store of every parameter
    does), torch's generators are set to it too: the CPU's, and the model's accelerator's.
    """
    restore_and_tell_random_states(store, step, model, optimizer, scheduler)


def restore_and_tell_random_states(store: StoreLike, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                                   scheduler: torch.optim.lr_scheduler.LRScheduler | None = None) -> dict[str, torch.Tensor]:
    """:func:`restore`, which returns the generator states it set (``{"cpu": ..., "cuda": ...}``;
    none where the store recorded none)."""
    group = open_run(store)
    index = _index_of(group, step, store)
    parameters = dict(model.named_parameters())
    recorded = _recorded_quantities(group)
    _refuse_normalisation_statistics(model)
    _refuse_another_model(parameters, recorded, store)
    names = {id(p): name for name, p in parameters.items()}
    state_keys, counts_steps = _state_layout(optimizer)
    optimized = {id(p) for g in optimizer.param_groups for p in g["params"]}
    thinned = set(group.attrs.get(contract.ROWS_ATTR, {}))
    values = {}
    for name, parameter in parameters.items():
        wanted = [contract.PARAM, *(state_keys if step > 0 and id(parameter) in optimized else [])]
        for quantity in wanted:
            values[name, quantity] = _value_at(recorded.get((name, quantity)), name, quantity, index, parameter, thinned, store)
    if scheduler is not None and scheduler.last_epoch != 0:
        raise ConfigError(f"the scheduler has taken {scheduler.last_epoch} steps; pass a fresh one (made with the "
                          "optimizer, not stepped): restore() steps it to the restored step")

    with torch.no_grad():
        for name, parameter in parameters.items():
            parameter.copy_(values[name, contract.PARAM])
            parameter.grad = None
    optimizer.load_state_dict(_optimizer_state(optimizer, names, values, state_keys, counts_steps, step))
    devices = {p.device.type for p in parameters.values()}
    random_states = _random_states_at(group, index)
    for device_type, state in random_states.items():
        if device_type == "cpu":
            torch.set_rng_state(state)
        elif device_type in devices:
            torch.get_device_module(device_type).set_rng_state(state)
    if scheduler is not None:
        with warnings.catch_warnings():  # ("lr_scheduler.step() before optimizer.step()": no step is being taken)
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(step):
                scheduler.step()
    return random_states


def _random_states_at(group: zarr.Group, index: int) -> dict[str, torch.Tensor]:
    """The generator states recorded at row ``index`` of the store (``{"cpu": ..., "cuda": ...}``,
    :mod:`zarrec.capture.random_state`); none where it recorded none (NaN: step 0)."""
    found = {}
    for name in group.array_keys():
        device_type = group[name].attrs.get(contract.GENERATOR_ATTR)
        if device_type is not None and not np.isnan(state := np.asarray(group[name][index])).any():
            found[device_type] = torch.from_numpy(state.astype(np.uint8))
    return found


def _index_of(group: zarr.Group, step: int, store: StoreLike) -> int:
    steps = committed_steps(group)
    found = np.flatnonzero(steps == step)
    if not found.size:
        schedule = group.attrs.get(contract.SCHEDULE_ATTR, 1)
        near = steps[np.argsort(np.abs(steps - step))[:2]] if steps.size else []
        raise ConfigError(
            f"{describe(store)} did not record step {step} (it records every={schedule}, steps {_span(steps)}); "
            f"restore at a recorded step{' such as ' + ' or '.join(map(str, sorted(near))) if len(near) else ''}"
        )
    return int(found[0])


def _span(steps: np.ndarray) -> str:
    return f"{steps[0]}..{steps[-1]}" if steps.size else "none yet"


def _recorded_quantities(group: zarr.Group) -> dict[tuple[str, str], zarr.Array]:
    """The store's arrays of each (parameter, quantity)."""
    found = {}
    for name in group.array_keys():
        array = group[name]
        param, quantity = array.attrs.get(contract.PARAM_ATTR), array.attrs.get(contract.QUANTITY_ATTR)
        if param is not None and quantity is not None:
            found[param, quantity] = array
    return found


def _refuse_another_model(parameters: Mapping[str, torch.nn.Parameter], recorded: Mapping[tuple[str, str], zarr.Array],
                          store: StoreLike) -> None:
    stored = {param for param, quantity in recorded if quantity == contract.PARAM}
    if extra := sorted(stored - set(parameters)):
        raise ConfigError(f"{describe(store)} recorded {', '.join(extra[:3])}{' ...' if len(extra) > 3 else ''}, which "
                          "the model has not: restore into a model built as the recorded one was")
    for name in sorted(stored):
        shape, model_shape = tuple(recorded[name, contract.PARAM].shape[1:]), tuple(parameters[name].shape)
        if shape[1:] != model_shape[1:] or len(shape) != len(model_shape):  # (the rows: rows= may have thinned them)
            raise ConfigError(f"{name} has shape {list(model_shape)} in the model and {list(shape)} in {describe(store)}: "
                              "restore into a model built as the recorded one was")


def _refuse_normalisation_statistics(model: torch.nn.Module) -> None:
    """Buffers that training changes (batch norm's running statistics) are not recorded."""
    for name, _ in model.named_buffers():
        if name.rpartition(".")[2] in ("running_mean", "running_var"):
            raise ConfigError(f"the model's buffer {name} changes in training and no store records it: "
                              "restore() restores parameters and optimizer state only")


def _state_layout(optimizer: torch.optim.Optimizer) -> tuple[list[str], bool]:
    """The tensors the optimizer keeps per parameter, and whether it counts its steps, found
    by one step of an optimizer of its class and hyperparameters on a parameter of one entry."""
    probe_parameter = torch.nn.Parameter(torch.zeros(1))
    probe_parameter.grad = torch.zeros(1)
    accepted = inspect.signature(type(optimizer)).parameters
    defaults = {key: value for key, value in optimizer.defaults.items()
                if key in accepted and key not in ("foreach", "fused", "capturable")}  # (the probe is a CPU tensor)
    probe = type(optimizer)([probe_parameter], **defaults)
    probe.step()
    state = probe.state[probe_parameter]
    for key, value in state.items():
        if key != "step" and not (isinstance(value, torch.Tensor) and value.ndim > 0):
            raise ConfigError(f"{type(optimizer).__name__} keeps {key!r} per parameter, which no store records; "
                              "restore() handles optimizers whose state is tensors and a step count (Adam, AdamW, SGD, ...)")
    return [key for key in state if key != "step"], "step" in state


def _value_at(array: zarr.Array | None, name: str, quantity: str, index: int, parameter: torch.nn.Parameter,
              thinned: set[str], store: StoreLike) -> torch.Tensor:
    what = name if quantity == contract.PARAM else f"{quantity!r} of {name}"
    if array is None:
        raise ConfigError(f"{describe(store)} did not record {what}; a store to restore from records every "
                          "parameter and its optimizer state (params='*', every quantity: --params '*')")
    if tuple(array.shape[1:]) != tuple(parameter.shape) or (array.metadata.dimension_names or (None, None))[1] in thinned:
        raise ConfigError(f"{describe(store)} recorded {name} at chosen rows only ({array.shape[1]} of {parameter.shape[0]}: "
                          "rows=); a store to restore from records every row")
    if array.attrs.get(contract.MANTISSA_BITS_ATTR) is not None:
        raise ConfigError(f"{describe(store)} rounded {name} to {array.attrs[contract.MANTISSA_BITS_ATTR]} mantissa bits "
                          "(mantissa_bits): the run cannot continue from rounded values; record without mantissa_bits")
    value = np.asarray(array[index])
    if np.isnan(value).any():
        raise ConfigError(f"{describe(store)} has no value of {what} at the step (NaN: that step did not update it); "
                          "restore at another step")
    return torch.from_numpy(value)


def _optimizer_state(optimizer: torch.optim.Optimizer, names: Mapping[int, str], values: Mapping[tuple[str, str], torch.Tensor],
                     state_keys: list[str], counts_steps: bool, step: int) -> dict:
    """The optimizer's ``state_dict()`` with the recorded state: its own param groups (their
    hyperparameters, changed or not), each parameter's tensors and step count ``step``."""
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    state = {}
    if step > 0:
        for number, parameter in enumerate(parameters):
            state[number] = {key: values[names[id(parameter)], key] for key in state_keys}
            if counts_steps:
                state[number]["step"] = torch.tensor(float(step))
    return {"state": state, "param_groups": optimizer.state_dict()["param_groups"]}
