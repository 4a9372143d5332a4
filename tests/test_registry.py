"""The loss registry: names, aliases, spec parsing and its errors."""

from __future__ import annotations

import pytest
import torch

from crossent import functional as CF
from crossent.registry import LOSSES, format_spec, get_loss, parse_loss_spec


def test_every_registered_loss_is_public_and_documented():
    import crossent

    for spec in LOSSES.values():
        for fn in (spec.logits, spec.probs):
            if fn is not None:
                assert getattr(crossent, fn.__name__) is fn
                assert ">>>" in fn.__doc__


@pytest.mark.parametrize(
    "text,name,options",
    [
        ("bce", "bce", {}),
        ("BCE_with_logits", "bce", {}),
        ("focal:gamma=2,alpha=0.25", "focal", {"gamma": 2, "alpha": 0.25}),
        ("focal:alpha=none", "focal", {"alpha": None}),
        ("asl:gamma_neg=4, clip=0.05", "asl", {"gamma_neg": 4, "clip": 0.05}),
        ("bce:pos_weight=auto", "bce", {"pos_weight": "auto"}),
        ("bce:reduction=sum,ignore_index=-1", "bce", {"reduction": "sum", "ignore_index": -1}),
    ],
)
def test_parse(text, name, options):
    spec, parsed = parse_loss_spec(text)
    assert spec.name == name
    assert parsed == options


def test_parse_list_value_becomes_tensor_and_round_trips():
    spec, options = parse_loss_spec("bce:pos_weight=[1, 2.5,3]")
    assert torch.equal(options["pos_weight"], torch.tensor([1.0, 2.5, 3.0]))
    assert format_spec(spec, options) == "bce:pos_weight=[1,2.5,3]"
    assert parse_loss_spec(format_spec(spec, options))[0] is spec


def test_unknown_loss_lists_known_names():
    with pytest.raises(ValueError, match=r"Unknown loss 'hinge'. Known losses: .*asl.*bce.*focal"):
        get_loss("hinge")


def test_unknown_option_lists_the_loss_options():
    with pytest.raises(
        ValueError, match=r"Unknown option 'gama' for loss 'focal'. Its options are: .*gamma"
    ):
        parse_loss_spec("focal:gama=2")


def test_option_without_value():
    with pytest.raises(ValueError, match=r"Expected `option=value`"):
        parse_loss_spec("focal:gamma")


def test_probability_forms():
    assert get_loss("bce").function(probs=True) is CF.binary_cross_entropy
    with pytest.raises(ValueError, match="no probability form"):
        get_loss("asl").function(probs=True)
