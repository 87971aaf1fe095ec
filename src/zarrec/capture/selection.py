"""What to record of a model: parameters chosen by glob patterns, and quantities of each.

A quantity is the parameter itself (``"param"``), its gradient (``"grad"``), or any tensor
the optimizer keeps per parameter, found by its state key: AdamW's ``exp_avg`` and
``exp_avg_sq``, SGD's ``momentum_buffer``, Adafactor's factored ``exp_avg_sq_row`` and
``exp_avg_sq_col``. Optimizers create their state lazily, so the state is looked up after
the first optimizer step (:meth:`ParameterSelection.targets`). A parameter may be recorded
at chosen rows only (``rows``: token ids of an embedding, say), gathered on its device.
Framework-free: the HF callback and a plain PyTorch loop use it alike.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from zarrec.capture.attributes import group_hyperparameters
from zarrec.errors import ConfigError
from zarrec.record.ranks import chosen_split, even_split, is_dtensor, rows_part
from zarrec.store import contract


@dataclass(frozen=True)
class Target:
    """One recorded variable: a quantity of a parameter, with its store name and dims."""

    variable: str
    param: str
    quantity: str
    dims: tuple[str, ...]
    optimizer: str = ""
    hyperparameters: Mapping[str, object] = field(default_factory=dict, compare=False)
    at_rows: bool = False  # recorded at the parameter's chosen rows only

    @property
    def attrs(self) -> dict[str, object]:
        return {
            contract.PARAM_ATTR: self.param,
            contract.QUANTITY_ATTR: self.quantity,
            "description": contract.DESCRIPTIONS.get(self.variable, contract.describe_quantity(self.param, self.quantity)),
            contract.OPTIMIZER_ATTR: self.optimizer,
            contract.HYPERPARAMETERS_ATTR: dict(self.hyperparameters),
        }


def select_parameters(named: Iterable[tuple[str, torch.nn.Parameter]], patterns: Sequence[str]) -> dict[str, torch.nn.Parameter]:
    """The parameters whose names match any of the glob ``patterns`` (``fnmatch``), in model order;
    a pattern that matches nothing is an error listing the names there are."""
    named = dict(named)
    selected = {name: p for name, p in named.items() if any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)}
    unmatched = [pattern for pattern in patterns if not any(fnmatch.fnmatchcase(name, pattern) for name in named)]
    if unmatched:
        raise ConfigError(
            f"parameter selection {', '.join(map(repr, unmatched))} matches no parameter of the model; "
            f"it has: {', '.join(named) or 'no parameters'} (glob patterns, e.g. '*.attn.*')"
        )
    return selected


class ParameterSelection:
    """The parameters and quantities to record of ``model`` trained by ``optimizer``.

    Args:
        model: the module being trained (its ``named_parameters()`` are selected from).
        optimizer: its optimizer (an accelerate wrapper is unwrapped).
        params: glob patterns over parameter names; default: the input embedding
            (``model.get_input_embeddings()``), recorded under the contract's names.
        quantities: ``"param"``, ``"grad"`` and optimizer-state keys; default: the parameter,
            its gradient and every tensor the optimizer keeps for it (scalars such as Adam's
            ``step`` counter only when asked for). A quantity the optimizer does not keep is
            an error naming what it keeps.
        rows: record only these rows (first-dim indices: token ids of an embedding) of the
            input embedding (ids or a ``slice``), or of each parameter named (``{glob: ids}``);
            its quantities of the parameter's shape are gathered at them, its row dim's index
            coordinate holds them (sorted), so ``.sel(token=t)`` still means token t.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        params: Sequence[str] | None = None,
        quantities: Sequence[str] | None = None,
        rows: Sequence[int] | slice | Mapping[str, Sequence[int] | slice] | None = None,
    ) -> None:
        self.optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the optimizer
        embedding = input_embedding(model)
        if params is None:
            if embedding is None:
                raise ConfigError(
                    f"{type(model).__name__} has no input embedding (get_input_embeddings()) to record by default; "
                    "choose parameters by name with params=[...] (--params)"
                )
            params = [name for name, p in model.named_parameters() if p is embedding]
        self.parameters = select_parameters(model.named_parameters(), params)
        self.quantities = None if quantities is None else tuple(dict.fromkeys(quantities))
        self.embedding_name = next((name for name, p in self.parameters.items() if p is embedding), None)
        groups = {id(p): group for group in self.optimizer.param_groups for p in group["params"]}
        self._trained = {name: id(p) in groups for name, p in self.parameters.items()}
        asked_to_train = [q for q in self.quantities or () if q != contract.PARAM]
        untrained = [name for name, trained in self._trained.items() if not trained]
        if asked_to_train and untrained:
            raise ConfigError(
                f"{', '.join(untrained)} {'is' if len(untrained) == 1 else 'are'} not trained by the optimizer, so "
                f"{', '.join(asked_to_train)} cannot be recorded for it; unfreeze it or record quantities=['param']"
            )
        first_trained = next((p for p in self.parameters.values() if id(p) in groups), None)
        self.group = groups[id(first_trained)] if first_trained is not None else self.optimizer.param_groups[0]
        self._groups = {name: groups.get(id(p)) for name, p in self.parameters.items()}
        self.rows = self._chosen_rows(rows)
        # Of a sharded parameter (FSDP2) each rank records the chosen rows among its own:
        # their ids in its local part, and where the ranks split the chosen rows.
        self.own_chosen = {name: own_chosen_rows(self.parameters[name], ids) for name, ids in self.rows.items()
                           if is_dtensor(self.parameters[name])}
        self._targets: list[Target] | None = None
        # Whether the store will hold what zarrec.restore needs: every parameter, quantity and row.
        self.restorable = len(self.parameters) == len(dict(model.named_parameters())) and self.quantities is None and not self.rows

    @property
    def names(self) -> list[str]:
        return list(self.parameters)

    def dims(self, name: str) -> tuple[str, ...]:
        """The dims of parameter ``name`` (and of its gradient and same-shaped state)."""
        return contract.parameter_dims(name, self.parameters[name].ndim, name == self.embedding_name)

    def splits(self) -> dict[str, tuple[int, ...]]:
        """Each variable recorded at the chosen rows of a sharded parameter: where the ranks
        split those rows (:meth:`zarrec.Recorder.split_rows`)."""
        return {target.variable: self.own_chosen[target.param][1] for target in self.targets()
                if target.at_rows and target.param in self.own_chosen}

    def row_coords(self) -> dict[str, tuple[str, np.ndarray]]:
        """The index coordinate of each row dim recorded at chosen rows: the chosen ids."""
        return {self.dims(name)[0]: (self.dims(name)[0], ids.cpu().numpy()) for name, ids in self.rows.items()}

    def rows_of(self) -> dict[str, int]:
        """For each row dim recorded at chosen rows, the parameter's number of rows (a run attribute)."""
        return {self.dims(name)[0]: self.parameters[name].shape[0] for name in self.rows}

    @property
    def dtype(self) -> torch.dtype:
        """The recorded parameters' dtype (with none recorded, the optimizer's first parameter's)."""
        first = next(iter(self.parameters.values()), None)
        return (first if first is not None else self.optimizer.param_groups[0]["params"][0]).dtype

    def wants_grads(self) -> bool:
        return self.quantities is None or contract.GRAD in self.quantities

    def grads(self) -> dict[str, torch.Tensor | None]:
        """Each selected gradient as the optimizer is about to use it (None where a parameter has
        none this step): the live tensor when the optimizer's step leaves gradients as they are
        (:data:`_LEAVES_GRADIENTS`), else a device copy."""
        leaves = type(self.optimizer) in _LEAVES_GRADIENTS and not any(g.get("fused") for g in self.optimizer.param_groups)
        return {
            name: (p.grad.detach() if leaves else p.grad.detach().clone()) if p.grad is not None else None
            for name, p in self.parameters.items()
            if self._trained[name]
        }

    def snapshot(self) -> dict[str, torch.Tensor]:
        """A device copy of each selected parameter (the initial state, kept for step 0)."""
        return {name: p.detach().clone() for name, p in self.parameters.items()}

    def targets(self) -> list[Target]:
        """The recorded variables, fixed at the first call, which must come after the first
        optimizer step: the optimizer's state says then what it keeps per parameter."""
        if self._targets is None:
            self._targets = [target for name in self.parameters for target in self._targets_of(name)]
        return self._targets

    def initial_values(self, snapshot: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Step 0: the parameters as they were before training, no gradient (NaN) and the
        optimizer state as it starts (zeros); the constants as one value expanded to the shape
        (no memory: a GPT-2 embedding's NaN gradient and zero moments would be 462 MB)."""
        values = {}
        for target in self.targets():
            parameter = snapshot[target.param]
            if target.quantity == contract.PARAM:
                value = parameter
            elif target.quantity == contract.GRAD:
                value = _constant(float("nan"), parameter)
            else:
                value = _constant(0.0, self._state(target.param)[target.quantity])
            values[target.variable] = self._at_rows(target, value)
        return values

    def values(self, grads: Mapping[str, torch.Tensor | None]) -> dict[str, torch.Tensor]:
        """The recorded quantities after an optimizer step (live tensors: the recorder copies them).
        A missing gradient or state (a parameter the step did not update) is left out: NaN."""
        values = {}
        for target in self.targets():
            if target.quantity == contract.PARAM:
                value = self.parameters[target.param]
            elif target.quantity == contract.GRAD:
                value = grads.get(target.param)
            else:
                value = self._state(target.param).get(target.quantity)
            if value is not None:
                values[target.variable] = self._at_rows(target, value)
        return values

    def _at_rows(self, target: Target, value: torch.Tensor) -> torch.Tensor:
        return self.at_rows(target.param, value) if target.at_rows else value

    def at_rows(self, name: str, value: torch.Tensor) -> torch.Tensor:
        """``value`` (of parameter ``name``'s shape) at its chosen rows, gathered on its device;
        all of it when no rows are chosen. Of a sharded parameter: this rank's part of them."""
        if name in self.own_chosen:
            ids, bounds = self.own_chosen[name]
            return rows_part(value.detach().to_local().index_select(0, ids), value, bounds[-1])
        return value.detach().index_select(0, self.rows[name]) if name in self.rows else value.detach()

    def _chosen_rows(self, rows) -> dict[str, torch.Tensor]:
        """``rows`` as sorted unique ids per selected parameter, on its device; refused with the fix."""
        if rows is None:
            return {}
        if not isinstance(rows, Mapping):
            if self.embedding_name is None:
                raise ConfigError(
                    "rows=[...] chooses rows of the input embedding, which is not recorded; "
                    "name the parameter: rows={'<parameter name or glob>': ids}"
                )
            rows = {self.embedding_name: rows}
        chosen = {}
        for pattern, ids in rows.items():
            names = [name for name in self.parameters if fnmatch.fnmatchcase(name, pattern)]
            if not names:
                raise ConfigError(f"rows={{{pattern!r}: ...}} names no recorded parameter; recorded are {', '.join(self.parameters)}")
            for name in names:
                parameter = self.parameters[name]
                count = parameter.shape[0] if parameter.ndim else 0
                index = np.arange(count)[ids] if isinstance(ids, slice) else np.asarray(ids)
                if index.ndim != 1 or index.size == 0 or index.dtype.kind not in "iu" or not (
                    (0 <= index).all() and (index < count).all()
                ):
                    raise ConfigError(
                        f"rows of {name} must be a non-empty list of row ids in 0..{count - 1} (or a slice), got {ids!r:.80}"
                    )
                chosen[name] = torch.from_numpy(np.unique(index).astype(np.int64)).to(parameter.device)
        return chosen

    def _state(self, name: str) -> Mapping[str, object]:
        return self.optimizer.state.get(self.parameters[name], {})

    def _targets_of(self, name: str) -> list[Target]:
        parameter = self.parameters[name]
        embedding = name == self.embedding_name
        dims = self.dims(name)
        state = {key: value for key, value in self._state(name).items() if isinstance(value, torch.Tensor)}
        if self.quantities is None:
            kept = [key for key, value in state.items() if value.ndim > 0]
            quantities = [contract.PARAM, *([contract.GRAD] if self._trained[name] else []), *kept]
        else:
            missing = [q for q in self.quantities if q not in (contract.PARAM, contract.GRAD) and q not in state]
            if missing:
                raise ConfigError(
                    f"{type(self.optimizer).__name__} keeps no {', '.join(map(repr, missing))} for {name}; its state "
                    f"holds {', '.join(map(repr, state)) or 'nothing'}: record quantities from 'param', 'grad' and those"
                )
            quantities = list(self.quantities)
        targets = []
        optimizer, hyperparameters = type(self.optimizer).__name__, self._hyperparameters(name)
        for quantity in quantities:
            variable = contract.variable_name(name, quantity, embedding)
            shape = state[quantity].shape if quantity in state else parameter.shape
            same_shape = tuple(shape) == tuple(parameter.shape)
            variable_dims = dims if same_shape else contract.dims_of(variable, len(shape))
            at_rows = same_shape and name in self.rows
            targets.append(Target(variable, name, quantity, variable_dims, optimizer, hyperparameters, at_rows))
        return targets

    def _hyperparameters(self, name: str) -> dict[str, object]:
        """The hyperparameters of ``name``'s param group as JSON values (numbers, flags, lists),
        its learning rate as :data:`~zarrec.store.contract.LR_RATIO` to the recorded ``lr``."""
        group = self._groups[name]
        if group is None:
            return {}
        kept = group_hyperparameters(group)
        if isinstance(group.get("lr"), (int, float)) and self.group.get("lr"):
            kept[contract.LR_RATIO] = group["lr"] / self.group["lr"]
        return kept


def _constant(value: float, like: torch.Tensor) -> torch.Tensor:
    """``value`` in the shape, dtype and device of ``like``, as a stride-0 view of one element
    (of a DTensor: one like it, each rank holding its rows, so it is recorded as its rows are)."""
    if is_dtensor(like):
        return torch.full_like(like, value)
    return torch.full((), value, dtype=like.dtype, device=like.device).expand(like.shape)


# Optimizers whose step reads the gradients and never writes them (their single-tensor and
# foreach implementations; a fused one may unscale them in place): a gradient is recorded
# from the live tensor, without a device copy (154 MB for a GPT-2 embedding).
_LEAVES_GRADIENTS = (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD)


def own_chosen_rows(parameter: torch.Tensor, chosen: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Of a parameter sharded on its rows over the ranks (FSDP2's even split), the ``chosen``
    rows (ascending ids) this rank holds, as ids in its local part, and where the ranks split
    the chosen rows (:func:`~zarrec.record.ranks.chosen_split`)."""
    world, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
    rows = even_split(parameter.shape[0], world)
    bounds = chosen_split(chosen.cpu().numpy(), rows)
    return chosen[bounds[rank]:bounds[rank + 1]] - rows[rank], bounds


def input_embedding(model: torch.nn.Module) -> torch.nn.Parameter | None:
    get = getattr(model, "get_input_embeddings", None)
    try:
        module = get() if get is not None else None
    except NotImplementedError:
        return None
    return getattr(module, "weight", None)
