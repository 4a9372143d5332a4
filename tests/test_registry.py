"""The loss registry: names, aliases, spec parsing and its errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

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
        ("ce", "ce", {}),
        ("cross_entropy:label_smoothing=0.1", "ce", {"label_smoothing": 0.1}),
        ("CrossEntropy:ignore_index=none", "ce", {"ignore_index": None}),
        ("softmax_focal:gamma=2", "softmax_focal", {"gamma": 2}),
        ("softmax_focal_loss:alpha=0.5", "softmax_focal", {"alpha": 0.5}),
        ("poly1:epsilon=2", "poly1", {"epsilon": 2}),
        ("poly1_cross_entropy:epsilon=-1", "poly1", {"epsilon": -1}),
        ("poly1_focal:epsilon=-1,gamma=2", "poly1_focal", {"epsilon": -1, "gamma": 2}),
        ("poly-focal-loss", "poly1_focal", {}),
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


@pytest.mark.parametrize(
    "name,family,logits,torch_logits,extra",
    [
        ("ce", "softmax", CF.cross_entropy, F.cross_entropy, {}),
        ("softmax_focal", "softmax", CF.softmax_focal_loss, None, {"gamma": 2.0, "alpha": None}),
        ("poly1", "softmax", CF.poly1_cross_entropy, None, {"epsilon": 1.0}),
        ("poly1_focal", "binary", CF.poly1_focal_loss, None, {"epsilon": 1.0, "alpha": 0.25}),
    ],
)
def test_softmax_family_and_poly_focal_are_registered(name, family, logits, torch_logits, extra):
    spec = get_loss(name)
    assert spec.family == family
    assert spec.function() is logits
    assert spec.torch_function() is torch_logits
    options = spec.options()
    common = (
        {"ignore_index": -100, "label_smoothing": 0.0}
        if family == "softmax"
        else {"ignore_index": None, "pos_weight": None}
    )
    for key, default in {**common, **extra, "weight": None, "reduction": "mean"}.items():
        assert options[key] == default, key


def test_softmax_spec_with_a_per_class_alpha_round_trips():
    spec, options = parse_loss_spec("softmax_focal:gamma=2,alpha=[0.25,0.5,1]")
    assert torch.equal(options["alpha"], torch.tensor([0.25, 0.5, 1.0]))
    assert format_spec(spec, options) == "softmax_focal:gamma=2,alpha=[0.25,0.5,1]"
    x, t = torch.randn(4, 3), torch.tensor([0, 1, 2, 1])
    assert torch.isfinite(spec.function()(x, t, **options))


def test_every_softmax_loss_equals_torch_where_torch_has_it():
    x, t = torch.randn(6, 4), torch.tensor([0, 3, -100, 1, 2, 2])
    for spec in LOSSES.values():
        if spec.family == "softmax" and spec.torch_logits is not None:
            torch.testing.assert_close(spec.function()(x, t), spec.torch_function()(x, t))
