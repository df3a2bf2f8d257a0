"""compute_rewards: weighting, and refusal of anything that is not a finite real reward."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from hrpo.advantage import group_advantages
from hrpo.reward import RewardFunctionError, compute_rewards

PROMPTS = ["p0", "p1", "p2", "p3"]
COMPLETIONS = ["first #### 1", "second #### 2", "third #### 3", "fourth #### 4"]
COLUMNS = {"answer": ["1", "2", "3", "9"]}


def returning(values, name="fixed"):
    """A reward function returning ``values`` whatever it is given."""

    def fn(prompts, completions, **columns):
        return list(values)

    fn.__name__ = name
    return fn


def test_weighted_total_and_per_function_rewards():
    a = returning([1.0, 0.0, 1.0, 0.0], "acc")
    b = returning([0.5, 0.5, 0.0, 1.0], "fmt")
    total, per_func = compute_rewards([a, b], PROMPTS, COMPLETIONS, COLUMNS, [1.0, 0.2])
    assert torch.equal(per_func["acc"], torch.tensor([1.0, 0.0, 1.0, 0.0]))
    assert torch.equal(per_func["fmt"], torch.tensor([0.5, 0.5, 0.0, 1.0]))
    assert torch.allclose(total, torch.tensor([1.1, 0.1, 1.0, 0.2]))
    assert total.dtype == torch.float32 and torch.isfinite(total).all()


@pytest.mark.parametrize(
    "value",
    [
        1,
        True,
        False,
        0.25,
        np.float64(0.25),
        np.float32(0.25),
        np.float16(0.25),
        np.int64(1),
        np.int8(-1),
        np.bool_(True),
        Fraction(1, 4),
    ],
)
def test_python_and_numpy_reals_and_bools_are_accepted(value):
    _, per_func = compute_rewards([returning([0.0, value, 0.0, 0.0])], PROMPTS, COMPLETIONS, COLUMNS)
    assert per_func["fixed"][1].item() == float(value)


@pytest.mark.parametrize(
    "value",
    [
        float("nan"),
        float("inf"),
        -float("inf"),
        np.float32("nan"),
        np.float64("inf"),
        np.float32("-inf"),
        1e300,  # finite, but inf in the float32 reward tensor
        10**400,  # beyond float's range
        "1.0",
        None,
        1j,
        [1.0],
        torch.tensor(1.0),
    ],
    ids=repr,
)
def test_non_finite_or_non_number_is_refused_naming_function_index_and_text(value):
    fn = returning([1.0, 0.0, value, 1.0], "my_reward")
    with pytest.raises(RewardFunctionError) as info:
        compute_rewards([fn], PROMPTS, COMPLETIONS, COLUMNS)
    message = str(info.value)
    assert "'my_reward'" in message
    assert "completion 2" in message and "third #### 3" in message
    assert "finite numbers" in message


def test_inf_is_refused_before_it_reaches_the_advantages():
    """What the check prevents: one inf makes the whole group's advantages NaN."""
    rewards = torch.tensor([1.0, math.inf, 0.0, 1.0])
    assert torch.isnan(group_advantages(rewards, 4, "group")).all()
    with pytest.raises(RewardFunctionError, match=r"returned inf for completion 1"):
        compute_rewards([returning(rewards.tolist(), "acc")], PROMPTS, COMPLETIONS, COLUMNS)


def test_non_finite_weighted_total_is_refused():
    fn = returning([1.0, 0.0, 1.0, 0.0], "acc")
    with pytest.raises(RewardFunctionError, match=r"total reward of completion 0 is inf.*first #### 1"):
        compute_rewards([fn], PROMPTS, COMPLETIONS, COLUMNS, [math.inf])
    zero = returning([0.0, 0.0, 0.0, 0.0], "zero")
    with pytest.raises(
        RewardFunctionError, match=r"total reward of completion 0 is nan \(rewards zero=0.0, weights \[nan\]"
    ):
        compute_rewards([zero], PROMPTS, COMPLETIONS, COLUMNS, [math.nan])
    big = returning([3e38, 0.0, 0.0, 0.0], "big")
    with pytest.raises(RewardFunctionError, match=r"total reward of completion 0 is inf"):
        compute_rewards([big, big], PROMPTS, COMPLETIONS, COLUMNS)


@pytest.mark.parametrize("values", [[1.0, 0.0, 1.0], [1.0] * 5, [], None])
def test_wrong_number_of_values_is_refused(values):
    fn = returning([] if values is None else values, "short")
    if values is None:
        fn = lambda prompts, completions, **columns: None  # noqa: E731
        fn.__name__ = "short"
    got = "None" if values is None else f"{len(values)} values"
    with pytest.raises(RewardFunctionError, match=rf"'short' returned {got} for 4 completions"):
        compute_rewards([fn], PROMPTS, COMPLETIONS, COLUMNS)


def test_a_raising_function_is_reported_with_the_failing_input():
    def picky(prompts, completions, answer, **columns):
        return [1.0 / (a != "3") for a in answer]

    with pytest.raises(RewardFunctionError, match=r"'picky' raised ZeroDivisionError.*completion 2.*third"):
        compute_rewards([picky], PROMPTS, COMPLETIONS, COLUMNS)


def test_weights_must_match_functions():
    with pytest.raises(ValueError, match="2 reward_weights for 1 reward functions"):
        compute_rewards([returning([0.0] * 4)], PROMPTS, COMPLETIONS, COLUMNS, [1.0, 1.0])
