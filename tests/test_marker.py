"""The answer marker: bytes of tokens, the token automaton, the heading rule on text and in rollouts."""

import numpy as np
import pytest
import torch
from hypothesis import find, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from hrpo.marker import (
    WHITESPACE,
    MarkerTracker,
    _byte_dfa,
    _ByteRule,
    answer_marker_spans,
    answer_start,
    compile_marker,
    find_markers,
)
from hrpo.token_bytes import TokenBytes, token_bytes, token_strings
from tiny import force_tokens, tiny_sentencepiece_tokenizer, tiny_tokenizer

TOK = tiny_tokenizer()
SP = tiny_sentencepiece_tokenizer()
STRINGS = token_strings(TOK, len(TOK))
# ASCII tokens only, so that decoding any prefix of a sequence is exact text.
ASCII_IDS = [i for i, s in enumerate(STRINGS) if s and s.isascii() and not s.startswith("<|")]
HASH_IDS = [i for i in ASCII_IDS if "#" in STRINGS[i]]
MARKERS = ["####", "→", "答案：", "answer is"]
DECODE = {"skip_special_tokens": False, "clean_up_tokenization_spaces": False}


def oracle(ids: list[int], marker: str) -> list[bool]:
    return [marker in TOK.decode(ids[: t + 1]) for t in range(len(ids))]


def ids_of(*tokens: str) -> list[int]:
    """Ids of byte-level token names ("Ġ" is a space); each must be in the tiny vocabulary."""
    vocab = TOK.get_vocab()
    missing = [t for t in tokens if t not in vocab]
    assert not missing, missing
    return [vocab[t] for t in tokens]


def scan(ids: list[int], marker: str = "####", tok=TOK, headings: bool = False) -> list[bool]:
    tracker = MarkerTracker(tok, marker, ignore_headings=headings)
    return tracker.scan(torch.tensor([ids], dtype=torch.long)).squeeze(0).tolist()


def text_bytes(tok, ids: list[int]) -> bytes:
    """The bytes of ``ids`` as a text by the tracker's token table (first-token rule included)."""
    tb = token_bytes(tok)
    if not ids:
        return b""
    first = tb.first[ids[0]] if tb.first is not None else tb.pieces[ids[0]]
    return first + b"".join(tb.pieces[i] for i in ids[1:])


def prefix_ends(tok, ids: list[int]) -> list[int]:
    return [len(text_bytes(tok, ids[: t + 1])) for t in range(len(ids))]


# --- rule off: the marker appears in the text -------------------------------------------------


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
    with pytest.raises(ValueError, match="non-whitespace"):
        MarkerTracker(TOK, " \n", ignore_headings=True)
    with pytest.raises(ValueError, match="non-whitespace"):
        find_markers("a \n b", " \n", ignore_headings=True)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from(HASH_IDS) | st.sampled_from(ASCII_IDS), min_size=1, max_size=30),
    st.sampled_from(["####", "##", "#5", "= 1", "# #"]),
)
def test_matches_text_search_on_random_token_sequences(ids, marker):
    assert scan(ids, marker) == oracle(ids, marker)


# --- bytes of tokens ----------------------------------------------------------------------------


def test_byte_level_alphabet_is_the_tokenizers_one():
    tb = token_bytes(TOK)
    assert tb.kind == "byte-level" and tb.first is None
    singles = {tb.pieces[i] for i in range(len(TOK)) if len(TOK.convert_ids_to_tokens(i)) == 1}
    assert singles == {bytes([b]) for b in range(256)}  # every byte, from its one-character token
    assert tb.pieces[TOK.eos_token_id] == b"<|im_end|>"
    assert token_bytes(TOK) is tb  # cached per tokenizer


def test_sentencepiece_pieces_bytes_and_first_token():
    tb = token_bytes(SP)
    assert tb.kind == "sentencepiece" and tb.first is not None
    assert tb.pieces[SP.convert_tokens_to_ids("<0xE2>")] == b"\xe2"
    word = SP.convert_tokens_to_ids("▁the")
    assert tb.pieces[word] == b" the" and tb.first[word] == b"the"  # Strip drops the text's first space
    assert tb.pieces[SP.eos_token_id] == b"</s>"


def test_unknown_decoder_falls_back_to_decoding():
    vocab = {"[UNK]": 0, "AN": 1, "##S": 2, "5": 3, "the": 4, "ANS": 5}
    wp = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    wp.pre_tokenizer = pre_tokenizers.Whitespace()
    wp.decoder = decoders.WordPiece()  # "##" glues a piece to the previous one: not a known kind
    tok = PreTrainedTokenizerFast(tokenizer_object=wp, unk_token="[UNK]")
    tracker = MarkerTracker(tok, "the ANS")
    assert tracker.kind == "decoded"
    for ids in ([4, 1, 2, 3], [4, 5, 3], [1, 2, 4, 5]):  # "the ANS 5" (twice), "ANS the ANS"
        flags = scan(ids, "the ANS", tok=tok)
        assert flags == ["the ANS" in tok.decode(ids[: t + 1]) for t in range(len(ids))]
        assert flags[-1]


def _valid_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def _check_rule_off(tok, ids: list[int], marker: str) -> None:
    """Seen after each prefix ⇔ the marker's bytes are in the prefix's bytes; and where those bytes
    are a whole text, they are the tokenizer's decoding and the marker is in it as text."""
    flags = scan(ids, marker, tok=tok)
    for t in range(len(ids)):
        data = text_bytes(tok, ids[: t + 1])
        assert flags[t] == (marker.encode() in data), (t, data)
        text = tok.decode(ids[: t + 1], **DECODE)
        if _valid_utf8(data):
            assert text.encode() == data
        if _valid_utf8(data) or token_bytes(tok).kind == "byte-level":
            # Byte-level decoding replaces only invalid bytes, never a marker's; the ByteFallback
            # decoder replaces a whole run of byte tokens when any of it is invalid (a prefix
            # ending inside a character), so there the text may hide a marker the bytes have.
            assert flags[t] == (marker in text), (t, text)


def _relevant_ids(tok, marker: str) -> list[int]:
    """Ids whose bytes share a byte with the marker (what a random sequence needs to build it)."""
    wanted = set(marker.encode())
    return [i for i, p in enumerate(token_bytes(tok).pieces) if p and wanted & set(p)]


@pytest.mark.parametrize("tok", [TOK, SP], ids=["byte-level", "sentencepiece"])
@pytest.mark.parametrize("marker", [*MARKERS, " answer"])
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_rule_off_random_token_sequences(tok, marker, data):
    ids = data.draw(
        st.lists(
            st.sampled_from(_relevant_ids(tok, marker)) | st.integers(0, len(tok) - 1),
            min_size=1,
            max_size=25,
        )
    )
    _check_rule_off(tok, ids, marker)


TEXT_CHUNKS = ["####", "#", "##", " ", "\t", "\n", "\n\n", "a", "Step", "B", "é", "答", "→", "：", "答案："]
TEXT_CHUNKS += ["1", "42", ".", ":", "answer is", "answer", " is", "x", "The"]
texts = st.lists(st.sampled_from(TEXT_CHUNKS), max_size=25).map("".join)
# Lines shaped like headings and answers; "{m}" stands for the marker under test.
LINES = st.tuples(
    st.sampled_from(["", "", " ", "\t", "  "]),
    st.sampled_from(["", "{m}", "{m}", "{m}", "x{m}"]),
    st.sampled_from(["", "", " ", "  "]),
    st.sampled_from(
        ["Step 1", "Ab", "B", "é", "答案", "答", "42", "", ":", "→ 5", "answer is 3", "{m}", "{m} 5"]
    ),
    st.sampled_from(["", "", " ", "\t", " {m}", "\r"]),
).map("".join)
documents = st.lists(LINES, max_size=8).map("\n".join) | texts


@pytest.mark.parametrize("tok", [TOK, SP], ids=["byte-level", "sentencepiece"])
@pytest.mark.parametrize("marker", MARKERS)
@settings(max_examples=60, deadline=None)
@given(before=texts, after=texts)
def test_rule_off_encoded_texts_containing_the_marker(tok, marker, before, after):
    ids = tok.encode(before + marker + after, add_special_tokens=False)
    assert text_bytes(tok, ids) == tok.decode(ids, **DECODE).encode()
    _check_rule_off(tok, ids, marker)
    assert scan(ids, marker, tok=tok)[-1]


def test_non_ascii_marker_in_byte_tokens():
    """The case that motivated bytes: '→' written as three one-byte tokens ends thinking."""
    for tok in (TOK, SP):
        ids = tok.encode("so 3 → 5", add_special_tokens=False)
        pieces = [token_bytes(tok).pieces[i] for i in ids]
        assert [p for p in pieces if p and p[0] >= 0x80] == [b"\xe2", b"\x86", b"\x92"]
        done = pieces.index(b"\x92")  # the byte completing '→'
        assert scan(ids, "→", tok=tok) == [t >= done for t in range(len(ids))]


@settings(max_examples=100, deadline=None)
@given(
    pieces=st.lists(st.binary(max_size=12), min_size=1, max_size=40),
    marker=st.sampled_from(["####", "→", "ab", "a#\n"]),
    headings=st.booleans(),
)
def test_vectorised_table_equals_token_by_token_simulation(pieces, marker, headings):
    tokens = TokenBytes("byte-level", tuple(pieces))
    compiled = compile_marker(tokens, marker, headings)
    dfa, _ = _byte_dfa(marker.encode(), headings)
    for i, piece in enumerate(pieces):
        for s in range(dfa.shape[0]):
            state = s
            for c in piece:
                state = int(dfa[state, c])
            assert compiled.table[i, s] == state
    assert compiled.table.dtype == np.int16


def test_byte_dfa_layout():
    for headings in (False, True):
        dfa, num_search = _byte_dfa(b"####", headings)
        answer = dfa.shape[0] - 1
        assert (dfa[answer] == answer).all()  # absorbing
        assert num_search == (4 if not headings else 8)
    assert _ByteRule(b"####", True).initial == ("search", 0, frozenset({0}))
    dfa, _ = _byte_dfa(b"####", False)
    assert dfa.shape == (5, 256)  # without headings: today's automaton, m + 1 states
    assert [int(dfa[k, ord("#")]) for k in range(4)] == [1, 2, 3, 4] and (dfa[:4, ord("x")] == 0).all()


# --- the heading rule on text -------------------------------------------------------------------

HEADING_EXAMPLES = [
    ("#### Step 1\nAdd them.\n#### 5", [22], [0]),
    ("#### 5", [0], []),
    ("Thus #### 5", [5], []),
    ("#### 17\nThe answer is: 17", [0], []),
    ("#### B\nBecause it is.", [0], []),
    ("#### Answer: 42", [0], []),
    ("#### Answer: 42\nDone.", [], [0]),
    ("####\n42", [0], []),
    ("  \t#### Plan\n\n  next\n#### 7", [21], [3]),  # blanks before, blank lines after
    ("#### Step #### 1\nMore.\n#### 3", [23], [0]),  # markers inside a heading line are its title
    ("####Step\nx", [], [0]),
    ("#### é\nx", [0], []),  # one letter, even non-ASCII
    ("#### 答案\nx", [], [0]),
    ("#### Step 1\n   \n\t", [0], []),  # only whitespace follows: no section
    ("x\n#### Ab\ncd\n#### Ef\ngh ####9", [24], [2, 13]),
    ("#### 5\n#### Note\nblah", [0], [7]),
]


@pytest.mark.parametrize("text,answers,headings", HEADING_EXAMPLES)
def test_heading_rule_on_text(text, answers, headings):
    found = find_markers(text, "####", ignore_headings=True)
    assert list(found.answers) == answers and list(found.headings) == headings
    assert answer_marker_spans(text, "####", True) == answers
    # Without the rule every occurrence is a marker, as str.count finds them.
    assert len(answer_marker_spans(text, "####")) == text.count("####")


def test_heading_rule_with_other_markers():
    for text, marker in [
        ("答案： Schritt eins\nweiter\n答案：5", "答案："),
        ("answer is Ab\ncd\nthe answer is 3", "answer is"),
        ("\n→ Ab\n x → 4", "→"),
        ("  答案：答案\n答案：\n5", "答案："),
    ]:
        assert answer_marker_spans(text, marker, True) == [text.rindex(marker)], text


@pytest.mark.parametrize(
    "text,headings,answer",
    [
        ("#####42", False, "42"),  # a longer run of '#' is one marker ending at the run's end
        ("########42", False, "42"),  # two markers (strict format fails), the answer still reads
        ("#### 4 #### 42", False, " 42"),
        ("#### Step 1\nAdd.\n#### 5", True, " 5"),
        ("#### 5\n#### Note\nblah", True, " 5\n#### Note\nblah"),  # a later heading is answer text
        ("#### Answer: 42\nDone.", True, None),
        ("no marker", False, None),
    ],
)
def test_answer_start(text, headings, answer):
    at = answer_start(text, "####", headings)
    assert (None if at is None else text[at:]) == answer


def test_heading_rule_is_linear_on_pathological_text():
    # Many candidate lines and many markers on one line: each character is looked at O(1) times.
    text = "#### Ab\n" * 20_000 + "#### " * 20_000
    found = find_markers(text, "####", True)
    assert len(found.headings) == 20_000 and len(found.answers) == 20_000


# --- the heading rule in the automaton ----------------------------------------------------------


def expected_flags(text: str, marker: str, ends: list[int]) -> list[bool]:
    """Not-thinking after each prefix of byte length in ``ends``, by the text rule: from the end of
    the first answer marker on, and from the end of each heading through the byte before the first
    non-whitespace character after its line (pending)."""
    found = find_markers(text, marker, True)

    def at(i: int) -> int:
        return len(text[:i].encode())

    windows = []
    for s in found.headings:
        k = text.index("\n", s + len(marker)) + 1
        while text[k] in WHITESPACE:
            k += 1
        windows.append((at(s + len(marker)), at(k)))
    answer = at(found.answers[0] + len(marker)) if found.answers else None
    return [(answer is not None and e >= answer) or any(lo <= e <= hi for lo, hi in windows) for e in ends]


def _check_rule_on(tok, text: str, marker: str) -> None:
    ids = tok.encode(text, add_special_tokens=False)
    decoded = tok.decode(ids, **DECODE)  # SentencePiece may drop a leading space: grade what decodes
    assert text_bytes(tok, ids) == decoded.encode()
    tracker = MarkerTracker(tok, marker, ignore_headings=True)
    state = tracker.initial_state(1)
    flags, answered = [], []
    for i in ids:
        state = tracker.step(state, torch.tensor([i]))
        flags.append(bool(tracker.seen(state)))
        answered.append(bool(tracker.answered(state)))
    assert flags == expected_flags(decoded, marker, prefix_ends(tok, ids)), decoded
    # The answer phase starts at the token ending the first answer marker and lasts: answered
    # there once decided, pending until then, and never thinking again.
    found = find_markers(decoded, marker, True)
    start = len(ids)
    if found.answers:
        end = len(decoded[: found.answers[0] + len(marker)].encode())
        start = next(t for t, e in enumerate(prefix_ends(tok, ids)) if e >= end)
    assert all(flags[start:])
    assert not any(answered[:start])


@pytest.mark.parametrize("tok", [TOK, SP], ids=["byte-level", "sentencepiece"])
@pytest.mark.parametrize("marker", MARKERS)
@settings(max_examples=150, deadline=None)
@given(document=documents)
def test_rule_on_automaton_agrees_with_the_text_rule(tok, marker, document):
    _check_rule_on(tok, document.replace("{m}", marker), marker)


@pytest.mark.parametrize(
    "case",
    [
        lambda f: f.headings and f.answers and f.answers[0] > f.headings[0],  # thinking resumes, then ends
        lambda f: f.headings and not f.answers,
        lambda f: len(f.headings) >= 2,
        lambda f: f.answers and not f.headings and f.answers[0] == 0,  # line-start answer marker
    ],
)
def test_documents_reach_the_cases_of_the_rule(case):
    """The strategy above reaches the cases of the rule (else the agreement test proves little)."""
    found = find(documents, lambda d: bool(case(find_markers(d.replace("{m}", "答案："), "答案：", True))))
    assert found is not None


@pytest.mark.parametrize("text,answers,headings", HEADING_EXAMPLES)
def test_heading_examples_in_the_automaton(text, answers, headings):
    for tok in (TOK, SP):
        _check_rule_on(tok, text, "####")


def _thinking_text(tok, ids: list[int], flags: list[bool]) -> str:
    return "".join(tok.decode([i]) for i, f in zip(ids, flags, strict=True) if not f)


@pytest.mark.parametrize(
    "text,thinking",
    [
        ("#### Step 1\nAdd them.\n#### 5", "##Add them.\n##"),
        ("#### Answer: 42\nDone.", "##Done."),
        ("#### 5", "##"),
        ("####\n42", "##"),
        ("So\n#### Ab\ncd #### 3", "So\n##cd"),
    ],
)
def test_thinking_tokens_with_headings(text, thinking):
    ids = TOK.encode(text, add_special_tokens=False)
    assert _thinking_text(TOK, ids, scan(ids, headings=True)) == thinking


def test_rule_off_is_todays_automaton():
    ids = TOK.encode("#### Step 1\nAdd them.\n#### 5", add_special_tokens=False)
    assert scan(ids) == oracle(ids, "####")
    assert _thinking_text(TOK, ids, scan(ids)) == "##"


# --- real tokenizer (slow: needs the converted default checkpoint) ------------------------------


@pytest.fixture(scope="module")
def smol_tok():
    from hrpo.loading import load_tokenizer

    return load_tokenizer()


@pytest.mark.slow
@pytest.mark.parametrize("marker", MARKERS)
@settings(max_examples=80, deadline=None)
@given(data=st.data(), document=documents, cut=st.floats(0, 1))
def test_smollm2_rule_off_and_on(smol_tok, marker, data, document, cut):
    assert token_bytes(smol_tok).kind == "byte-level"
    relevant = _relevant_ids(smol_tok, marker)
    ids = data.draw(st.lists(st.sampled_from(relevant) | st.integers(0, len(smol_tok) - 1), max_size=20))
    _check_rule_off(smol_tok, ids, marker)
    text = document.replace("{m}", marker)
    at = int(cut * len(text))
    with_marker = text[:at] + marker + text[at:]
    _check_rule_off(smol_tok, smol_tok.encode(with_marker, add_special_tokens=False), marker)
    _check_rule_on(smol_tok, with_marker, marker)
    _check_rule_on(smol_tok, text, marker)


# --- rollouts, rewards, metrics -----------------------------------------------------------------


def _forced_rollout(make_model, texts_: list[str], **config):
    from hrpo import HybridModel, RolloutConfig, RolloutEngine

    seqs = [TOK.encode(t, add_special_tokens=False) + [TOK.eos_token_id] for t in texts_]
    model = HybridModel(make_model("qwen2"), seed=0)
    force_tokens(model, seqs, fill=TOK.eos_token_id)
    cfg = RolloutConfig(max_completion_length=max(map(len, seqs)) + 2, compact_finished=False, **config)
    return RolloutEngine(model, TOK, cfg).generate(["what is 2 + 3 ?"] * len(seqs), seed=0), seqs


def test_rollout_thinking_mask_follows_the_heading_rule(make_model):
    texts_ = [ex[0] for ex in HEADING_EXAMPLES]
    ro, seqs = _forced_rollout(make_model, texts_, ignore_marker_headings=True)
    assert ro.completion_texts == texts_
    for i, (text, seq) in enumerate(zip(texts_, seqs, strict=True)):
        n = len(seq)
        assert ro.completion_ids[i, :n].tolist() == seq
        body = seq[:-1]
        flags = expected_flags(text, "####", prefix_ends(TOK, body))
        assert ro.thinking_mask[i, : n - 1].tolist() == [not f for f in flags], text
        assert not ro.thinking_mask[i, n - 1 :].any()  # EOS and padding
        think = ro.thinking_mask[i]
        assert (ro.latents[i][~think] == 0).all() and (ro.latents[i][think].abs().sum(-1) > 0).all()
    # The first example thinks again after its heading: the mask is not a prefix.
    first = ro.thinking_mask[0, : len(seqs[0]) - 1].tolist()
    assert first.index(False) < len(first) - 1 - first[::-1].index(True)


def test_rollout_without_the_rule_stops_thinking_at_a_heading(make_model):
    text = "#### Step 1\nAdd them.\n#### 5"
    ro, seqs = _forced_rollout(make_model, [text])
    body = seqs[0][:-1]
    assert ro.thinking_mask[0, : len(body)].tolist() == [not f for f in oracle(body, "####")]
    assert ro.thinking_mask[0].sum() == 1  # only the first "##"


@pytest.mark.parametrize("task_name", ["gsm8k", "arithmetic"])
def test_strict_reward_skips_a_heading(task_name):
    from hrpo.tasks import get_task

    task = get_task(task_name)
    assert task.ignore_marker_headings
    assert task.score("#### Step 1\nAdd.\n#### 5", "5", strict_format=True) == 1.0
    assert task.format_score("#### Step 1\nAdd.\n#### 5") == 1.0
    assert task.extract_answer("#### Step 1\nAdd.\n#### 5") == "5"
    assert task.score("#### 5 #### 5", "5", strict_format=True) == 0.0  # two answer markers
    assert task.score("#### Answer: 5\nDone.", "5") == 0.0  # read as a heading: no answer


def test_choice_and_qa_marker_counts():
    from hrpo.tasks.choice import ARCChallengeTask
    from hrpo.tasks.math import MathTask
    from hrpo.tasks.qa import QATask

    arc = ARCChallengeTask()
    assert arc.score("#### Step 1\nThink.\n#### B", "B", strict_format=True) == 1.0
    assert arc.score("#### B\nBecause it is.", "B", strict_format=True) == 1.0
    assert arc.score("#### Step 1\nThink.\n#### B", "B", strict_format=True, options=["x", "y"]) == 1.0
    qa = QATask()  # answers can be words: no heading rule
    assert not qa.ignore_marker_headings
    assert qa.score("#### Paris\nIt is the capital.", '["Paris"]', strict_format=True) == 1.0
    assert qa.score("#### Step\nx\n#### Paris", '["Paris"]', strict_format=True) == 0.0
    assert not MathTask.ignore_marker_headings


def test_trainer_logs_multiple_and_heading_markers(tmp_path, make_model):
    from hrpo.config import HRPOConfig
    from hrpo.tasks import get_task
    from hrpo.trainer import HRPOTrainer

    texts_ = ["#### 1 #### 2", "#### Step 1\nAdd.\n#### 5", "no marker", "#### 3"]
    seqs = [TOK.encode(t, add_special_tokens=False) for t in texts_]
    width = max(map(len, seqs))  # equal lengths: every row ends at the same step
    newline = TOK.encode("\n", add_special_tokens=False)
    seqs = [s + newline * (width - len(s)) + [TOK.eos_token_id] for s in seqs]
    rows = [{"prompt": f"what is {i} + 1 ?", "answer": "5"} for i in range(8)]
    cfg = HRPOConfig(
        output_dir=str(tmp_path / "run"),
        max_steps=1,
        num_generations=2,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        max_completion_length=width + 2,
        eval_limit=0,
        lora_r=4,
        lora_alpha=8,
        seed=0,
    )
    tr = HRPOTrainer(
        args=cfg,
        train_dataset=rows,
        model=make_model("qwen2"),
        processing_class=TOK,
        task=get_task("arithmetic"),
        progress=False,
    )
    force_tokens(tr.model, seqs, fill=TOK.eos_token_id)  # the engine's model
    assert tr.engine.config.ignore_marker_headings
    _, metrics = tr.train_step(0)
    assert metrics["multiple_markers"] == pytest.approx(0.25)  # "#### 1 #### 2"
    assert metrics["heading_markers"] == pytest.approx(0.25)  # "#### Step 1 …"
    assert metrics["rewards/arithmetic_accuracy/mean"] == pytest.approx(0.25)  # the heading one: 5


def test_evaluation_counts_markers(tmp_path, make_model):
    from hrpo.evaluation import evaluate
    from hrpo.model import HybridModel
    from hrpo.rollout import RolloutConfig
    from hrpo.tasks import get_task

    texts_ = ["#### 1 #### 2", "#### Step 1\nAdd.\n#### 5"]
    seqs = [TOK.encode(t, add_special_tokens=False) + [TOK.eos_token_id] for t in texts_]
    model = HybridModel(make_model("qwen2"), seed=0)
    force_tokens(model, seqs, fill=TOK.eos_token_id)
    rows = [{"prompt": "what is 2 + 3 ?", "answer": "5"}, {"prompt": "what is 1 + 4 ?", "answer": "5"}]
    cfg = RolloutConfig(max_completion_length=20, compact_finished=False)  # rule from the task
    result = evaluate(model, TOK, get_task("gsm8k"), rows, cfg, batch_size=2, progress=False)
    preds = result["predictions"]
    assert [p["answer_markers"] for p in preds] == [2, 1] and [p["heading_markers"] for p in preds] == [0, 1]
    assert result["multiple_markers"] == 0.5 and result["heading_markers"] == 0.5
    assert [p["correct"] for p in preds] == [False, True]
    assert preds[1]["thinking_tokens"] > 2  # thinking resumed after the heading


def test_cli_generate_and_inspect_take_the_heading_flag(tiny_dir, monkeypatch, capsys):
    import hrpo.rollout
    from hrpo.cli import main

    used = []

    class Recording(MarkerTracker):
        def __init__(self, *args, ignore_headings: bool = False, **kw):
            used.append(ignore_headings)
            super().__init__(*args, ignore_headings=ignore_headings, **kw)

    monkeypatch.setattr(hrpo.rollout, "MarkerTracker", Recording)
    common = ["--model", str(tiny_dir), "--max-new-tokens", "2", "--json"]
    assert main(["generate", *common, "--greedy", "--ignore-marker-headings", "hi"]) == 0
    assert main(["generate", *common, "--greedy", "hi"]) == 0
    assert main(["inspect", *common, "--ignore-marker-headings", "hi"]) == 0
    assert used == [True, False, True]
    capsys.readouterr()
