"""Multiple-choice tasks: MMLU-STEM, ARC-Challenge, OpenBookQA and QASC, graded by the option letter.

The user turn is ``Question: {q}\\nOptions:\\nA. {opt}\\nB. {opt}...`` and the reference is the
correct option's letter. Grading reads the text after the last marker and takes the first
standalone capital letter that names a valid option, so "B. a force", "(B)", "**B**",
"\\boxed{B}" and "Answer: B" all give B. The reference code upper-cased the answer first, which
turned the article "a" and the pronoun "I" into choices; here lowercase letters never count, and
a capital "A"/"I" that reads as prose ("A force ...", "I think ...") is only a last resort.
"""

from __future__ import annotations

import functools
import re
import string
from collections.abc import Mapping, Sequence
from typing import Any

from hrpo.tasks.base import DEFAULT_MARKER, FileTask, Row, clean_answer
from hrpo.tasks.data import field, load_split

LETTERS = string.ascii_uppercase

MMLU_HUB_ID = "cais/mmlu"
ARC_HUB_ID = "allenai/ai2_arc"
OPENBOOKQA_HUB_ID = "allenai/openbookqa"
QASC_HUB_ID = "allenai/qasc"

MMLU_STEM_SUBJECTS: frozenset[str] = frozenset(
    {
        "abstract_algebra",
        "anatomy",
        "astronomy",
        "college_biology",
        "college_chemistry",
        "college_computer_science",
        "college_mathematics",
        "college_physics",
        "computer_security",
        "conceptual_physics",
        "electrical_engineering",
        "elementary_mathematics",
        "high_school_biology",
        "high_school_chemistry",
        "high_school_computer_science",
        "high_school_mathematics",
        "high_school_physics",
        "high_school_statistics",
        "machine_learning",
    }
)

# Capital letters that also start English prose ("A force ...", "I think ...").
_PROSE_LETTERS = frozenset("AI")


@functools.lru_cache(maxsize=32)
def _letter_pattern(n_options: int) -> re.Pattern[str]:
    # One character of look-around on each side keeps the scan linear in the text length.
    return re.compile(rf"(?<!\w)([A-{LETTERS[n_options - 1]}])(?!\w)")


def _reads_as_prose(text: str, end: int) -> bool:
    """Whether the letter ending at ``end`` is followed by one space and a lowercase word."""
    nxt = text[end : end + 2]
    return len(nxt) == 2 and nxt[0] in " \t" and nxt[1] in string.ascii_lowercase


def extract_choice(text: Any, n_options: int, options: Sequence[str] | None = None) -> str | None:
    """The option letter an answer names, or None; never raises, linear in ``len(text)``.

    The first standalone capital among ``A``..the ``n_options``-th letter wins, skipping an
    "A"/"I" followed by a lowercase word (an article or pronoun). If none is found and
    ``options`` (the option texts) are given, an answer equal to exactly one option's text
    (case-insensitive, stripped) names that option. A skipped prose-like letter is the last resort,
    so "A is correct" still gives A.
    """
    if not isinstance(text, str) or isinstance(n_options, bool) or not isinstance(n_options, int):
        return None
    if not 1 <= n_options <= len(LETTERS):
        return None
    prose_letter = None
    for m in _letter_pattern(n_options).finditer(text):
        letter = m.group(1)
        if letter in _PROSE_LETTERS and _reads_as_prose(text, m.end()):
            prose_letter = prose_letter or letter
            continue
        return letter
    if options is not None:
        wanted = clean_answer(text).casefold()
        hits = [i for i, opt in enumerate(options[:n_options]) if isinstance(opt, str)]
        hits = [i for i in hits if wanted and clean_answer(options[i]).casefold() == wanted]
        if len(hits) == 1:
            return LETTERS[hits[0]]
    return prose_letter


def format_options(question: str, options: Sequence[str]) -> str:
    """The user turn ``Question: ...\\nOptions:\\nA. ...`` for one problem."""
    lines = [f"Question: {question}", "Options:"]
    lines += [f"{LETTERS[i]}. {opt}" for i, opt in enumerate(options)]
    return "\n".join(lines)


def _reference_letter(reference: Any) -> str | None:
    ref = clean_answer(reference).strip("()") if isinstance(reference, str) else ""
    return ref if len(ref) == 1 and ref in LETTERS else None


def _option_texts(options: Any) -> list[str] | None:
    # Rows from Arrow/pandas may hold tuples or arrays; anything not a list of strings is ignored.
    if isinstance(options, (str, bytes)) or not isinstance(options, Sequence):
        return None
    if not options or len(options) > len(LETTERS) or not all(isinstance(o, str) for o in options):
        return None
    return list(options)


class MultipleChoiceTask(FileTask):
    """Multiple choice with letter answers; records ``question``, ``choices`` (list), ``answer``.

    ``answer`` is a 0-based index (int or digit string) or a letter. ``data_files`` maps split
    names to local JSON/JSONL/Parquet files (a single path means the train split); ``columns``
    maps this task's field names to the file's. Subclasses set the hub dataset and override
    :meth:`_parse_record` for other layouts.
    """

    name = "multiple_choice"
    splits: tuple[str, ...] = ("train", "validation", "test")
    answer_format = (
        "The answer is one of the option letters: after the marker write only the letter (e.g. B)."
    )
    ignore_marker_headings = True  # answers are option letters: a '#### Step' heading is no marker
    answer_kind = "choice"
    # Letters accepted when grading without the row's options (the widest question of the data set).
    max_options = 4
    hub_id: str | None = None
    hub_config: str | None = None
    hub_splits: Mapping[str, str] = {}
    # Where the question is read: the first of these the record has (``columns`` maps the first).
    question_fields: tuple[str, ...] = ("question",)
    # Added to the error for an empty answer key (a split published without its keys).
    missing_key_hint = ""

    # --- data -----------------------------------------------------------------------------------

    def _load(self, split: str, limit: int | None) -> list[Row]:
        # Hub split names differ (MMLU trains on "auxiliary_train"); local files use ours.
        source_split = split if self.data_files else self.hub_splits.get(split, split)
        records, where = load_split(source_split, self.data_files, self.hub_id, self.hub_config)
        rows: list[Row] = []
        for i, rec in enumerate(records):
            if limit is not None and len(rows) >= limit:
                break
            parsed = self._parse_record(rec, where, i)
            if parsed is None:
                continue
            question, options, letter, extra = parsed
            rows.append(
                {
                    "prompt": self.make_prompt(format_options(question, options)),
                    "answer": letter,
                    "question": question,
                    "options": options,
                    "id": f"{split}-{i}",
                    **extra,
                }
            )
        return rows

    def _parse_record(
        self, rec: Any, where: str, i: int
    ) -> tuple[str, list[str], str, dict[str, Any]] | None:
        """``(question, option texts, reference letter, extra row fields)``, or None to skip."""
        question = self._question(rec, where, i)
        options = self._options(field(rec, "choices", where, i, self.columns), where, i)
        answer = field(rec, "answer", where, i, self.columns)
        return question, options, self._answer_letter(answer, len(options), where, i), {}

    def _question(self, rec: Any, where: str, i: int) -> str:
        """The question: the mapped column, else the first of ``question_fields`` the record has."""
        first = self.question_fields[0]
        if first in self.columns or not isinstance(rec, dict):
            return str(field(rec, first, where, i, self.columns))
        for name in self.question_fields:
            if rec.get(name) is not None:
                return str(rec[name])
        return str(field(rec, first, where, i))  # the error names the missing field

    def _parse_labelled(self, rec: Any, where: str, i: int) -> tuple[str, list[str], str, dict[str, Any]]:
        """A record in the AI2 layout (see :class:`LabelledChoiceTask`)."""
        question = self._question(rec, where, i)
        choices = field(rec, "choices", where, i, self.columns)
        key = field(rec, "answerKey", where, i, self.columns)
        name = self.columns.get("choices", "choices")
        key_name = self.columns.get("answerKey", "answerKey")
        if isinstance(choices, Mapping):
            if "text" not in choices or "label" not in choices:
                raise ValueError(f"{where}: record {i}: field {name!r} needs 'text' and 'label' lists")
            options = self._options(choices["text"], where, i)
            labels = choices["label"]
            if isinstance(labels, (str, bytes)) or not isinstance(labels, Sequence):
                raise ValueError(f"{where}: record {i}: field {name!r} has no list of labels")
            labels = [str(label).strip() for label in labels]
            if len(labels) != len(options):
                raise ValueError(
                    f"{where}: record {i}: field {name!r} has {len(options)} texts but {len(labels)} labels"
                )
        else:
            # A plain list of options is labelled A, B, C... like the prompt.
            options = self._options(choices, where, i)
            labels = list(LETTERS[: len(options)])
        key_text = str(key).strip()
        if not key_text:
            hint = f" ({self.missing_key_hint})" if self.missing_key_hint else ""
            raise ValueError(f"{where}: record {i}: field {key_name!r} is empty{hint}")
        if key_text not in labels:
            raise ValueError(
                f"{where}: record {i}: field {key_name!r} = {key!r} is not one of the labels {labels}"
            )
        return question, options, LETTERS[labels.index(key_text)], {}

    def _options(self, choices: Any, where: str, i: int) -> list[str]:
        name = self.columns.get("choices", "choices")
        if isinstance(choices, (str, bytes, Mapping)) or not isinstance(choices, Sequence):
            raise ValueError(f"{where}: record {i}: field {name!r} must be a list of options")
        if not 2 <= len(choices) <= len(LETTERS):
            raise ValueError(f"{where}: record {i}: field {name!r} has {len(choices)} options, need 2-26")
        return [str(c) for c in choices]

    def _answer_letter(self, answer: Any, n_options: int, where: str, i: int) -> str:
        """The letter of ``answer``: a 0-based index (int or digits) or a letter within range."""
        index = None
        if isinstance(answer, int) and not isinstance(answer, bool):
            index = answer
        elif isinstance(answer, str) and answer.strip().isdigit():
            index = int(answer.strip())
        elif isinstance(answer, str) and len(answer.strip()) == 1 and answer.strip() in LETTERS:
            index = LETTERS.index(answer.strip())
        if index is None or not 0 <= index < n_options:
            name = self.columns.get("answer", "answer")
            raise ValueError(
                f"{where}: record {i}: field {name!r} = {answer!r} is not an option "
                f"(an index 0-{n_options - 1} or a letter A-{LETTERS[n_options - 1]})"
            )
        return LETTERS[index]

    # --- grading --------------------------------------------------------------------------------

    def extract_choice(self, completion: str, options: Sequence[str] | None = None) -> str | None:
        """The option letter after the last marker, or None (no marker, no letter)."""
        answer = self.extract_answer(completion)
        if answer is None:
            return None
        texts = _option_texts(options)
        return extract_choice(answer, len(texts) if texts else self.max_options, texts)

    def is_correct(self, predicted: str, reference: str, options: Sequence[str] | None = None) -> bool:
        """Whether ``predicted`` names the reference letter among the valid ones.

        ``options`` (the row's option texts) bounds the valid letters to the question's own count
        and lets an answer that repeats one option's text count as that option; without them,
        letters beyond the data set's widest question (``max_options``) are invalid.
        """
        texts = _option_texts(options)
        n_options = len(texts) if texts else self.max_options
        ref = _reference_letter(reference)
        if ref is None or LETTERS.index(ref) >= n_options:
            return False
        return extract_choice(predicted, n_options, texts) == ref

    def score(
        self,
        completion: str,
        reference: str,
        *,
        strict_format: bool = False,
        options: Sequence[str] | None = None,
    ) -> float:
        """1.0 if the letter after the last marker is ``reference`` (see :meth:`is_correct`), else 0.0."""
        try:
            predicted = self.graded_answer(completion, strict_format)
            if predicted is None or not isinstance(reference, str):
                return 0.0
            return 1.0 if self.is_correct(predicted, reference, options) else 0.0
        except Exception:  # a grader must never crash training over one odd completion
            return 0.0

    def grade_row(self, completion: str, row: Row, strict_format: bool = False) -> float:
        """Graded with the row's ``options`` when it has them."""
        return self.score(
            completion, row.get("answer"), strict_format=strict_format, options=row.get("options")
        )


class MMLUStemTask(MultipleChoiceTask):
    """MMLU restricted to its STEM subjects (``cais/mmlu``, config ``all``).

    Records have ``question``, ``choices``, ``answer`` (index 0-3) and ``subject``. With
    ``stem_only`` a record whose subject is set and not in :data:`MMLU_STEM_SUBJECTS` is dropped;
    records without a subject (MMLU's auxiliary_train) are kept. Rows keep ``subject`` for
    per-subject accuracy. The hub's ``train`` split is ``auxiliary_train``. ARC-shaped records
    (``choices`` with labels, ``answerKey``) in the same files are read too, with subject
    ``arc_challenge``, so the paper's MMLU + ARC-C training mix is one list of files.
    """

    name = "mmlu_stem"
    splits = ("train", "dev", "validation", "test")
    max_options = 4  # rows of a training mix carry their own option count in the options column
    hub_id = MMLU_HUB_ID
    hub_config = "all"
    hub_splits = {"train": "auxiliary_train"}

    def __init__(
        self,
        data_files: dict[str, str | list[str]] | str | None = None,
        columns: dict[str, str] | None = None,
        *,
        stem_only: bool = True,
        marker: str = DEFAULT_MARKER,
        system_prompt: str | None = None,
        protocol: str = "hrpo",
    ) -> None:
        super().__init__(data_files, columns, marker=marker, system_prompt=system_prompt, protocol=protocol)
        self.stem_only = stem_only

    def _parse_record(
        self, rec: Any, where: str, i: int
    ) -> tuple[str, list[str], str, dict[str, Any]] | None:
        if isinstance(rec, dict) and "answerKey" in rec and self.columns.get("answer", "answer") not in rec:
            # ARC-shaped records in the same split: the paper trains on MMLU auxiliary_train + ARC-C train.
            question, options, letter, _ = self._parse_labelled(rec, where, i)
            return question, options, letter, {"subject": "arc_challenge"}
        subject_key = self.columns.get("subject", "subject")
        subject = rec.get(subject_key) if isinstance(rec, dict) else None
        subject = subject if isinstance(subject, str) else ""
        if self.stem_only and subject and subject not in MMLU_STEM_SUBJECTS:
            return None
        parsed = super()._parse_record(rec, where, i)
        assert parsed is not None
        question, options, letter, _ = parsed
        return question, options, letter, {"subject": subject}


class LabelledChoiceTask(MultipleChoiceTask):
    """Records in the AI2 layout: a question, ``choices`` = ``{"text": [...], "label": [...]}`` and
    ``answerKey`` (ARC-Challenge, OpenBookQA, QASC).

    Labels may be letters or numbers ("1".."4"); options are shown as A, B, C... in their given
    order, so the reference is the letter at the answer key's position (answerKey "3" with labels
    1-4 gives C). ``choices`` may also be a plain list of options, labelled A, B, C... The question
    is read from the first of ``question_fields`` the record has (a ``columns`` entry for the first
    name maps it to another column).
    """

    def _parse_record(
        self, rec: Any, where: str, i: int
    ) -> tuple[str, list[str], str, dict[str, Any]] | None:
        return self._parse_labelled(rec, where, i)


class ARCChallengeTask(LabelledChoiceTask):
    """ARC-Challenge (``allenai/ai2_arc``, config ``ARC-Challenge``), 3-5 options per question.

    Reads ``question``, ``choices`` (``text``, ``label``) and ``answerKey``
    (:class:`LabelledChoiceTask`); other fields (``id``) are ignored.
    """

    name = "arc_challenge"
    max_options = 5
    hub_id = ARC_HUB_ID
    hub_config = "ARC-Challenge"


class OpenBookQATask(LabelledChoiceTask):
    """OpenBookQA (``allenai/openbookqa``, config ``main``), 4 options per question.

    Reads ``question_stem`` (or ``question`` when a file has no ``question_stem`` and ``columns``
    does not map it), ``choices`` (``text``, ``label`` A-D) and ``answerKey``; ``id`` and the
    ``additional`` config's ``fact1`` and scores are ignored. The authors evaluate the test split
    (500 questions) with the ARC-Challenge prompt: ``Question: {question_stem}`` and the options.
    """

    name = "openbookqa"
    max_options = 4
    hub_id = OPENBOOKQA_HUB_ID
    hub_config = "main"
    question_fields = ("question_stem", "question")


class QASCTask(LabelledChoiceTask):
    """QASC (``allenai/qasc``), 8 options per question.

    Reads ``question``, ``choices`` (``text``, ``label`` A-H) and ``answerKey``; ``id``, ``fact1``,
    ``fact2``, ``combinedfact`` and ``formatted_question`` (the question with its options inline)
    are ignored, as in the authors' evaluation, which shows the question and options like ARC's.
    The hub's test split is published without answer keys, so the authors evaluate the validation
    split (926 questions): here the hub's ``validation`` split is also what ``test`` loads (local
    ``data_files`` are read under the split names given).
    """

    name = "qasc"
    max_options = 8
    hub_id = QASC_HUB_ID
    hub_splits = {"test": "validation"}
    missing_key_hint = "QASC's public test split has no answer keys; evaluate its validation split"
