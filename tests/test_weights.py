"""Class-weight tools: pos_weight, class_weights, class_counts."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

import crossent
from crossent import functional as CF
from crossent.weights import class_counts, class_weights, pos_weight
from tests._helpers import assert_close

# --------------------------------------------------------------------------------------------
# pos_weight
# --------------------------------------------------------------------------------------------


def test_pos_weight_is_negatives_over_positives():
    target = (torch.rand(200, 6) < torch.linspace(0.05, 0.6, 6)).float()
    positives = target.sum(0)
    expected = (200 - positives) / positives
    assert_close(pos_weight(target), expected)
    assert pos_weight(target).dtype == torch.get_default_dtype()


def test_pos_weight_balances_the_total_positive_and_negative_weight():
    target = (torch.rand(300, 4) < torch.tensor([0.02, 0.1, 0.3, 0.5])).double()
    pw = pos_weight(target).double()
    # pos_weight is returned in float32: the balance holds to float32 precision
    assert_close((target * pw).sum(0), (1 - target).sum(0), dtype=torch.float32)


def test_pos_weight_accepts_int_bool_and_soft_targets():
    target = (torch.rand(50, 3) < 0.3).float()
    expected = pos_weight(target)
    assert torch.equal(pos_weight(target.long()), expected)
    assert torch.equal(pos_weight(target.bool()), expected)
    soft = torch.tensor([[0.5, 1.0], [0.25, 0.0], [0.0, 1.0]])
    # positives 0.75 and 2, negatives 2.25 and 1
    assert_close(pos_weight(soft), torch.tensor([3.0, 0.5]))


def test_pos_weight_for_masks_over_several_dims():
    target = (torch.rand(4, 3, 5, 5) < 0.2).float()
    pw = pos_weight(target, dim=(0, 2, 3))
    assert pw.shape == (3,)
    flat = target.movedim(1, -1).reshape(-1, 3)
    assert_close(pw, pos_weight(flat))
    # documented use: (C, 1, 1) for an (N, C, H, W) input
    loss = CF.binary_cross_entropy_with_logits(
        torch.randn(4, 3, 5, 5), target, pos_weight=pw.view(3, 1, 1)
    )
    assert torch.isfinite(loss)
    with pytest.warns(UserWarning, match="no positive or no negative"):  # 5 pixels per row
        assert pos_weight(target, dim=-1).shape == (4, 3, 5)


def test_pos_weight_ignore_index():
    target = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, -1.0], [0.0, 1.0]])
    # label 0: 1 positive, 2 negatives (one ignored); label 1: 1 positive, 2 negatives
    assert_close(pos_weight(target, ignore_index=-1), torch.tensor([2.0, 2.0]))


def test_label_without_positives_warns_and_gets_a_finite_weight():
    target = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 0.0, 1.0]])
    with pytest.warns(UserWarning, match=r"label\(s\) 1, 2 have no positive or no negative"):
        pw = pos_weight(target)
    assert torch.isfinite(pw).all()
    assert_close(pw, torch.tensor([0.5, 1.0, 1.0]))


def test_pos_weight_errors():
    with pytest.raises(ValueError, match=r"Expected `target` to hold multi-hot or binary targets "):
        pos_weight(torch.tensor([[0.0, 2.0]]))
    with pytest.raises(ValueError, match=r"Expected `dim` to be a dimension of a target with 2 "):
        pos_weight(torch.zeros(3, 2), dim=2)
    with pytest.raises(ValueError, match=r"Expected `target` to have a sample dimension"):
        pos_weight(torch.tensor(1.0))
    with pytest.raises(TypeError, match=r"Expected `target` to be a torch.Tensor, but got list"):
        pos_weight([[0, 1]])


# --------------------------------------------------------------------------------------------
# class_weights
# --------------------------------------------------------------------------------------------

COUNTS = [5000.0, 800.0, 120.0, 7.0, 1.0]


def _normalise(u):
    u = torch.tensor(u, dtype=torch.float64)
    return (u * len(u) / u.sum()).float()


@pytest.mark.parametrize(
    "method,formula",
    [
        ("inverse_freq", lambda n, b: 1 / n),
        ("inverse_sqrt_freq", lambda n, b: 1 / math.sqrt(n)),
        ("effective_num", lambda n, b: (1 - b) / (1 - b**n)),
    ],
)
@pytest.mark.parametrize("beta", [0.9, 0.99, 0.999, 0.9999])
def test_class_weights_follow_their_formula_and_sum_to_C(method, formula, beta):
    w = class_weights(torch.tensor(COUNTS), method=method, beta=beta)
    assert_close(w, _normalise([formula(n, beta) for n in COUNTS]))
    assert_close(w.sum(), torch.tensor(5.0))
    assert (w[:-1] <= w[1:]).all()  # rarer classes weigh more


def test_effective_number_interpolates_between_uniform_and_inverse_frequency():
    counts = torch.tensor(COUNTS)
    assert_close(class_weights(counts, beta=0.0), torch.ones(5))
    near_one = class_weights(counts, beta=1 - 1e-12)
    torch.testing.assert_close(
        near_one, class_weights(counts, method="inverse_freq"), rtol=1e-5, atol=0
    )


def test_class_weights_accept_sequences_and_class_counts_output():
    t = torch.tensor([0, 0, 0, 1, 2, 2])
    assert torch.equal(class_weights(class_counts(t)), class_weights([3, 1, 2]))


def test_zero_counts_get_the_rarest_observed_weight_with_a_warning():
    for method in ("inverse_freq", "inverse_sqrt_freq", "effective_num"):
        with pytest.warns(UserWarning, match=r"class\(es\) 1, 3 have a count of 0"):
            w = class_weights(torch.tensor([100, 0, 10, 0]), method=method)
        assert torch.isfinite(w).all()
        assert w[1] == w[3] == w[2] == w.max()
        assert_close(w.sum(), torch.tensor(4.0))
    with pytest.warns(UserWarning, match="every count is 0"):
        assert torch.equal(class_weights(torch.zeros(3)), torch.ones(3))


def test_class_weights_errors():
    with pytest.raises(ValueError, match=r"Expected `method` to be one of .*, but got 'balanced'"):
        class_weights([1, 2], method="balanced")
    with pytest.raises(ValueError, match=r"Expected `beta` to be < 1.0, but got 1.0"):
        class_weights([1, 2], beta=1.0)
    with pytest.raises(
        ValueError, match=r"Expected `counts` to be finite and >= 0, but it holds -1.0"
    ):
        class_weights([3, -1])
    with pytest.raises(ValueError, match=r"Expected `counts` to have size \(C,\)"):
        class_weights(torch.ones(2, 2))
    with pytest.raises(TypeError, match=r"Expected `counts` to be a tensor or a sequence"):
        class_weights("abc")


# --------------------------------------------------------------------------------------------
# class_counts
# --------------------------------------------------------------------------------------------


def test_class_counts_of_indices_skip_ignore_index():
    t = torch.tensor([[0, 2, -100], [2, 2, 1]])
    assert torch.equal(class_counts(t), torch.tensor([1, 1, 3]))
    assert torch.equal(class_counts(t, 5), torch.tensor([1, 1, 3, 0, 0]))
    assert torch.equal(
        class_counts(torch.tensor([0, -1, 1]), ignore_index=-1), torch.tensor([1, 1])
    )


def test_class_counts_agree_across_target_forms():
    t = torch.randint(0, 4, (3, 5, 5))
    one_hot = F.one_hot(t, 4).movedim(-1, 1)  # (N, C, H, W), class dimension 1
    expected = torch.bincount(t.flatten(), minlength=4)
    assert torch.equal(class_counts(t, 4), expected)
    assert torch.equal(class_counts(one_hot.bool()), expected)
    assert torch.equal(class_counts(one_hot.float()), expected.double())
    multi_hot = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    assert torch.equal(class_counts(multi_hot), torch.tensor([2.0, 1.0, 3.0], dtype=torch.float64))
    soft = torch.tensor([[0.5, 0.5], [0.25, 0.75]])
    assert_close(class_counts(soft), torch.tensor([0.75, 1.25], dtype=torch.float64))
    assert torch.equal(
        class_counts(torch.tensor([0.0, 1.0, 1.0])),
        torch.tensor([0.0, 1.0, 1.0], dtype=torch.float64),
    )


def test_class_counts_errors():
    with pytest.raises(
        ValueError,
        match=r"Expected `target` to hold class indices in \[0, 2\] or equal to `ignore_index` \(-100\), but it holds 3.",
    ):
        class_counts(torch.tensor([0, 3, 1]), num_classes=3)
    with pytest.raises(
        ValueError, match=r"class indices >= 0 or equal to `ignore_index` \(-100\), but it holds -2"
    ):
        class_counts(torch.tensor([0, -2]))
    with pytest.raises(
        ValueError,
        match=r"Expected `num_classes` to equal the size of the target's class dimension 1 \(3\), but got 4",
    ):
        class_counts(torch.zeros(2, 3), num_classes=4)
    with pytest.raises(ValueError, match=r"Expected `num_classes` to be an int >= 1"):
        class_counts(torch.tensor([0, 1]), num_classes=0)


def test_weights_feed_the_losses():
    t = torch.randint(0, 3, (40,))
    t[:30] = 0
    w = crossent.class_weights(crossent.class_counts(t, 3), method="inverse_freq")
    x = torch.randn(40, 3)
    assert_close(crossent.cross_entropy(x, t, weight=w), F.cross_entropy(x, t, weight=w))
    assert torch.isfinite(crossent.softmax_focal_loss(x, t, alpha=w))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no degenerate label here
        crossent.pos_weight(F.one_hot(t, 3).float())
