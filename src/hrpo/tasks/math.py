"""MATH and MATH-500 (competition problems with LaTeX answers), graded with math-verify.

Loads local JSON/JSONL/Parquet files whose records hold a problem (``question`` or ``problem``) and
a worked solution ending in ``\\boxed{...}`` or a bare final answer (``answer`` or ``solution``), or
the hub dataset ``HuggingFaceH4/MATH-500`` (test split only) through the optional ``datasets``
package when no files are given. The reference is the content of the last ``\\boxed{}``/``\\fbox{}``.

With ``math500`` (a list of the MATH-500 problems) the evaluated file is the full MATH test set, and
evaluation reports MATH on every row and MATH500 on the listed ones from the same predictions, as
the authors' MATH script does.
"""

from __future__ import annotations

import re
import threading
import time
from collections import deque
from functools import lru_cache
from pathlib import Path
from typing import Any

from hrpo.tasks.base import DEFAULT_MARKER, FileTask, Row, clean_answer
from hrpo.tasks.data import field, load_split, read_records

HUB_ID = "HuggingFaceH4/MATH-500"
MATH500 = "MATH500"

# Field names tried in order when ``columns`` does not map a field: our files use question/answer,
# the original MATH release problem/solution.
DEFAULT_FIELDS: dict[str, tuple[str, ...]] = {
    "question": ("question", "problem"),
    "answer": ("answer", "solution"),
}

# Longer predictions are not final answers, and sympy's cost grows with length.
MAX_ANSWER_CHARS = 1000
# math-verify's LaTeX parser slows down steeply with nesting (a dozen bare parentheses take seconds);
# real final answers nest a few levels at most.
MAX_NESTING = 6
# math-verify's timeouts are whole seconds of signal.alarm; one per parse/verify call.
TIMEOUT_SECONDS = 1

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])\s*")
# The argument of an unbraced box, as in "\boxed 5$".
_BARE_TOKEN_RE = re.compile(r"[^\s$]*")
# A backslash escapes the next character, so \{ and \} are not grouping braces.
_BRACE_TOKEN_RE = re.compile(r"\\.|[{}]", re.DOTALL)
_GROUP_TOKEN_RE = re.compile(r"\\[{}]|\\.|[{}()\[\]]", re.DOTALL)
_TEXT_RE = re.compile(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}")
_SPACING_RE = re.compile(r"\s+|\\[,;:! ]|\\left|\\right|\$")
# These can make sympy compute for hours: factorials, exponent towers, exponents with many digits.
# They are refused on every thread: math-verify's SIGALRM timeout can be lost (its exception was
# seen swallowed inside a garbage-collector callback, and a 1 s limit became 9.6 s).
_RISKY_RE = re.compile(
    r"!|\\binom|\\choose"
    r"|(?:\^|\*\*)\s*\{[^{}]*(?:\^|\*\*)"
    r"|(?:\^|\*\*)\s*[\w.]+\s*(?:\^|\*\*)"
    r"|(?:\^|\*\*)\s*\{?\s*[-+]?\s*\(?\s*\d{3,}"
)


def read_problem_list(path: str | Path) -> tuple[frozenset[str], frozenset[str]]:
    """The ``unique_id``s and problem texts (stripped) a problem list names (see :class:`MathTask`).

    A ``.txt`` file holds one id a line; a JSON/JSONL/Parquet file holds ids (strings) or records
    with ``unique_id`` and/or ``problem`` (or ``question``). An entry with neither is an error
    naming the file and entry.
    """
    path = Path(path).expanduser()
    if path.suffix == ".txt":
        if not path.is_file():
            raise FileNotFoundError(f"math500 list {path} does not exist")
        lines = path.read_text(encoding="utf-8").splitlines()
        return frozenset(line.strip() for line in lines if line.strip()), frozenset()
    ids, problems = set(), set()
    for n, entry in enumerate(read_records(path)):
        if isinstance(entry, str) and entry.strip():
            ids.add(entry.strip())
            continue
        found = False
        if isinstance(entry, dict):
            if isinstance(entry.get("unique_id"), str) and entry["unique_id"].strip():
                ids.add(entry["unique_id"].strip())
                found = True
            problem = entry.get("problem", entry.get("question"))
            if isinstance(problem, str) and problem.strip():
                problems.add(problem.strip())
                found = True
        if not found:
            raise ValueError(
                f"{path}: entry {n} is neither a unique_id nor a record with 'unique_id' or 'problem'"
            )
    if not ids and not problems:
        raise ValueError(f"{path}: lists no problems")
    return frozenset(ids), frozenset(problems)


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` or ``\\fbox{...}`` in ``text``, else None.

    Braces are matched (so ``\\boxed{\\frac{1}{2}}`` gives ``\\frac{1}{2}``) in one linear pass. A box
    whose braces never close gives the rest of the text; ``\\boxed 5`` gives ``5``.
    """
    # A deque of length 1 keeps the last match without holding them all.
    last = deque(_BOX_RE.finditer(text), maxlen=1)
    if not last:
        return None
    start = last[0].end()
    if not text.startswith("{", start):
        return _BARE_TOKEN_RE.match(text, start).group()
    depth = 0
    for m in _BRACE_TOKEN_RE.finditer(text, start):
        if m.group() == "{":
            depth += 1
        elif m.group() == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : m.start()].strip()
    # Unclosed (e.g. a truncated generation): the best guess is everything after the brace.
    return text[start + 1 :].strip()


def reference_answer(solution: str) -> str:
    """The final answer of a MATH solution: its last box's content, or the whole text stripped."""
    boxed = last_boxed(solution)
    return (boxed if boxed is not None else solution).strip()


def _well_formed(text: str) -> bool:
    """Whether ``text`` has balanced ``{}`` and groups nested at most ``MAX_NESTING`` deep."""
    braces = depth = 0
    for m in _GROUP_TOKEN_RE.finditer(text):
        token = m.group()
        if token in ("{", "}"):
            braces += 1 if token == "{" else -1
            if braces < 0:
                return False
        if token in ("{", "(", "[", "\\{"):
            depth += 1
            if depth > MAX_NESTING:
                return False
        elif token in ("}", ")", "]", "\\}"):
            # Half-open intervals like [1, 2) pair brackets of different kinds: count, do not match.
            depth = max(depth - 1, 0)
    return braces == 0


def _normalize(text: str) -> str:
    """A cheap canonical form for the exact-match shortcut (spacing, ``\\dfrac``, ``\\text{}``)."""
    text = _TEXT_RE.sub(r"\1", text)
    text = text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    return _SPACING_RE.sub("", text).rstrip(".")


def _parse(text: str, timeout: int | None) -> list[Any]:
    """math-verify's parse of an answer, trying the boxed form first.

    Bare LaTeX parses badly ("3\\sqrt{13}" alone parses as 3), so the boxed and ``$...$`` forms come
    first and the raw text is the last resort (plain expressions like "1/2").
    """
    from math_verify import parse

    start = time.monotonic()
    for form in (f"\\boxed{{{text}}}", f"${text}$", text):
        parsed = parse(form, parsing_timeout=timeout)
        if parsed:
            return parsed
        # A form that ran out of time means the others would too: keep the total bounded.
        if timeout is not None and time.monotonic() - start >= 0.9 * timeout:
            return []
    return []


@lru_cache(maxsize=4096)
def _parse_reference(reference: str, timeout: int | None) -> tuple[Any, ...]:
    # References repeat across a group of completions: parse each once.
    return tuple(_parse(reference, timeout))


def _timeout() -> int | None:
    """math-verify's timeout here: its signal.alarm works only in the main thread."""
    return TIMEOUT_SECONDS if threading.current_thread() is threading.main_thread() else None


def answers_match(predicted: str, reference: str) -> bool:
    """Whether two final answers are mathematically equal (math-verify); never raises.

    An exact match (after removing spacing and ``$``) short-cuts; predictions over
    ``MAX_ANSWER_CHARS`` are wrong. Inputs that could make sympy compute without bound (factorials,
    exponent towers, huge exponents) are refused unless they match exactly; in the main thread each
    math-verify call is also limited to ``TIMEOUT_SECONDS`` as a second line of defence.
    """
    try:
        if not isinstance(predicted, str) or not isinstance(reference, str):
            return False
        predicted, reference = predicted.strip(), reference.strip()
        if not predicted or not reference or len(predicted) > MAX_ANSWER_CHARS:
            return False
        if predicted == reference or _normalize(predicted) == _normalize(reference):
            return True
        if len(reference) > MAX_ANSWER_CHARS:
            return False
        if not _well_formed(predicted) or not _well_formed(reference):
            return False
        if _RISKY_RE.search(predicted):
            return False
        timeout = _timeout()
        from math_verify import verify

        gold = list(_parse_reference(reference, timeout))
        target = _parse(predicted, timeout)
        if not gold or not target:
            return False
        return bool(verify(gold, target, timeout_seconds=timeout))
    except Exception:  # a grader facing model output must never crash training
        return False


class MathTask(FileTask):
    """MATH / MATH-500 with HRPO's marker prompt and math-verify grading.

    ``data_files`` maps split names to local files (a single path means the train split);
    ``columns`` maps this task's field names (``question``, ``answer``, ``unique_id``) to the
    file's. An unmapped ``question`` falls back to ``problem`` and an unmapped ``answer`` to
    ``solution``; rows keep a record's ``unique_id`` (MATH-500's ``test/precalculus/807.json``).

    ``math500`` names the MATH-500 problems within a full MATH test file (``data_files``), so that
    evaluation reports both benchmarks from one pass (:meth:`subsets`): a text file of
    ``unique_id``s, one a line, or a JSON/JSONL/Parquet file of ids or of records with
    ``unique_id`` and/or ``problem`` (MATH-500 itself, saved from the hub). A row is in MATH500
    when its ``unique_id`` is listed or its problem text (stripped) is one of the listed problems;
    the authors matched problem texts, which needs no id column in the MATH file.
    """

    name = "math"
    answer_kind = "math"
    eval_max_completion_length = 1024  # the authors' MATH evaluation length
    answer_format = (
        "Write the final answer in simplest form; LaTeX such as \\frac{3}{4} or 2\\sqrt{5} is fine."
    )

    def __init__(
        self,
        data_files: dict[str, str | list[str]] | str | None = None,
        columns: dict[str, str] | None = None,
        *,
        math500: str | Path | None = None,
        marker: str = DEFAULT_MARKER,
        system_prompt: str | None = None,
        protocol: str = "hrpo",
    ) -> None:
        super().__init__(data_files, columns, marker=marker, system_prompt=system_prompt, protocol=protocol)
        self.math500 = None if math500 is None else str(math500)
        self._math500_ids: frozenset[str] = frozenset()
        self._math500_problems: frozenset[str] = frozenset()
        if math500 is not None:
            # The hub default is MATH-500 itself: a subset of it would be all of it.
            if not self.data_files:
                raise ValueError("math500 needs data_files: the full MATH test file it is a subset of")
            self._math500_ids, self._math500_problems = read_problem_list(math500)
            # The rows evaluated are the full MATH test set; MATH500 is reported as a subset.
            self.benchmark = "MATH"

    def _field(self, record: Any, key: str, where: str, index: int) -> Any:
        """``record``'s value for ``key``: the mapped column, else the first default name present."""
        if key in self.columns or not isinstance(record, dict):
            return field(record, key, where, index, self.columns)
        names = DEFAULT_FIELDS[key]
        for name in names:
            if record.get(name) is not None:
                return record[name]
        raise ValueError(
            f"{where}: record {index} has no field {' or '.join(map(repr, names))}; fields: {sorted(record)}"
        )

    def _load(self, split: str, limit: int | None) -> list[Row]:
        # MATH-500 on the hub has only a test split.
        records, where = load_split(split, self.data_files, HUB_ID if split == "test" else None)
        rows = []
        for i, rec in enumerate(records[:limit] if limit is not None else records):
            question = str(self._field(rec, "question", where, i))
            solution = str(self._field(rec, "answer", where, i))
            ref = reference_answer(solution)
            if not ref:
                raise ValueError(f"{where}: record {i}: empty reference answer in {solution[:80]!r}")
            row = self.solution_row(split, i, question, solution, ref)
            if "unique_id" in self.columns:  # a mapped column must be there
                unique_id = field(rec, "unique_id", where, i, self.columns)
            else:
                unique_id = rec.get("unique_id") if isinstance(rec, dict) else None
            if isinstance(unique_id, str) and unique_id:
                row["unique_id"] = unique_id
            rows.append(row)
        return rows

    def subsets(self, rows: list[Row]) -> dict[str, list[int]]:
        """``{"MATH500": indices of the rows listed in math500}`` with ``math500``, else ``{}``."""
        if self.math500 is None:
            return {}
        ids, problems = self._math500_ids, self._math500_problems
        return {
            MATH500: [
                i
                for i, row in enumerate(rows)
                if row.get("unique_id") in ids or str(row.get("question", "")).strip() in problems
            ]
        }

    def extract_answer(self, completion: str) -> str | None:
        """The text after the last marker, or the last box in it when the model boxed its answer."""
        answer = super().extract_answer(completion)
        if answer is None:
            return None
        boxed = last_boxed(answer)
        return answer if boxed is None else clean_answer(boxed)

    def is_correct(self, predicted: str, reference: str) -> bool:
        """Mathematical equality by math-verify (see :func:`answers_match`); never raises."""
        return answers_match(predicted, reference)
