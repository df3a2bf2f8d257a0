"""compute_rewards: TRL's calling convention, weighting, None rewards, and refusal of anything that
is not a finite real reward; the reward metrics; reward functions by import path."""

from __future__ import annotations

import math
import sys
from fractions import Fraction

import numpy as np
import pytest
import torch

from hrpo.advantage import group_advantages
from hrpo.reward import (
    RewardFunctionError,
    TrainingState,
    compute_rewards,
    load_reward_func,
    resolve_reward_funcs,
    reward_completions,
    reward_metrics,
    unpadded_ids,
)

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
    assert "finite numbers" in message and "or None" in message


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


# -- TRL's calling convention ---------------------------------------------------------------------


def test_functions_get_trl_keyword_arguments_and_every_column():
    seen = {}

    def strict(*, prompts, completions, completion_ids, trainer_state, answer, level):
        seen.update(prompts=prompts, completions=completions, ids=completion_ids, state=trainer_state)
        seen.update(answer=answer, level=level)
        return [float(len(ids)) for ids in completion_ids]

    state = TrainingState(global_step=3, max_steps=10, epoch=0.5)
    ids = [[5, 6, 2], [7, 2], [2], [8, 9, 10, 2]]
    total, _ = compute_rewards(
        [strict],
        PROMPTS,
        COMPLETIONS,
        {**COLUMNS, "level": [1, 1, 2, 2]},
        completion_ids=ids,
        trainer_state=state,
    )
    assert total.tolist() == [3.0, 2.0, 1.0, 4.0]
    assert seen == {
        "prompts": PROMPTS,
        "completions": COMPLETIONS,
        "ids": ids,
        "state": state,
        "answer": ["1", "2", "3", "9"],
        "level": [1, 1, 2, 2],
    }
    assert state.global_step == 3 and state.max_steps == 10 and state.epoch == 0.5


def test_a_failing_item_is_found_with_the_state_passed_whole():
    state = TrainingState(global_step=7)

    def picky(prompts, completions, completion_ids, trainer_state, **kw):
        assert trainer_state is state  # never sliced like the per-completion lists
        return [1.0 / (len(ids) - 1) for ids in completion_ids]

    with pytest.raises(RewardFunctionError, match=r"'picky' raised ZeroDivisionError.*completion 2.*third"):
        compute_rewards(
            [picky],
            PROMPTS,
            COMPLETIONS,
            COLUMNS,
            completion_ids=[[1, 2], [1, 2], [2], [1, 2]],
            trainer_state=state,
        )


def test_a_column_named_like_an_argument_is_refused():
    with pytest.raises(ValueError, match=r"column\(s\) \['trainer_state'\].*rename"):
        compute_rewards([returning([0.0] * 4)], PROMPTS, COMPLETIONS, {"trainer_state": [0] * 4})


def test_conversational_prompts_get_message_completions_text_prompts_get_text():
    chat = [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]
    assert reward_completions([chat, "plain"], ["a #### 1", "b"]) == [
        [{"role": "assistant", "content": "a #### 1"}],
        "b",
    ]


def test_unpadded_ids_keep_the_completion_up_to_eos():
    ids = torch.tensor([[4, 5, 2, 0], [6, 2, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    assert unpadded_ids(ids, mask) == [[4, 5, 2], [6, 2]]


def test_a_task_reward_reads_message_completions():
    from hrpo.tasks import get_task

    task = get_task("arithmetic")
    prompts = [task.make_prompt("1 + 1 ?")] * 2
    completions = reward_completions(prompts, ["so #### 2", "so #### 3"])
    total, _ = compute_rewards([task.reward_function()], prompts, completions, {"answer": ["2", "2"]})
    assert total.tolist() == [1.0, 0.0]


# -- None rewards (TRL's semantics) -------------------------------------------------------------


def test_a_none_reward_leaves_its_term_out_of_the_total():
    a = returning([1.0, None, 0.5, 0.0], "a")
    b = returning([None, 2.0, 1.0, 1.0], "b")
    total, per_func = compute_rewards([a, b], PROMPTS, COMPLETIONS, COLUMNS, [1.0, 0.5])
    assert total.tolist() == [1.0, 1.0, 1.0, 0.5]
    assert torch.isnan(per_func["a"]).tolist() == [False, True, False, False]
    assert torch.isnan(per_func["b"]).tolist() == [True, False, False, False]


def test_a_completion_no_function_scored_is_an_error_naming_it_and_the_functions():
    a = returning([1.0, None, 0.5, None], "a")
    b = returning([None, 2.0, 1.0, None], "b")
    with pytest.raises(
        RewardFunctionError, match=r"every reward function \(a, b\) returned None for completion 3.*fourth"
    ):
        compute_rewards([a, b], PROMPTS, COMPLETIONS, COLUMNS)
    with pytest.raises(RewardFunctionError, match=r"\(a\) returned None for completion 1"):
        compute_rewards([a], PROMPTS, COMPLETIONS, COLUMNS)


def test_reward_metrics_follow_trl_nan_aware_over_the_scored_completions():
    a = torch.tensor([1.0, math.nan, 0.5, 0.0, 1.0, 1.0, 1.0, 1.0])
    b = torch.tensor([math.nan] * 7 + [2.0])
    rewards = torch.tensor([1.0, 1.0, 0.5, 0.0, 1.0, 1.0, 1.0, 3.0])
    m = reward_metrics(rewards, {"a": a, "b": b}, num_generations=4)
    assert m["reward"] == pytest.approx(rewards.mean().item())
    assert m["reward_std"] == pytest.approx(rewards.std().item())  # TRL's: over the whole batch
    assert m["frac_reward_zero_std"] == 0.0
    scored = np.array([1.0, 0.5, 0.0, 1.0, 1.0, 1.0, 1.0])
    assert m["rewards/a/mean"] == pytest.approx(scored.mean())
    assert m["rewards/a/std"] == pytest.approx(scored.std(ddof=1))
    assert m["rewards/b/mean"] == 2.0 and math.isnan(m["rewards/b/std"])  # one value: no spread
    tied = reward_metrics(torch.tensor([1.0, 1.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5]), {}, num_generations=4)
    assert tied["frac_reward_zero_std"] == 0.5


def test_functions_with_the_same_name_keep_separate_rewards():
    _, per_func = compute_rewards(
        [returning([1.0] * 4, "f"), returning([0.0] * 4, "f")], PROMPTS, COMPLETIONS, COLUMNS
    )
    assert list(per_func) == ["f", "f_2"] and per_func["f_2"].sum() == 0


# -- reward functions by import path ------------------------------------------------------------


@pytest.fixture
def reward_module(tmp_path, monkeypatch):
    """A module ``hrpo_test_rewards`` in a fresh working directory, imported through its path only."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    (tmp_path / "hrpo_test_rewards.py").write_text(
        "THRESHOLD = 0.5\n"
        "def accuracy(prompts, completions, **kw):\n"
        "    return [1.0] * len(completions)\n"
        "class Scorers:\n"
        "    @staticmethod\n"
        "    def length(prompts, completions, **kw):\n"
        "        return [float(len(c)) for c in completions]\n"
    )
    (tmp_path / "hrpo_test_broken.py").write_text("import no_such_module_anywhere\n")
    yield "hrpo_test_rewards"
    for name in ("hrpo_test_rewards", "hrpo_test_broken"):
        sys.modules.pop(name, None)


def test_reward_paths_import_from_the_working_directory(reward_module):
    assert load_reward_func(f"{reward_module}:accuracy").__name__ == "accuracy"
    assert load_reward_func(f"{reward_module}.accuracy").__name__ == "accuracy"
    assert load_reward_func(f"{reward_module}:Scorers.length")(None, ["ab"]) == [2.0]
    fn = resolve_reward_funcs([f"{reward_module}:accuracy", len])
    assert [f.__name__ for f in fn] == ["accuracy", "len"]


@pytest.mark.parametrize(
    "path, message",
    [
        ("hrpo_test_nowhere:accuracy", r"cannot import module 'hrpo_test_nowhere' \(ModuleNotFoundError"),
        ("hrpo_test_broken:f", r"cannot import module 'hrpo_test_broken'.*no_such_module_anywhere"),
        (
            "hrpo_test_rewards:acuracy",
            r"hrpo_test_rewards has no attribute 'acuracy' \(did you mean 'accuracy'\?\)",
        ),
        ("hrpo_test_rewards.THRESHOLD", r"hrpo_test_rewards.THRESHOLD is a float, not callable"),
        ("hrpo_test_rewards:", r"expected 'module:function' or 'module.function'"),
    ],
)
def test_reward_path_errors_say_what_is_wrong(reward_module, path, message):
    with pytest.raises(ValueError, match=message):
        load_reward_func(path)
