import math

import pytest
import torch

from landslide.losses import focal_loss


def hand_focal(logit: float, y: float, alpha: float, gamma: float) -> float:
    p = 1 / (1 + math.exp(-logit))
    ce = -(y * math.log(p) + (1 - y) * math.log(1 - p))
    p_t = p * y + (1 - p) * (1 - y)
    a_t = alpha * y + (1 - alpha) * (1 - y)
    return a_t * (1 - p_t) ** gamma * ce


@pytest.mark.parametrize("logit,y", [(2.0, 1.0), (2.0, 0.0), (-1.5, 1.0), (0.3, 0.0), (0.7, 0.4)])
def test_matches_hand_computation(logit, y):
    got = focal_loss(torch.tensor([logit]), torch.tensor([y]), alpha=0.25, gamma=2.0)
    assert got.item() == pytest.approx(hand_focal(logit, y, 0.25, 2.0), rel=1e-5)


def test_mean_reduction_and_gamma_zero_is_weighted_bce():
    logits, y = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([1.0, 0.0, 0.0])
    ref = sum(hand_focal(a, b, 0.25, 2.0) for a, b in zip(logits.tolist(), y.tolist())) / 3
    assert focal_loss(logits, y).item() == pytest.approx(ref, rel=1e-5)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, y)
    assert focal_loss(logits, y, alpha=-1, gamma=0).item() == pytest.approx(bce.item(), rel=1e-6)


def test_reductions_sum_and_none_and_a_wrong_one():
    logits, y = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([1.0, 0.0, 0.3])
    each = [hand_focal(a, b, 0.25, 2.0) for a, b in zip(logits.tolist(), y.tolist())]
    assert focal_loss(logits, y, reduction="none").tolist() == pytest.approx(each, rel=1e-5)
    assert focal_loss(logits, y, reduction="sum").item() == pytest.approx(sum(each), rel=1e-5)
    with pytest.raises(ValueError, match="reduction 'avg'"):
        focal_loss(logits, y, reduction="avg")


def test_alpha_zero_weights_only_the_negatives():
    """``alpha = 0`` is a class weight (positives x 0, negatives x 1), not "weighting off" (that is alpha < 0)."""
    logits, y = torch.tensor([-1.0, 1.0]), torch.tensor([1.0, 0.0])
    loss = focal_loss(logits, y, alpha=0.0, reduction="none")
    assert loss[0].item() == 0.0
    assert loss[1].item() == pytest.approx(hand_focal(1.0, 0.0, 0.0, 2.0), rel=1e-5) and loss[1].item() > 0


def test_easy_examples_are_down_weighted():
    easy = focal_loss(torch.tensor([5.0]), torch.tensor([1.0]), alpha=-1)
    hard = focal_loss(torch.tensor([-5.0]), torch.tensor([1.0]), alpha=-1)
    assert hard / easy > 1e4


def test_low_precision_logits_give_an_fp32_loss():
    """Under autocast the head's logits are bf16/fp16: the loss is computed in fp32 all the same."""
    logits = torch.tensor([2.0, -1.0, 0.3, -3.0])
    y = torch.tensor([1.0, 0.0, 0.0, 1.0])
    low = focal_loss(logits.bfloat16(), y)
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, focal_loss(logits.bfloat16().float(), y))
