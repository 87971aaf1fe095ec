"""Parameter selection: glob patterns, quantities discovered from the optimizer's state, names and dims."""

from __future__ import annotations

import pytest
import torch
from transformers.optimization import Adafactor

from zarrec import ConfigError
from zarrec.capture.selection import ParameterSelection, select_parameters


class TinyLM(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(10, 4)
        self.hidden = torch.nn.Linear(4, 6)
        self.out = torch.nn.Linear(6, 10)

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.embed

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(self.embed(tokens))))


def stepped(optimizer_class, **kwargs) -> tuple[TinyLM, torch.optim.Optimizer]:
    """A model and its optimizer after one real step (optimizers create their state then)."""
    torch.manual_seed(0)
    model = TinyLM()
    optimizer = optimizer_class(model.parameters(), **kwargs)
    tokens = torch.arange(10)
    torch.nn.functional.cross_entropy(model(tokens), tokens).backward()
    optimizer.step()
    return model, optimizer


def test_patterns_select_in_model_order_and_unmatched_patterns_list_the_names():
    model = TinyLM()
    assert list(select_parameters(model.named_parameters(), ["out.*", "hidden.weight"])) == [
        "hidden.weight", "out.weight", "out.bias"]
    with pytest.raises(ConfigError, match=r"'attn\.\*' matches no parameter of the model; it has: embed.weight, "
                                          r"hidden.weight, hidden.bias, out.weight, out.bias"):
        select_parameters(model.named_parameters(), ["hidden.*", "attn.*"])


def test_default_is_the_input_embedding_under_the_contract_names():
    model, optimizer = stepped(torch.optim.AdamW, lr=1e-2)
    selection = ParameterSelection(model, optimizer)
    targets = {t.variable: t for t in selection.targets()}
    assert list(targets) == ["embeddings", "grads", "momentum", "variance"]
    assert {t.dims for t in targets.values()} == {("token", "dim")}
    assert targets["momentum"].attrs["quantity"] == "exp_avg" and targets["momentum"].param == "embed.weight"
    values = selection.values(selection.grads())
    assert values["momentum"] is optimizer.state[model.embed.weight]["exp_avg"]  # live: the recorder copies it
    assert torch.equal(values["grads"], model.embed.weight.grad)


def test_other_parameters_get_their_own_dims_and_adam_state_by_key():
    model, optimizer = stepped(torch.optim.AdamW, lr=1e-2)
    targets = ParameterSelection(model, optimizer, params=["hidden.*"]).targets()
    assert [(t.variable, t.dims) for t in targets] == [
        ("hidden.weight", ("hidden_weight_row", "hidden_weight_col")),
        ("hidden.weight.grad", ("hidden_weight_row", "hidden_weight_col")),
        ("hidden.weight.exp_avg", ("hidden_weight_row", "hidden_weight_col")),
        ("hidden.weight.exp_avg_sq", ("hidden_weight_row", "hidden_weight_col")),
        ("hidden.bias", ("hidden_bias_dim0",)),
        ("hidden.bias.grad", ("hidden_bias_dim0",)),
        ("hidden.bias.exp_avg", ("hidden_bias_dim0",)),
        ("hidden.bias.exp_avg_sq", ("hidden_bias_dim0",)),
    ]  # Adam's scalar step counter only when asked for


def test_factored_state_gets_its_own_dims_and_starts_at_zero():
    model, optimizer = stepped(Adafactor, lr=1e-2, relative_step=False, scale_parameter=False)
    selection = ParameterSelection(model, optimizer, params=["hidden.weight"])
    targets = {t.variable: t for t in selection.targets()}
    assert list(targets) == ["hidden.weight", "hidden.weight.grad", "hidden.weight.exp_avg_sq_row",
                             "hidden.weight.exp_avg_sq_col"]
    assert targets["hidden.weight.exp_avg_sq_row"].dims == ("hidden_weight_exp_avg_sq_row_dim0",)
    initial = selection.initial_values(selection.snapshot())
    assert initial["hidden.weight.exp_avg_sq_row"].shape == (6,) and not initial["hidden.weight.exp_avg_sq_row"].any()
    assert initial["hidden.weight.grad"].isnan().all()


def test_quantities_asked_for_are_recorded_scalars_included():
    model, optimizer = stepped(torch.optim.AdamW, lr=1e-2)
    selection = ParameterSelection(model, optimizer, params=["out.bias"], quantities=["param", "step", "exp_avg"])
    assert [(t.variable, t.dims) for t in selection.targets()] == [
        ("out.bias", ("out_bias_dim0",)), ("out.bias.step", ()), ("out.bias.exp_avg", ("out_bias_dim0",))]
    assert float(selection.values({})["out.bias.step"]) == 1


def test_state_the_optimizer_does_not_keep_is_refused_naming_what_it_keeps():
    model, optimizer = stepped(torch.optim.SGD, lr=1e-2, momentum=0.9)
    selection = ParameterSelection(model, optimizer, quantities=["grad", "exp_avg"])
    with pytest.raises(ConfigError, match="SGD keeps no 'exp_avg' for embed.weight; its state holds 'momentum_buffer'"):
        selection.targets()


def test_a_frozen_parameter_records_only_its_value_unless_more_is_asked():
    model = TinyLM()
    model.embed.weight.requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    assert [t.variable for t in ParameterSelection(model, optimizer).targets()] == ["embeddings"]
    with pytest.raises(ConfigError, match="embed.weight is not trained by the optimizer, so grad cannot be recorded"):
        ParameterSelection(model, optimizer, quantities=["param", "grad"])


def test_a_model_without_an_input_embedding_needs_params():
    model = torch.nn.Linear(3, 2)
    with pytest.raises(ConfigError, match="Linear has no input embedding"):
        ParameterSelection(model, torch.optim.SGD(model.parameters(), lr=0.1))
    assert ParameterSelection(model, torch.optim.SGD(model.parameters(), lr=0.1), params=["weight"]).names == ["weight"]
