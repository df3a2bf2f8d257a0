"""Open-domain knowledge QA (NQ, TriviaQA, HotpotQA, 2Wiki, Bamboogle), graded by exact match.

Records follow FlashRAG's layout: ``question``, ``golden_answers`` (a list of strings; a single
string is taken as a one-element list) and optionally retrieved ``passages`` (or ``retrieval``),
each a string or a dict with ``contents``/``text`` and an optional ``title``. The user turn is up
to ``num_passages`` passages as ``Doc 1 (Title: ...) ...`` lines, a blank line and
``Question: ...``.

The ``answer`` column holds the gold answers as a JSON list string, so it stays a plain string
like every other task's; graders accept that string, a plain single answer or a list. Answers are
compared after SQuAD normalisation (lowercase, no punctuation, no articles, single spaces): the
score is exact match against any gold, and :func:`f1` gives the best token F1.
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from hrpo.tasks.base import DEFAULT_MARKER, FileTask, Row, clean_answer
from hrpo.tasks.data import field, load_split

# FlashRAG's benchmark collection on the hub; its config names are the data set names
# (nq, triviaqa, hotpotqa, 2wikimultihopqa, bamboogle).
FLASHRAG_HUB_ID = "RUC-NLPIR/FlashRAG_datasets"

# No real short answer is this long; the cap keeps grading time bounded on any completion.
MAX_ANSWER_CHARS = 1000

# Columns tried, in order, for retrieved passages when ``columns`` does not name one.
_PASSAGE_COLUMNS = ("passages", "retrieval")

_PUNCT_TABLE = str.maketrans("", "", string.punctuation)
_ARTICLES_RE = re.compile(r"\b(?:a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lowercase, drop punctuation and the articles a/an/the, collapse spaces."""
    text = text.lower().translate(_PUNCT_TABLE)
    return " ".join(_ARTICLES_RE.sub(" ", text).split())


def gold_answers(reference: Any) -> list[str]:
    """The gold answers of a reference: a JSON list string, a plain answer string or a list.

    Anything unusable gives an empty list (which no prediction matches), never an error.
    """
    if isinstance(reference, str):
        stripped = reference.strip()
        if stripped.startswith("["):
            try:
                parsed = json.loads(stripped)
            except ValueError:
                parsed = None
            if isinstance(parsed, list):
                return [g for g in parsed if isinstance(g, str)]
        return [reference]
    if isinstance(reference, Sequence) and not isinstance(reference, (bytes, bytearray)):
        return [g for g in reference if isinstance(g, str)]
    # Arrow and numpy give array-likes that are not Sequences.
    if hasattr(reference, "tolist"):
        try:
            return gold_answers(reference.tolist())
        except Exception:
            return []
    return []


def exact_match(prediction: Any, golds: Any) -> float:
    """1.0 if the normalised prediction equals any normalised gold, else 0.0; never raises."""
    if not isinstance(prediction, str) or not prediction.strip():
        return 0.0
    pred = normalize_answer(prediction[:MAX_ANSWER_CHARS])
    return 1.0 if any(pred == normalize_answer(g) for g in gold_answers(golds)) else 0.0


def _token_f1(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    if not pred_tokens or not gold_tokens:
        # SQuAD's convention: two empty answers agree, one empty answer scores nothing.
        return float(pred_tokens == gold_tokens)
    common = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if common == 0:
        return 0.0
    precision = common / len(pred_tokens)
    recall = common / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def f1(prediction: Any, golds: Any) -> float:
    """The best SQuAD token F1 of ``prediction`` over ``golds`` (0.0 for no prediction); never raises."""
    if not isinstance(prediction, str) or not prediction.strip():
        return 0.0
    pred_tokens = normalize_answer(prediction[:MAX_ANSWER_CHARS]).split()
    return max(
        (_token_f1(pred_tokens, normalize_answer(g).split()) for g in gold_answers(golds)), default=0.0
    )


def _split_contents(contents: str) -> tuple[str | None, str]:
    """FlashRAG's corpus ``contents`` is ``"Title"\\ntext``: split off a quoted first line as the title."""
    first, sep, rest = contents.partition("\n")
    first = first.strip()
    if sep and len(first) >= 2 and first[0] == first[-1] == '"':
        return first[1:-1].strip() or None, rest.strip()
    return None, contents.strip()


def format_passage(index: int, passage: str | Mapping[str, Any]) -> str:
    """One context line: ``Doc {index} (Title: {title}) {text}``, or ``Doc {index}: {text}`` untitled."""
    if isinstance(passage, str):
        title, text = _split_contents(passage)
    else:
        body = passage.get("contents")
        if not isinstance(body, str):
            body = passage.get("text")
        title, text = _split_contents(body if isinstance(body, str) else "")
        # An explicit title wins over one parsed from FlashRAG contents (which then repeat it).
        explicit = passage.get("title")
        if isinstance(explicit, str) and explicit.strip():
            title = explicit.strip()
    text = " ".join(text.split())
    return f"Doc {index} (Title: {title}) {text}" if title else f"Doc {index}: {text}"


def format_question(question: str, passages: Sequence[str | Mapping[str, Any]] = ()) -> str:
    """The user turn: numbered passages, a blank line, then ``Question: {question}``."""
    docs = "\n".join(format_passage(n, p) for n, p in enumerate(passages, start=1))
    return f"{docs}\n\nQuestion: {question}" if docs else f"Question: {question}"


class QATask(FileTask):
    """Knowledge QA with optional retrieved context, graded by SQuAD exact match against any gold.

    ``data_files`` maps split names to local JSON/JSONL/Parquet files (a single path means the
    train split; a list of paths is concatenated, e.g. the paper's NQ + HotpotQA mix). Without
    files, ``dataset`` names a FlashRAG hub config to load. ``columns`` maps this task's field
    names (``question``, ``golden_answers``, ``passages``) to the file's. ``num_passages`` caps the
    passages shown (0 shows none); ``dataset`` is kept in every row for per-dataset reporting.
    """

    name = "qa"
    answer_kind = "qa"
    splits: tuple[str, ...] = ("train", "dev", "validation", "test")
    answer_format = (
        "The answer is a short phrase (a name, date, number or a few words): "
        "after the marker write only that phrase, on one line."
    )

    def __init__(
        self,
        data_files: dict[str, str | list[str]] | str | None = None,
        columns: dict[str, str] | None = None,
        *,
        num_passages: int = 3,
        dataset: str | None = None,
        marker: str = DEFAULT_MARKER,
        system_prompt: str | None = None,
        protocol: str = "hrpo",
    ) -> None:
        super().__init__(data_files, columns, marker=marker, system_prompt=system_prompt, protocol=protocol)
        if isinstance(num_passages, bool) or not isinstance(num_passages, int) or num_passages < 0:
            raise ValueError(f"num_passages must be a non-negative int, got {num_passages!r}")
        if dataset is not None and (not isinstance(dataset, str) or not dataset):
            raise ValueError(f"dataset must be a non-empty string or None, got {dataset!r}")
        self.num_passages = num_passages
        self.dataset = dataset

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, dataset={self.dataset!r}, "
            f"num_passages={self.num_passages}, marker={self.marker!r}, protocol={self.protocol!r})"
        )

    # --- data -----------------------------------------------------------------------------------

    def _load(self, split: str, limit: int | None) -> list[Row]:
        hub_id = FLASHRAG_HUB_ID if self.dataset is not None else None
        records, where = load_split(split, self.data_files, hub_id, self.dataset)
        rows: list[Row] = []
        for i, rec in enumerate(records[:limit] if limit is not None else records):
            question = str(field(rec, "question", where, i, self.columns)).strip()
            golds = self._golds(field(rec, "golden_answers", where, i, self.columns), where, i)
            passages = self._passages(rec, where, i)
            rows.append(
                {
                    "prompt": self.make_prompt(format_question(question, passages)),
                    "answer": json.dumps(golds, ensure_ascii=False),
                    "golden_answers": golds,
                    "question": question,
                    "dataset": self.dataset or self.name,
                    "id": f"{split}-{i}",
                }
            )
        return rows

    def _golds(self, value: Any, where: str, i: int) -> list[str]:
        name = self.columns.get("golden_answers", "golden_answers")
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]
        if hasattr(value, "tolist") and not isinstance(value, Sequence):
            value = value.tolist()
        if isinstance(value, (bytes, Mapping)) or not isinstance(value, Sequence):
            raise ValueError(f"{where}: record {i}: field {name!r} must be a list of answer strings")
        # TriviaQA-style numeric answers are fine as text; anything else is a broken record.
        golds = [
            str(g).strip() for g in value if isinstance(g, (str, int, float)) and not isinstance(g, bool)
        ]
        if len(golds) != len(value) or not all(golds):
            raise ValueError(
                f"{where}: record {i}: field {name!r} has an empty or non-string answer: {value!r}"
            )
        if not golds:
            raise ValueError(f"{where}: record {i}: field {name!r} is an empty list")
        return golds

    def _passages(self, rec: dict[str, Any], where: str, i: int) -> list[str | Mapping[str, Any]]:
        """The first ``num_passages`` passages of a record; a missing column means no context."""
        if self.num_passages == 0:
            return []
        if "passages" in self.columns:
            name = self.columns["passages"]
        else:
            name = next((c for c in _PASSAGE_COLUMNS if rec.get(c) is not None), _PASSAGE_COLUMNS[0])
        value = rec.get(name)
        if value is None:
            return []
        if hasattr(value, "tolist") and not isinstance(value, Sequence):
            value = value.tolist()
        if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence):
            raise ValueError(
                f"{where}: record {i}: field {name!r} must be a list of passages, got {type(value).__name__}"
            )
        passages = list(value[: self.num_passages])
        for n, p in enumerate(passages):
            body = p.get("contents", p.get("text")) if isinstance(p, Mapping) else p
            if not isinstance(body, str):
                raise ValueError(
                    f"{where}: record {i}: field {name!r} passage {n} must be a string or an object "
                    "with 'contents' or 'text'"
                )
        return passages

    # --- grading --------------------------------------------------------------------------------

    def extract_answer(self, completion: str) -> str | None:
        """The first non-empty line after the last marker, cleaned and capped; None without a marker."""
        rest = self.text_after_marker(completion)
        if rest is None:
            return None
        # Capping before splitting lines bounds the work: a longer line can never match anyway.
        rest = rest.lstrip()[:MAX_ANSWER_CHARS]
        lines = rest.splitlines()
        return clean_answer(lines[0]) if lines else ""

    def is_correct(self, predicted: str, reference: str | Sequence[str]) -> bool:
        """Whether ``predicted`` exactly matches (after normalisation) any gold in ``reference``."""
        try:
            return exact_match(predicted, reference) == 1.0
        except Exception:  # a grader must never crash training over one odd completion
            return False

    def score(self, completion: str, reference: str | Sequence[str], *, strict_format: bool = False) -> float:
        """1.0 if the answer after the last marker exactly matches any gold answer, else 0.0.

        ``reference`` is the row's ``answer`` (a JSON list string), a single answer or a list.
        """
        try:
            return exact_match(self.graded_answer(completion, strict_format), reference)
        except Exception:  # a grader must never crash training over one odd completion
            return 0.0

    def f1_score(
        self, completion: str, reference: str | Sequence[str], *, strict_format: bool = False
    ) -> float:
        """The best token F1 of the answer after the last marker over the golds (a reporting metric)."""
        try:
            return f1(self.graded_answer(completion, strict_format), reference)
        except Exception:
            return 0.0

    def grade_row(self, completion: str, row: Row, strict_format: bool = False) -> float:
        """The row's ``answer`` is passed as it is: a list of golds must not become its repr string."""
        return self.score(completion, row.get("answer"), strict_format=strict_format)
