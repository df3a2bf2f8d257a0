import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hrpo.marker import MarkerTracker, token_strings
from tiny import tiny_tokenizer

TOK = tiny_tokenizer()
STRINGS = token_strings(TOK, len(TOK))
# ASCII tokens only, so that decoding any prefix of a sequence is exact text.
ASCII_IDS = [i for i, s in enumerate(STRINGS) if s and s.isascii() and not s.startswith("<|")]
HASH_IDS = [i for i in ASCII_IDS if "#" in STRINGS[i]]


def oracle(ids: list[int], marker: str) -> list[bool]:
    return [marker in TOK.decode(ids[: t + 1]) for t in range(len(ids))]


def ids_of(*tokens: str) -> list[int]:
    """Ids of byte-level token names ("Ġ" is a space); each must be in the tiny vocabulary."""
    vocab = TOK.get_vocab()
    missing = [t for t in tokens if t not in vocab]
    assert not missing, missing
    return [vocab[t] for t in tokens]


def scan(ids: list[int], marker: str = "####") -> list[bool]:
    return MarkerTracker(TOK, marker).scan(torch.tensor([ids])).squeeze(0).tolist()


def test_token_strings_keep_leading_spaces():
    assert STRINGS[TOK.convert_tokens_to_ids("Ġ##")] == " ##"
    assert STRINGS[TOK.eos_token_id] == "<|im_end|>"


def test_marker_split_over_two_tokens():
    ids = ids_of("Ġthe", "Ġ##", "##", "5")
    assert scan(ids) == [False, False, True, True] == oracle(ids, "####")


def test_marker_split_over_single_characters():
    ids = ids_of("#", "#", "#", "#", "5")
    assert scan(ids) == [False, False, False, True, True]


def test_marker_glued_to_other_characters():
    ids = ids_of(":####", "5")
    assert scan(ids) == [True, True]


def test_marker_twice_stays_seen():
    ids = ids_of("Ġ####", "5", "Ġ####", "6")
    assert scan(ids) == [True, True, True, True]


def test_marker_never_and_broken_marker():
    assert scan(ids_of("##", "Ġ", "##", "5")) == [False] * 4  # "## ##" is not "####"
    assert scan(ids_of("Ġthe", "Ġleft")) == [False, False]


def test_marker_inside_prompt_only_does_not_count():
    # The automaton starts at the completion; a prompt ending in "##" does not carry over.
    tracker = MarkerTracker(TOK, "####")
    state = tracker.initial_state(1)
    for t in ids_of("##"):
        state = tracker.step(state, torch.tensor([t]))
    assert not tracker.seen(state).item()


def test_multi_word_marker_with_spaces():
    ids = TOK.encode("so the answer is 5", add_special_tokens=False)
    assert scan(ids, "answer is") == oracle(ids, "answer is")
    assert scan(ids, "answer is")[-1]


def test_special_tokens_are_text_for_the_automaton():
    ids = ids_of("##") + [TOK.eos_token_id] + ids_of("##")
    assert scan(ids) == [False, False, False]


def test_empty_marker_is_rejected():
    with pytest.raises(ValueError):
        MarkerTracker(TOK, "")


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from(HASH_IDS) | st.sampled_from(ASCII_IDS), min_size=1, max_size=30),
    st.sampled_from(["####", "##", "#5", "= 1", "# #"]),
)
def test_matches_text_search_on_random_token_sequences(ids, marker):
    assert scan(ids, marker) == oracle(ids, marker)
