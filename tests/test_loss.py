import math

import pytest
import torch

from hrpo.advantage import group_advantages
from hrpo.loss import LossNormalizer, k3_kl, policy_loss


def test_group_advantages_by_hand():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    adv = group_advantages(r, 4, "group")
    std = math.sqrt(1 / 3)  # unbiased std of [1, 0, 0, 1]
    expect = [0.5 / (std + 1e-4), -0.5 / (std + 1e-4)] * 2
    assert torch.allclose(adv[:4], torch.tensor([expect[0], expect[1], expect[1], expect[0]]), atol=1e-6)
    assert torch.equal(adv[4:], torch.zeros(4))  # a solved group carries no signal
    assert torch.allclose(group_advantages(r, 4, "none"), torch.tensor([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0]))
    batch_std = r.std().item()
    assert torch.allclose(
        group_advantages(r, 4, "batch"), torch.tensor([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0]) / (batch_std + 1e-4)
    )


def test_group_advantages_reject_bad_input():
    with pytest.raises(ValueError, match="num_generations=4"):
        group_advantages(torch.zeros(6), 4)
    with pytest.raises(ValueError, match="scale_rewards"):
        group_advantages(torch.zeros(4), 2, "median")


def test_k3_kl_by_hand():
    lp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -2.0])
    assert torch.allclose(k3_kl(lp, ref), torch.tensor([math.exp(-0.5) + 0.5 - 1, 0.0]))
    assert (k3_kl(torch.randn(100), torch.randn(100)) >= 0).all()


LP = torch.tensor([[-1.0, -2.0, -0.5], [-0.2, -0.3, 0.0]])
REF = torch.tensor([[-1.2, -2.0, -0.4], [-0.2, -0.1, 0.0]])
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])
ADV = torch.tensor([2.0, -1.0])
BETA = 0.1


def kl_tok():
    return torch.exp(REF - LP) - (REF - LP) - 1


def by_hand(loss_type):
    """Values: ratio = 1, so per token −A + β·kl."""
    tok = -ADV[:, None] + BETA * kl_tok()
    tok = tok * MASK
    if loss_type == "grpo":
        return ((tok.sum(1) / MASK.sum(1)).sum() / 2).item()
    if loss_type == "dr_grpo":
        return (tok.sum() / (2 * 4)).item()  # max_completion_length = 4
    return (tok.sum() / 5).item()


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
def test_policy_loss_values_and_gradient(loss_type):
    lp = LP.clone().requires_grad_(True)
    norm = LossNormalizer(num_sequences=2, num_tokens=5, max_completion_length=4)
    loss, stats = policy_loss(lp, ADV, MASK, norm, ref_logprobs=REF, beta=BETA, loss_type=loss_type)
    assert loss.item() == pytest.approx(by_hand(loss_type), abs=1e-6)
    assert stats["token_count"] == 5
    assert stats["kl_sum"].item() == pytest.approx((kl_tok() * MASK).sum().item(), abs=1e-6)
    loss.backward()
    # d/dℓ of −exp(ℓ−sg(ℓ))·A is −A; of β·k3 is β(1 − exp(ℓ_ref − ℓ)); then the aggregation weight.
    dtok = (-ADV[:, None] + BETA * (1 - torch.exp(REF - LP))) * MASK
    weight = {"grpo": 1 / (MASK.sum(1, keepdim=True) * 2), "dr_grpo": 1 / 8, "dapo": 1 / 5}[loss_type]
    assert torch.allclose(lp.grad, dtok * weight, atol=1e-6)


def test_microbatches_sum_to_the_full_batch_loss():
    norm = LossNormalizer(num_sequences=2, num_tokens=5, max_completion_length=4)
    for lt in ("grpo", "dr_grpo", "dapo"):
        full, _ = policy_loss(LP, ADV, MASK, norm, ref_logprobs=REF, beta=BETA, loss_type=lt)
        parts = [
            policy_loss(
                LP[i : i + 1],
                ADV[i : i + 1],
                MASK[i : i + 1],
                norm,
                ref_logprobs=REF[i : i + 1],
                beta=BETA,
                loss_type=lt,
            )[0]
            for i in range(2)
        ]
        assert torch.allclose(full, sum(parts), atol=1e-6)


def test_ratio_clipping_with_reused_rollouts():
    norm = LossNormalizer(num_sequences=1, num_tokens=3, max_completion_length=3)
    old = torch.tensor([[-1.0, -1.0, -1.0]])
    lp = torch.tensor([[-1.0 + math.log(1.5), -1.0 + math.log(0.5), -1.0]], requires_grad=True)
    mask = torch.ones(1, 3)
    # Positive advantage: ratio 1.5 is clipped at 1.2 (no gradient); 0.5 is not (min picks it).
    loss, stats = policy_loss(lp, torch.tensor([1.0]), mask, norm, old_logprobs=old, epsilon=0.2)
    assert loss.item() == pytest.approx(-(1.2 + 0.5 + 1.0) / 3, abs=1e-6)
    loss.backward()
    assert torch.allclose(lp.grad, torch.tensor([[0.0, -0.5 / 3, -1.0 / 3]]), atol=1e-6)
    assert stats["clipped_sum"] == 2
    # epsilon_high widens the upper bound only (DAPO's clip-higher).
    loss2, _ = policy_loss(
        lp.detach(), torch.tensor([1.0]), mask, norm, old_logprobs=old, epsilon=0.2, epsilon_high=0.6
    )
    assert loss2.item() == pytest.approx(-(1.5 + 0.5 + 1.0) / 3, abs=1e-6)


def test_beta_needs_reference():
    norm = LossNormalizer(1, 1, 1)
    with pytest.raises(ValueError, match="ref_logprobs"):
        policy_loss(torch.zeros(1, 1), torch.zeros(1), torch.ones(1, 1), norm, beta=0.1)
