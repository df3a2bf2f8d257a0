"""Integration tests on the real default model, SmolLM2-135M-Instruct (float32)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hrpo import HybridModel, RolloutConfig, RolloutEngine
from hrpo.marker import MarkerTracker
from hrpo.token_bytes import token_strings
from invariance import Tokens, assert_same_until_near_ties, check_agreement, decision_gaps
from tiny import greedy_generate_reference

pytestmark = pytest.mark.slow

SYSTEM = "Reason step by step, then write the final answer after '####', like: ... #### 42"
PROMPTS = [
    "What is 7 + 5?",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?",
    "Name a prime number.",
]


def kept(ids, mask):
    return [r[: int(m.sum())].tolist() for r, m in zip(ids, mask, strict=True)]


@pytest.fixture(scope="module")
def model_tok(smollm2):
    hf, tok = smollm2
    return HybridModel(hf, seed=0), tok


def test_plain_greedy_rollout_equals_generate(model_tok):
    """``model.generate``'s tokens up to near ties, and its log-probs (see tests/invariance.py)."""
    model, tok = model_tok
    cfg = RolloutConfig(hybrid=False, do_sample=False, max_completion_length=48)
    ro = RolloutEngine(model, tok, cfg).generate(PROMPTS)
    ref = greedy_generate_reference(model.model, ro.prompt_ids, ro.prompt_mask, 48, tok, cfg.temperature)
    gaps, boundary = decision_gaps(model, ro, cfg)
    assert check_agreement(Tokens.of(ro), ref, gaps, boundary, atol=1e-4, tie=2e-4).compared >= 3 * 10
    assert (ro.completion_ids == tok.eos_token_id).any()  # the chat turn really ends with <|im_end|>


def test_hybrid_rollout_logprobs_equal_teacher_forced(model_tok):
    model, tok = model_tok
    eng = RolloutEngine(
        model, tok, RolloutConfig(max_completion_length=64, num_generations=2, system_prompt=SYSTEM)
    )
    ro = eng.generate(PROMPTS, seed=0)
    assert ro.prompt_mask.sum(-1).unique().numel() == 3
    assert ro.thinking_mask.sum() > 50
    with torch.no_grad():
        tf = eng.teacher_forced_logprobs(ro)
    diff = ((tf - ro.logprobs) * ro.completion_mask).abs().max()
    assert diff < 1e-4, diff


def test_greedy_hybrid_is_batch_invariant(model_tok):
    """Alone or in a padded batch: the same tokens up to near ties, log-probs within rounding."""
    model, tok = model_tok
    cfg = RolloutConfig(do_sample=False, max_completion_length=40)
    eng = RolloutEngine(model, tok, cfg)
    together = eng.generate(PROMPTS)
    compared = 0
    for i, p in enumerate(PROMPTS):
        alone = eng.generate([p])
        agreed = assert_same_until_near_ties(model, together, alone, cfg, rows=[i], atol=1e-3, tie=2e-3)
        compared += agreed.compared
    assert compared >= 3 * 10


def test_thinking_mask_matches_marker_in_real_completions(model_tok):
    model, tok = model_tok
    eng = RolloutEngine(
        model,
        tok,
        RolloutConfig(max_completion_length=96, num_generations=4, system_prompt=SYSTEM, temperature=0.7),
    )
    ro = eng.generate(PROMPTS[:2], seed=1)
    for i in range(len(ro)):
        n = int(ro.completion_lengths[i])
        ids = ro.completion_ids[i, :n].tolist()
        for t in range(n):
            expect = "####" not in tok.decode(ids[: t + 1]) and ids[t] != tok.eos_token_id
            assert bool(ro.thinking_mask[i, t]) == expect


@pytest.fixture(scope="module")
def smol_tracker(smollm2):
    _, tok = smollm2
    strings = token_strings(tok, len(tok))
    ascii_ids = [i for i, s in enumerate(strings) if s and s.isascii() and not s.startswith("<|")]
    hash_ids = [i for i in ascii_ids if "#" in strings[i]]
    return tok, MarkerTracker(tok, "####"), ascii_ids, hash_ids


@pytest.mark.parametrize(
    "text",
    ["The answer is 12.\n#### 12", "so:####5", "## ## 5", "#### 1 #### 2", "no marker here", "x ### #"],
)
def test_marker_on_smollm2_tokenization(smol_tracker, text):
    tok, tracker, _, _ = smol_tracker
    ids = tok.encode(text, add_special_tokens=False)
    flags = tracker.scan(torch.tensor([ids]))[0].tolist()
    assert flags == ["####" in tok.decode(ids[: t + 1]) for t in range(len(ids))]


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_marker_random_smollm2_token_sequences(smol_tracker, data):
    tok, tracker, ascii_ids, hash_ids = smol_tracker
    ids = data.draw(st.lists(st.sampled_from(hash_ids) | st.sampled_from(ascii_ids), min_size=1, max_size=20))
    flags = tracker.scan(torch.tensor([ids]))[0].tolist()
    assert flags == ["####" in tok.decode(ids[: t + 1]) for t in range(len(ids))]
