import math

import pytest
import torch

from hrpo.advantage import group_advantages
from hrpo.loss import LossNormalizer, k3_kl, policy_loss, truncated_rows


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
    return (tok.sum() / 5).item()  # dapo, and bnpo with the whole batch as one micro-batch


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo", "bnpo"])
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
    weight = {"grpo": 1 / (MASK.sum(1, keepdim=True) * 2), "dr_grpo": 1 / 8, "dapo": 1 / 5, "bnpo": 1 / 5}[
        loss_type
    ]
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


def test_bnpo_averages_each_micro_batch_token_mean():
    """TRL's bnpo: token mean over the local (micro-)batch, then mean over the step's micro-batches
    (of every process). With one sequence per micro-batch it is grpo."""
    tok = (-ADV[:, None] + BETA * kl_tok()) * MASK
    means = [tok[0].sum() / 3, tok[1].sum() / 2]  # each micro-batch's token mean (3 and 2 tokens)
    norm = LossNormalizer(num_sequences=2, num_tokens=5, max_completion_length=4, num_micro_batches=2)
    parts = [
        policy_loss(
            LP[i : i + 1],
            ADV[i : i + 1],
            MASK[i : i + 1],
            norm,
            ref_logprobs=REF[i : i + 1],
            beta=BETA,
            loss_type="bnpo",
        )[0]
        for i in range(2)
    ]
    assert sum(parts).item() == pytest.approx(((means[0] + means[1]) / 2).item(), abs=1e-6)
    assert sum(parts).item() == pytest.approx(by_hand("grpo"), abs=1e-6)
    # Two processes, one micro-batch each, are the same two micro-batches: the same loss.
    lp = LP.clone().requires_grad_(True)
    sum(
        policy_loss(
            lp[i : i + 1],
            ADV[i : i + 1],
            MASK[i : i + 1],
            norm,
            ref_logprobs=REF[i : i + 1],
            beta=BETA,
            loss_type="bnpo",
        )[0]
        for i in range(2)
    ).backward()
    dtok = (-ADV[:, None] + BETA * (1 - torch.exp(REF - LP))) * MASK
    assert torch.allclose(lp.grad, dtok / (MASK.sum(1, keepdim=True) * 2), atol=1e-6)


def seq_by_hand(lp, old, adv, mask, eps=0.2):
    """GSPO by hand: per sequence s = mean over its tokens of (ℓ − ℓ_old), r = exp(s), loss
    −min(r·A, clip(r)·A); its gradient in ℓ_t is −A·r/|o| unless the clipped branch is taken."""
    losses, grads = [], torch.zeros_like(lp)
    for i in range(lp.shape[0]):
        n = int(mask[i].sum())
        r = math.exp(sum(float(lp[i, t] - old[i, t]) for t in range(n)) / n)
        a = float(adv[i])
        clipped = min(max(r, 1 - eps), 1 + eps)
        losses.append(-min(r * a, clipped * a))
        if r * a <= clipped * a:  # the unclipped term is the min: it carries the gradient
            grads[i, :n] = -a * r / n
    return losses, grads


def test_sequence_level_importance_ratio_by_hand():
    old = torch.tensor([[-1.0, -2.0, -0.5], [-0.2, -0.3, 0.0]])
    # Row 0: log-ratios 0.3, 0.3, 0.6 → r = e^0.4 ≈ 1.49 > 1.2 with A > 0: clipped, no gradient.
    # Row 1: log-ratios -0.1, -0.2 (the third is padding) → r = e^-0.15 ≈ 0.86, unclipped.
    lp_values = old + torch.tensor([[0.3, 0.3, 0.6], [-0.1, -0.2, 5.0]])
    mask, adv = MASK, torch.tensor([1.0, -1.0])
    losses, grads = seq_by_hand(lp_values, old, adv, mask)
    norm = LossNormalizer(num_sequences=2, num_tokens=5, max_completion_length=4)
    for loss_type, expect, weight in [
        ("grpo", sum(losses) / 2, torch.tensor([[1 / 2], [1 / 2]])),
        ("dapo", (3 * losses[0] + 2 * losses[1]) / 5, torch.tensor([[3 / 5], [2 / 5]])),
    ]:
        lp = lp_values.clone().requires_grad_(True)
        loss, stats = policy_loss(
            lp, adv, mask, norm, old_logprobs=old, loss_type=loss_type, importance_sampling_level="sequence"
        )
        assert loss.item() == pytest.approx(expect, abs=1e-6)
        loss.backward()
        assert torch.allclose(lp.grad, grads * weight, atol=1e-6)
    # One ratio per sequence: TRL counts the clip regions per sequence, the old clip_ratio per token.
    assert (stats["clip_high_sum"], stats["clip_low_sum"], stats["clip_region_sum"]) == (1, 0, 1)
    assert stats["clip_count"] == 2 and stats["clipped_sum"] == 3


def test_sequence_level_with_fresh_rollouts_has_ratio_one_and_the_right_gradient():
    """old = sg(ℓ): r = exp(mean(ℓ − sg(ℓ))) = 1, and d/dℓ_t = −A/|o| (the grpo gradient)."""
    lp = LP.clone().requires_grad_(True)
    norm = LossNormalizer(num_sequences=2, num_tokens=5, max_completion_length=4)
    loss, stats = policy_loss(lp, ADV, MASK, norm, importance_sampling_level="sequence")
    assert loss.item() == pytest.approx(-ADV.mean().item(), abs=1e-6)
    loss.backward()
    assert torch.allclose(lp.grad, -ADV[:, None] / MASK.sum(1, keepdim=True) * MASK / 2, atol=1e-6)
    assert stats["clip_region_sum"] == 0
    with pytest.raises(ValueError, match="importance_sampling_level"):
        policy_loss(LP, ADV, MASK, norm, importance_sampling_level="group")


def test_clip_regions_count_only_the_side_that_binds():
    """TRL's clip_ratio/low_mean and /high_mean: ratio < 1 − ε with A < 0, ratio > 1 + ε with A > 0."""
    norm = LossNormalizer(num_sequences=1, num_tokens=3, max_completion_length=3)
    old = torch.tensor([[-1.0, -1.0, -1.0]])
    lp = torch.tensor([[-1.0 + math.log(1.5), -1.0 + math.log(0.5), -1.0]])
    for adv, low, high in [(1.0, 0, 1), (-1.0, 1, 0)]:
        _, stats = policy_loss(lp, torch.tensor([adv]), torch.ones(1, 3), norm, old_logprobs=old)
        assert (stats["clip_low_sum"], stats["clip_high_sum"]) == (low, high)
        assert stats["clip_region_sum"] == 1 and stats["clip_count"] == 3 and stats["clipped_sum"] == 2


def test_truncated_completions_and_their_loss_mask():
    """TRL's mask_truncated_completions: a completion without EOS is out of the loss; dapo counts
    only the remaining tokens, grpo still divides by every sequence."""
    eos = torch.tensor([9])
    ids = torch.tensor([[5, 9, 0], [5, 6, 7], [9, 0, 0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0]])
    truncated = truncated_rows(ids, mask, eos)
    assert truncated.tolist() == [False, True, False]
    loss_mask = mask * ~truncated[:, None]
    adv = torch.tensor([1.0, 2.0, -1.0])
    lp = torch.zeros(3, 3, requires_grad=True)
    # ratio 1: token loss −A; row 1 is out.
    grpo, _ = policy_loss(lp, adv, loss_mask, LossNormalizer(3, 3, 3), loss_type="grpo")
    assert grpo.item() == pytest.approx((-1.0 + 0 + 1.0) / 3)
    dapo, stats = policy_loss(lp, adv, loss_mask, LossNormalizer(3, 3, 3), loss_type="dapo")
    assert dapo.item() == pytest.approx((-1.0 * 2 + 1.0) / 3) and stats["token_count"] == 3
    dapo.backward()
    assert lp.grad[1].abs().sum() == 0
