"""The authors' grading protocol (``paper``, spec §7): each rule as a table, and where it differs from ours."""

import json

import pytest

from hrpo.tasks import (
    ARCChallengeTask,
    ArithmeticTask,
    GSM8KTask,
    MathTask,
    MMLUStemTask,
    QATask,
    Task,
    get_task,
)
from hrpo.tasks.paper import (
    PAPER_MATCHERS,
    paper_choice_letter,
    paper_extract,
    paper_grade,
    paper_last_number,
    paper_math_answer,
    paper_math_match,
    paper_math_normalize,
    paper_number_form,
    paper_numeric_match,
    paper_qa_match,
    paper_text_match,
)

# (completion, marker, extracted): the last piece after the marker, stripped, one final period dropped.
EXTRACT = [
    ("so 48 + 24 #### 72.", "####", "72"),
    ("no marker at all, the answer is 5.", "####", "no marker at all, the answer is 5"),
    ("a #### b #### c", "####", "c"),
    ("#### 72..", "####", "72."),  # only one period goes
    ("#### 72 .", "####", "72 "),  # stripped first, so the space before the period stays
    ("####\n  42\n", "####", "42"),
    ("####", "####", ""),
    ("x ANSWER: 7", "ANSWER:", "7"),
    ("##### 5", "####", "# 5"),  # split left to right, as the authors' str.split
    ("######## 5", "####", "5"),
]


@pytest.mark.parametrize(("completion", "marker", "extracted"), EXTRACT)
def test_extract(completion, marker, extracted):
    assert paper_extract(completion, marker) == extracted


# (number token, normal form): integers as integers, terminating values as decimals, others p/q.
NUMBER_FORMS = [
    ("72", "72"),
    ("072", "72"),
    ("+5", "5"),
    ("-0", "0"),
    ("72.0", "72"),
    ("2.50", "2.5"),
    ("-0.750", "-0.75"),
    ("3/4", "0.75"),
    ("-3/4", "-0.75"),
    ("10/4", "2.5"),
    ("8/4", "2"),
    ("1/8", "0.125"),
    ("2/6", "1/3"),  # no finite decimal: the fraction in lowest terms (the authors' float: 0.333...)
    ("1/0", "1/0"),  # no value: kept as written (the authors' eval raised)
    ("9" * 1001, "9" * 1001),  # past MAX_NUMBER_CHARS: kept as written
]


@pytest.mark.parametrize(("token", "form"), NUMBER_FORMS, ids=lambda x: str(x)[:20])
def test_number_form(token, form):
    assert paper_number_form(token) == form


# (extracted answer, reference, match) under the GSM8K rule: the last number decides.
NUMERIC = [
    ("72", "72", True),
    ("2 + 3 = 5", "5", True),  # the last number, whatever came before
    ("3 or 4", "4", True),  # a hedge: the last candidate counts
    ("4 or 3", "4", False),
    ("1,000", "1000", True),  # commas removed
    ("1,000", "1,000", True),
    ("$1,250.50", "1250.5", True),
    ("72.0", "72", True),
    ("3/4", "0.75", True),
    ("0.75", "3/4", True),
    ("6/8", "3/4", True),
    ("1/3", "0.3333333333333333", False),  # exact values, not floats
    ("2/6", "1/3", True),
    (".5", "0.5", False),  # ".5" has no digit before the point: the number read is 5
    ("-5", "5", False),
    ("5 apples", "5", True),
    ("1e3", "1000", False),  # not a form: the numbers read are 1 and 3
    ("\\frac{1}{2}", "0.5", False),  # bare LaTeX: the last number is 2
    ("seventy-two", "72", False),  # no number
    ("72", "no number", False),
    ("", "0", False),
]


@pytest.mark.parametrize(("extracted", "reference", "match"), NUMERIC)
def test_numeric_match(extracted, reference, match):
    assert paper_numeric_match(extracted, reference) is match


def test_last_number():
    assert paper_last_number("from 1,234 to 2,500.50") == "2500.5"
    assert paper_last_number("none") is None


# (text, the MATH rule's answer): last box, else last LaTeX span, else last number.
MATH_ANSWER = [
    ("\\boxed{\\dfrac{1}{2}}", "\\dfrac{1}{2}"),
    ("first \\boxed{1} then \\boxed{\\frac{2}{3}}", "\\frac{2}{3}"),
    ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
    ("\\boxed{unclosed", None),  # "boxed" in the text but no closed box: no answer
    ("\\boxed 5", None),
    ("the boxed answer is 5", None),
    ("$x$ and $\\frac{1}{2}$", "\\frac{1}{2}"),
    ("\\[ 3\\sqrt{2} \\]", "3\\sqrt{2}"),
    ("\\( 7 \\) then $$ 8 $$", "8"),
    ("$$ 9 $$ then \\( 10 \\)", "10"),
    ("costs $5 and $6 more", "5 and"),  # dollar signs in prose read as a span, as the authors' rule does
    ("$ unclosed 12", "12"),  # an unclosed span is no span: the last number
    ("\\frac{1}{2}", "2"),  # bare LaTeX collapses to its last number
    ("1,000", "000"),  # commas are not removed here
    ("-3/4", "-3/4"),
    ("no answer", None),
]


@pytest.mark.parametrize(("text", "answer"), MATH_ANSWER)
def test_math_answer(text, answer):
    assert paper_math_answer(text) == answer


# (text, normal form) for the §7 steps of Hendrycks' normalisation.
MATH_NORMALIZE = [
    ("\\frac{1}{2}", "\\frac{1}{2}"),
    ("\\dfrac{1}{2}", "\\frac{1}{2}"),
    ("\\tfrac12", "\\frac{1}{2}"),
    ("\\frac12", "\\frac{1}{2}"),
    ("\\frac1{72}", "\\frac{1}{72}"),
    ("\\frac{72}1", "\\frac{72}1"),  # as in Hendrycks: only a leading unbraced numerator is fixed
    ("\\sqrt2", "\\sqrt{2}"),
    ("3/4", "\\frac{3}{4}"),
    ("-3/4", "\\frac{-3}{4}"),
    ("03/4", "03/4"),  # not as Python writes the integer
    ("x/4", "x/4"),
    ("x = 5", "5"),
    ("k=5", "5"),
    ("xy = 5", "xy=5"),  # a prefix of three characters stays
    ("a = b = 5", "a=b=5"),
    ("5 \\text{ cm}", "5"),  # units after "\text{ " dropped
    ("\\text{Evelyn}", "evelyn"),  # \text{} unwrapped, lower-cased
    ("\\left( 1, 2 \\right)", "(1,2)"),
    ("90^\\circ", "90"),
    ("90^{\\circ}", "90"),
    ("\\$5", "5"),
    ("50\\%", "50"),
    (".5", "0.5"),
    ("0.5", "0.5"),  # Hendrycks' 0.5 -> \frac{1}{2} is not among §7's steps
    ("1\n000", "1000"),
    ("\\!1", "1"),
    ("\\pi", "\\pi"),
    ("\\Delta", "\\delta"),
    ("\\frac", "\\frac"),  # Hendrycks' code would raise: left as it is
    ("", ""),
]


@pytest.mark.parametrize(("text", "normal"), MATH_NORMALIZE)
def test_math_normalize(text, normal):
    assert paper_math_normalize(text) == normal


MATH_MATCH = [
    ("\\boxed{\\dfrac{1}{2}}", "\\frac{1}{2}", True),
    ("$\\frac12$", "\\frac{1}{2}", True),
    ("\\boxed{3/4}", "\\frac{3}{4}", True),
    ("$x = 5$", "5", True),
    ("$5 \\text{ cm}$", "5", True),
    ("$\\text{(A)}$", "(a)", True),
    ("\\frac{1}{2}", "\\frac{1}{2}", False),  # bare LaTeX: the answer read is 2
    ("\\boxed{0.5}", "\\frac{1}{2}", False),  # strings, not values
    ("\\boxed{2}", "2", True),
    ("1,000", "1000", False),
    ("nothing", "5", False),
]


@pytest.mark.parametrize(("extracted", "reference", "match"), MATH_MATCH)
def test_math_match(extracted, reference, match):
    assert paper_math_match(extracted, reference) is match


# (extracted, letter read): upper-cased, the LAST standalone letter A-J, else the whole text.
CHOICE = [
    ("B", "B"),
    ("b", "B"),
    ("(C)", "C"),
    ("The answer is B.", "B"),
    ("B. a force", "A"),  # "a" upper-cased is a letter, and the last one
    ("I think it is a", "A"),
    ("I think so", "I"),
    ("B or C", "C"),
    ("J", "J"),
    ("K", "K"),  # no letter A-J: the whole text
    ("none of these", "NONE OF THESE"),
    ("  ", ""),
]


@pytest.mark.parametrize(("extracted", "letter"), CHOICE)
def test_choice_letter(extracted, letter):
    assert paper_choice_letter(extracted) == letter


def test_choice_letter_count_and_bad_counts():
    assert paper_choice_letter("B or E", n_letters=4) == "B"
    for bad in (0, 27, True, "4"):
        with pytest.raises(ValueError, match="n_letters"):
            paper_choice_letter("A", n_letters=bad)


QA = [
    ("The Beatles!", '["Beatles"]', True),
    ("an apple", ["apple", "pear"], True),
    ("the  U.S.", "us", True),
    ("Beatles, because they recorded it", '["Beatles"]', False),  # the whole extracted text counts
    ("Paris", '["London", "Berlin"]', False),
    ("", "a", True),  # both normalise to nothing
    ("Paris", "[not json", False),
]


@pytest.mark.parametrize(("extracted", "golds", "match"), QA)
def test_qa_match(extracted, golds, match):
    assert paper_qa_match(extracted, golds) is match


def test_text_match_strips_the_reference_like_the_answer():
    assert paper_text_match("blue", " blue. ")
    assert not paper_text_match("blue", "Blue")


# (completion, eval, reward): evaluation is the match alone; the reward also wants one marker,
# counted as a plain substring (a '#### Step' heading counts).
FORMAT = [
    ("#### 5", 1.0, 1.0),
    ("no marker, 5", 1.0, 0.0),
    ("#### 5 #### 5", 1.0, 0.0),
    ("#### 4 #### 5", 1.0, 0.0),
    ("#### Step 1\nadd\n#### 5", 1.0, 0.0),
    ("##### 5", 1.0, 1.0),  # "#####" holds one "####"; the piece after it, "# 5", reads 5
    ("#### 4", 0.0, 0.0),
]


@pytest.mark.parametrize(("completion", "evaluation", "reward"), FORMAT)
def test_reward_and_evaluation(completion, evaluation, reward):
    assert paper_grade("number", completion, "5", strict_format=False) == evaluation
    assert paper_grade("number", completion, "5", strict_format=True) == reward


def test_grade_odd_inputs():
    assert paper_grade("number", None, "5") == 0.0
    assert paper_grade("number", "#### 5", None) == 0.0
    assert paper_grade("number", "#### 5", 5) == 1.0  # a non-string reference is graded as its str
    assert paper_grade("qa", "#### Paris", ["Paris"]) == 1.0
    assert paper_grade("text", "ANSWER: blue", "blue", marker="ANSWER:", strict_format=True) == 1.0
    with pytest.raises(KeyError):
        paper_grade("poetry", "#### 5", "5")


ADVERSARIAL = [
    "{" * 1_000_000,
    "}" * 1_000_000,
    "\\boxed{" * 140_000,
    "boxed" + "{" * 999_000,
    "\\boxed{" + "{" * 999_000,
    "9" * 1_000_000,
    "1/" * 500_000,
    "1." * 500_000,
    "-" * 1_000_000,
    "$" * 1_000_000,
    "$a" * 500_000,
    "\\[" * 500_000,
    "\\(" * 250_000 + "\\)" * 250_000,
    "\\frac" * 200_000,
    "\\sqrt" * 200_000,
    "\\text{" * 160_000,
    "\\text{ " * 140_000,
    "=" * 1_000_000,
    "#" * 1_000_000,
    "a " * 500_000,
    "the " * 250_000,
]


@pytest.mark.parametrize("text", ADVERSARIAL, ids=lambda t: repr(t[:12]))
def test_megabyte_inputs_just_return(text):
    for kind in PAPER_MATCHERS:
        for completion in (text, "#### " + text):
            assert paper_grade(kind, completion, "5") in (0.0, 1.0)
            assert paper_grade(kind, completion, text[:1000], strict_format=True) in (0.0, 1.0)
    assert isinstance(paper_math_normalize(text), str)


# --- the protocol on the real tasks, through Task.grade ------------------------------------------

OPTIONS = ["a force", "a mass", "a speed", "a charge"]
TASKS = {
    "gsm8k": GSM8KTask,
    "arithmetic": ArithmeticTask,
    "math": MathTask,
    "mmlu_stem": MMLUStemTask,
    "arc_challenge": ARCChallengeTask,
    "qa": QATask,
}

# (task, completion, reference, hrpo (eval, reward), paper (eval, reward)).
PROTOCOLS_TABLE = [
    # The last number counts under paper; ours wants one value.
    ("gsm8k", "#### 2 + 3 = 5", "5", (0, 0), (1, 1)),
    ("gsm8k", "#### 3 or 4", "4", (0, 0), (1, 1)),
    ("arithmetic", "#### 5 (since 2+3=5)", "5", (0, 0), (1, 1)),
    # No marker: paper reads the whole completion (evaluation only); ours gives 0.
    ("gsm8k", "The answer is 72.", "72", (0, 0), (1, 0)),
    ("math", "so the answer is $\\frac{1}{2}$", "\\frac{1}{2}", (0, 0), (1, 0)),
    # Several markers: no reward under both; evaluation reads the last piece.
    ("gsm8k", "#### 4 #### 5", "5", (1, 0), (1, 0)),
    # A '#### Step' heading: not a marker for our number tasks, a second marker for the authors.
    ("gsm8k", "#### Step 1\nadd them\n#### 5", "5", (1, 1), (1, 0)),
    # Agreements.
    ("gsm8k", "#### 1,000", "1000", (1, 1), (1, 1)),
    ("gsm8k", "#### 72.", "72", (1, 1), (1, 1)),
    ("gsm8k", "#### 3/4", "0.75", (1, 1), (1, 1)),
    ("gsm8k", "#### \\frac{1}{2}", "0.5", (0, 0), (0, 0)),
    ("gsm8k", "#### .5", "0.5", (1, 1), (0, 0)),  # paper reads 5
    ("arithmetic", "#### $1,250.50", "1250.5", (1, 1), (1, 1)),
    # MATH: bare LaTeX collapses to its last number under paper; ours compares values.
    ("math", "#### \\frac{1}{2}", "\\frac{1}{2}", (1, 1), (0, 0)),
    ("math", "#### \\frac{1}{2}", "0.5", (1, 1), (0, 0)),
    ("math", "#### 0.5", "\\frac{1}{2}", (1, 1), (0, 0)),
    ("math", "#### 1,000", "1000", (1, 1), (0, 0)),
    ("math", "#### \\boxed{\\dfrac{1}{2}}", "\\frac{1}{2}", (1, 1), (1, 1)),
    ("math", "#### x = 5", "5", (1, 1), (1, 1)),
    ("math", "#### $5 \\text{ cm}$", "5", (1, 1), (1, 1)),
    # Choice: upper-casing turns "a"/"I" into letters, and the last one counts.
    ("mmlu_stem", "#### B. a force", "B", (1, 1), (0, 0)),
    ("mmlu_stem", "#### I think it is a", "A", (0, 0), (1, 1)),
    ("arc_challenge", "#### (b)", "B", (0, 0), (1, 1)),
    ("arc_challenge", "#### The answer is B.", "B", (1, 1), (1, 1)),
    # QA: ours grades the first line after the marker, paper the whole extracted text.
    ("qa", "#### The Beatles!", '["Beatles"]', (1, 1), (1, 1)),
    ("qa", "#### Beatles\nbecause they recorded it", '["Beatles"]', (1, 1), (0, 0)),
    ("qa", "Beatles", '["The Beatles"]', (0, 0), (1, 0)),
]


@pytest.mark.parametrize(
    ("task", "completion", "reference", "hrpo", "paper"), PROTOCOLS_TABLE, ids=lambda x: str(x)[:30]
)
def test_protocols_through_task_grade(task, completion, reference, hrpo, paper):
    row = {"answer": reference, "options": OPTIONS} if task in ("mmlu_stem", "arc_challenge") else {}
    row.setdefault("answer", reference)
    for protocol, expected in (("hrpo", hrpo), ("paper", paper)):
        t = get_task(task, protocol=protocol)
        got = tuple(t.grade([completion], [row], strict_format=strict)[0] for strict in (False, True))
        assert got == expected, protocol
        # TRL's reward function and the conversational form take the same path.
        messages = [{"role": "assistant", "content": completion}]
        assert t.reward_function()(None, [messages], **{k: [v] for k, v in row.items()}) == [expected[1]]


def test_protocol_is_a_setting_of_every_task(tmp_path):
    for name, cls in TASKS.items():
        assert get_task(name).protocol == "hrpo"
        task = get_task(name, protocol="paper")
        assert isinstance(task, cls) and task.protocol == "paper"
        assert "protocol='paper'" in repr(task)
        assert task.answer_kind in PAPER_MATCHERS
    assert [TASKS[n].answer_kind for n in TASKS] == ["number", "number", "math", "choice", "choice", "qa"]
    assert Task.answer_kind == "text"
    for bad in ("Paper", "", None, "authors"):
        with pytest.raises(ValueError, match="protocol must be one of 'hrpo', 'paper'"):
            get_task("gsm8k", protocol=bad)


def test_a_kind_without_a_paper_rule_is_refused():
    class Poem(Task):
        answer_kind = "poem"

    assert Poem().protocol == "hrpo"
    with pytest.raises(ValueError, match="answer_kind = 'poem' has no paper rule"):
        Poem(protocol="paper")


def test_a_generic_task_grades_by_equality_under_paper():
    class Colour(Task):
        pass

    task = Colour(protocol="paper")
    rows = [{"answer": "blue."}] * 3
    assert task.grade(["#### blue", "blue", "#### Blue"], rows) == [1.0, 1.0, 0.0]
    assert task.grade(["#### blue", "blue"], rows[:2], strict_format=True) == [1.0, 0.0]


def test_loaded_rows_grade_under_paper(tmp_path):
    gsm = tmp_path / "gsm.jsonl"
    gsm.write_text(json.dumps({"question": "2 + 3?", "answer": "2 + 3 = 5 #### 5"}) + "\n")
    task = get_task("gsm8k", data_files=str(gsm), protocol="paper")
    rows = task.load("train")
    assert task.grade(["2 + 3 = 5 #### 2 + 3 = 5"], rows, strict_format=True) == [1.0]
    mmlu = tmp_path / "mmlu.jsonl"
    record = {"question": "F = m a: F is", "choices": OPTIONS, "answer": 0, "subject": "college_physics"}
    mmlu.write_text(json.dumps(record) + "\n")
    task = get_task("mmlu_stem", data_files=str(mmlu), protocol="paper", stem_only=False)
    assert task.grade(["#### B. a force", "#### I pick A"], task.load("train") * 2) == [1.0, 1.0]
    qa = tmp_path / "qa.jsonl"
    qa.write_text(
        json.dumps({"question": "Abbey Road?", "golden_answers": ["The Beatles", "Beatles"]}) + "\n"
    )
    task = QATask(str(qa), protocol="paper", num_passages=0)
    assert task.grade(["#### the beatles.", "#### Beatles, a band"], task.load("train") * 2) == [1.0, 0.0]
    assert ArithmeticTask(difficulty=0, num_train=1, num_test=1, protocol="paper").load("test")[0]["answer"]


def test_other_graders_keep_our_rules_under_paper():
    # Only Task.grade switches; the per-row hrpo grader stays reachable as it was.
    task = GSM8KTask(protocol="paper")
    assert task.grade_row("#### 2 + 3 = 5", {"answer": "5"}) == 0.0
    assert task.paper_grade_row("#### 2 + 3 = 5", {"answer": "5"}) == 1.0
