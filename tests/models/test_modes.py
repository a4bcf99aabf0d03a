"""Honest modes (issue 14, item 6): a module the user hands in is put in eval mode only when that
changes what it computes, and then with a ModuleModeWarning; otherwise it stays as it was."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from face_concepts import FACE, split_model
from face_concepts.activations.extract import extract_activations
from face_concepts.models import ModelSplit
from face_concepts.models.modes import ModuleModeWarning, ensure_eval, mode_dependent


class ReadsTraining(nn.Module):
    """A user's layer that reads ``self.training`` itself (like timm's DropPath)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 if self.training else x


class Plain(nn.Module):
    """A user's container whose forward never reads ``training``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x))


def _split(net: nn.Sequential) -> ModelSplit:
    """Split after the ReLU (index ``len(net) - 4``): global pool, flatten, linear head."""
    return split_model(net, str(len(net) - 4), input_size=8)


def _net(*middle: nn.Module) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), *middle, nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3),
    )  # fmt: skip


def _training_flags(module: nn.Module) -> list[bool]:
    return [m.training for m in module.modules()]


def test_mode_dependent_layers_are_found_by_what_their_forward_reads():
    net = nn.Sequential(
        nn.Linear(2, 2), nn.Dropout(0.1), nn.BatchNorm1d(2), nn.LSTM(2, 2), ReadsTraining(),
        Plain(), nn.ReLU(),
    )  # fmt: skip
    assert mode_dependent(net) == ["1", "2", "3", "4"]
    assert mode_dependent(net.eval()) == []
    assert mode_dependent(nn.Linear(2, 2)) == [] and mode_dependent(lambda x: x) == []


def test_split_model_leaves_a_model_whose_modes_change_nothing_in_training_mode():
    net = _net()  # Conv, ReLU, pool, Linear: the same function in both modes
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        split = _split(net)
        extract_activations(split, torch.rand(2, 3, 8, 8), progress=False)
    assert all(_training_flags(net))  # the user's flags, untouched
    assert split.training is False


@pytest.mark.parametrize("layer", [nn.BatchNorm2d(4), nn.Dropout(0.5), ReadsTraining()])
def test_split_model_says_when_it_puts_the_model_in_eval_mode(layer):
    net = _net(layer)
    with pytest.warns(ModuleModeWarning, match=r"the model given to split_model was in training "
                      r"mode, where layers 1 compute.*now in eval mode.*call \.eval\(\)"):  # fmt: skip
        split = _split(net)
    assert not any(_training_flags(net))
    # a user who calls .train() again is told again when extraction switches it back
    net.train()
    with pytest.warns(ModuleModeWarning, match="the model split was in training mode"):
        extract_activations(split, torch.rand(2, 3, 8, 8), progress=False)
    assert not net.training and not layer.training


def test_model_split_constructor_says_so_too():
    net = _net(nn.BatchNorm2d(4))
    features, head = net[:3], net[5:]
    with pytest.warns(ModuleModeWarning, match="a module given to ModelSplit"):
        ModelSplit(features, head, model=net, input_size=8)
    assert not net.training
    quiet = _net()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ModelSplit(quiet[:3], quiet[5:], model=quiet, input_size=8)
    assert all(_training_flags(quiet))


def test_face_says_when_it_puts_a_head_in_eval_mode():
    torch.manual_seed(0)
    A = torch.rand(12, 4)
    head = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Dropout(0.3), nn.Linear(5, 3))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        FACE(head, 2, kl_weight=0.5, max_iter=3, random_state=0).fit(A)
    modes = [w for w in seen if issubclass(w.category, ModuleModeWarning)]
    assert len(modes) == 1 and "the head was in training mode" in str(modes[0].message)
    assert modes[0].filename == __file__  # it points at the user's line
    assert not head.training
    # a non-affine head without dropout keeps its training flags, and nothing is said
    plain = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        FACE(plain, 2, kl_weight=0.5, max_iter=3, random_state=0).fit(A)
    assert not [w for w in seen if issubclass(w.category, ModuleModeWarning)]
    assert all(_training_flags(plain))


def test_ensure_eval_counts_the_layers_it_names():
    net = nn.Sequential(*[nn.Dropout(0.1) for _ in range(5)])
    with pytest.warns(ModuleModeWarning, match=r"layers 0, 1, 2 and 2 more compute"):
        assert ensure_eval(net, "the net") is True
    assert ensure_eval(net, "the net") is False  # already in eval mode: nothing to say
