"""The task API: prompts, references and the HRPO outcome reward for one data set.

A task turns a data set into rows for training or evaluation (``prompt`` in TRL's conversational
format plus the reference ``answer``) and grades completions, each against its own row, through one
entry, :meth:`Task.grade`, which the training reward, the logged training accuracy and evaluation
all call. Grading follows the paper's rule:
the answer is the text after the LAST answer marker, and the training reward additionally
requires the marker to appear exactly once. Tasks whose answers are numbers or option letters
(``ignore_marker_headings``) do not count a markdown heading such as ``#### Step 1`` (a line-start
marker followed by a word and then a further line) as a marker; the rule is in :mod:`hrpo.marker`
and is the same one the rollout uses to end the thinking phase. Graders see raw model output, so
they are written to run in linear time and never to execute or ``eval()`` anything.

That is our protocol, ``hrpo``. A task built with ``protocol="paper"`` grades by the authors' rules
instead (spec §7, :mod:`hrpo.tasks.paper`), picked by its ``answer_kind``, for like-for-like
comparisons with the paper's numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from hrpo.marker import answer_marker_spans, answer_start

DEFAULT_MARKER = "####"

# Grading protocols: ours, and the authors' (spec §7, :mod:`hrpo.tasks.paper`) for like-for-like runs.
PROTOCOLS = ("hrpo", "paper")
# What a task's answers are, which picks its rule under the paper protocol.
ANSWER_KINDS = ("number", "math", "choice", "qa", "text")

Row = dict[str, Any]
Messages = list[dict[str, Any]]

# Markdown/LaTeX dressing a model puts around a final answer; a trailing period ends the sentence.
_LEAD_STRIP = " \t\r\n\f\v*$"
_TRAIL_STRIP = " \t\r\n\f\v*$."


def format_instruction(marker: str = DEFAULT_MARKER, answer_format: str = "") -> str:
    """The system prompt asking for ``{reasoning} {marker} {answer}``; ``answer_format`` is appended."""
    text = (
        "You are a helpful assistant. First reason through the problem step by step. "
        f"Then write the final answer after the marker {marker}, so that your reply has the form: "
        f"<reasoning> {marker} <answer>. Write {marker} exactly once, followed only by the final answer."
    )
    return f"{text} {answer_format}".strip()


PAPER_SYSTEM_PROMPT = (
    "A conversation between User and Assistant. The user asks a question, and the assistant solves "
    "it. The assistant first thinks about the reasoning process in the mind and then provides the "
    "user with the answer. The final answer is provided after the #### tag, i.e., "
    "{reasoning process} #### {answer}."
)
"""The authors' system prompt (spec §7), verbatim: the input text of the paper's experiments."""

SYSTEM_PROMPTS = ("hrpo", "paper")
"""System prompts by name: ``hrpo`` (:func:`format_instruction`, the default) and ``paper``."""


def system_prompt_text(
    system_prompt: str | None, marker: str = DEFAULT_MARKER, answer_format: str = ""
) -> str:
    """The system prompt ``system_prompt`` names: None or ``"hrpo"`` → ours (:func:`format_instruction`
    with ``answer_format``), ``"paper"`` → :data:`PAPER_SYSTEM_PROMPT` (with ``marker`` in place of
    its ``####``), any other string → itself."""
    if system_prompt is None or system_prompt == "hrpo":
        return format_instruction(marker, answer_format)
    if system_prompt == "paper":
        return PAPER_SYSTEM_PROMPT.replace(DEFAULT_MARKER, marker)
    return system_prompt


def clean_answer(text: str) -> str:
    """Strip whitespace, ``$``, ``**`` and a trailing period from around an answer."""
    # One pass each way: str.strip with a character set is linear however the dressing is nested.
    return text.lstrip(_LEAD_STRIP).rstrip(_TRAIL_STRIP)


def completion_text(completion: Any) -> str | None:
    """The text of one completion: a string, or TRL's ``[{"role": "assistant", "content": ...}]``.

    Content given as a list of parts (``[{"type": "text", "text": ...}]``) is joined. Anything
    else gives None, which every grader scores 0.
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    if not isinstance(completion, Sequence) or not completion:
        return None
    messages = [m for m in completion if isinstance(m, dict)]
    assistant = [m for m in messages if m.get("role") == "assistant"] or messages
    if not assistant:
        return None
    content = assistant[-1].get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text") for p in content if isinstance(p, dict)]
        return "".join(p for p in parts if isinstance(p, str))
    return None


class Task:
    """One data set: rows with ``prompt`` and ``answer`` columns, and a grader for completions.

    Subclasses set ``name`` (and optionally ``splits`` and ``answer_format``, a sentence added to
    the system prompt), implement :meth:`_load`, and override :meth:`is_correct` when exact string
    equality is not the right comparison (and :meth:`grade_row` when grading reads more of the row
    than its ``answer``). ``protocol`` picks the grading rules: ``"hrpo"`` (ours, the default) or
    ``"paper"`` (the authors', :mod:`hrpo.tasks.paper`, by the task's ``answer_kind``).
    """

    name: str = "task"
    splits: tuple[str, ...] = ("train", "test")
    answer_format: str = ""
    ignore_marker_headings: bool = False
    """Read a line-start marker followed by a word of two or more letters and then a further line
    (``#### Step 1\n…``) as a markdown heading, not a marker (:mod:`hrpo.marker`). Only for tasks
    whose answers cannot be words (numbers, option letters); the rollout follows the same rule."""
    eval_max_completion_length: int = 512
    """``hrpo eval``'s default completion length for this task (the authors evaluated with 512 new
    tokens, 1024 on MATH)."""
    answer_kind: str = "text"
    """What the answers are (one of ``ANSWER_KINDS``): the paper protocol grades by this kind's rule."""
    benchmark: str | None = None
    """The paper's benchmark these rows are, where the task knows better than its name does
    (:func:`hrpo.paper.benchmark_name`): ``math`` with a MATH500 list evaluates the full MATH."""

    def __init__(
        self, *, marker: str = DEFAULT_MARKER, system_prompt: str | None = None, protocol: str = "hrpo"
    ) -> None:
        if not isinstance(marker, str) or not marker.strip():
            raise ValueError(f"marker must be a non-empty string, got {marker!r}")
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(map(repr, PROTOCOLS))}, got {protocol!r}")
        if protocol == "paper" and self.answer_kind not in ANSWER_KINDS:
            raise ValueError(
                f"{type(self).__name__}.answer_kind = {self.answer_kind!r} has no paper rule; "
                f"one of {', '.join(map(repr, ANSWER_KINDS))}"
            )
        self.marker = marker
        self.protocol = protocol
        if protocol == "paper":  # the authors end the thinking phase at any marker, headings too
            self.ignore_marker_headings = False
        self.system_prompt = system_prompt_text(system_prompt, marker, self.answer_format)
        # A prompt that never shows the marker makes every reward 0: catch it before training.
        if marker not in self.system_prompt:
            raise ValueError(f"system_prompt must mention the answer marker {marker!r}")

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, marker={self.marker!r}, protocol={self.protocol!r})"
        )

    # --- data -----------------------------------------------------------------------------------

    def load(self, split: str, *, limit: int | None = None) -> list[Row]:
        """Rows of ``split`` (at most ``limit``), each with at least ``prompt`` and ``answer``."""
        if split not in self.splits:
            raise ValueError(f"{self.name} has no split {split!r}; splits: {', '.join(self.splits)}")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise ValueError(f"limit must be a non-negative int or None, got {limit!r}")
        return self._load(split, limit)

    def _load(self, split: str, limit: int | None) -> list[Row]:
        raise NotImplementedError(f"{type(self).__name__} must implement _load(split, limit)")

    def subsets(self, rows: list[Row]) -> dict[str, list[int]]:
        """Named subsets of ``rows`` (indices) that evaluation also reports, from the same
        predictions (MATH500 within MATH); none by default."""
        return {}

    def solution_row(self, split: str, index: int, question: str, solution: str, reference: str) -> Row:
        """The row of a problem given with a worked solution (GSM8K, MATH)."""
        return {
            "prompt": self.make_prompt(question),
            "answer": reference,
            "question": question,
            "solution": solution,
            "id": f"{split}-{index}",
        }

    def make_prompt(self, question: str) -> Messages:
        """Chat messages (system prompt, then ``question`` as the user turn) for one problem."""
        return [
            {"role": "system", "content": self.system_prompt},
            {"role": "user", "content": question},
        ]

    # --- grading --------------------------------------------------------------------------------

    def answer_markers(self, completion: str) -> list[int]:
        """Start offsets of the answer markers in ``completion`` (headings left out, if the task says so)."""
        return answer_marker_spans(completion, self.marker, self.ignore_marker_headings)

    def marker_count(self, completion: str) -> int:
        """How many answer markers ``completion`` has (the strict format wants exactly one)."""
        return len(self.answer_markers(completion))

    def text_after_marker(self, completion: str) -> str | None:
        """The raw text after the last answer marker, or None when there is none."""
        if not isinstance(completion, str):
            return None
        at = answer_start(completion, self.marker, self.ignore_marker_headings)
        return None if at is None else completion[at:]

    def extract_answer(self, completion: str) -> str | None:
        """The cleaned text after the last marker, or None when there is no marker."""
        rest = self.text_after_marker(completion)
        return None if rest is None else clean_answer(rest)

    def is_correct(self, predicted: str, reference: str) -> bool:
        """Whether an extracted answer matches the reference; must not raise on any string."""
        return predicted == clean_answer(reference)

    def graded_answer(self, completion: Any, strict_format: bool = False) -> str | None:
        """The answer a grader compares, or None when the completion earns 0 whatever the reference.

        The opening checks every grader shares: the completion must be text with an answer marker
        and, with ``strict_format`` (the paper's training reward), exactly one marker (headings
        aside, see ``ignore_marker_headings``).
        """
        if not isinstance(completion, str):
            return None
        if strict_format and self.marker_count(completion) != 1:
            return None
        return self.extract_answer(completion)

    def score(self, completion: str, reference: str, *, strict_format: bool = False) -> float:
        """1.0 if the answer after the last marker is correct, else 0.0 (see :meth:`graded_answer`)."""
        if not isinstance(reference, str):
            return 0.0
        predicted = self.graded_answer(completion, strict_format)
        if predicted is None:
            return 0.0
        return 1.0 if self.is_correct(predicted, reference) else 0.0

    def grade(
        self, completions: Sequence[Any], rows: Sequence[Row], strict_format: bool = False
    ) -> list[float]:
        """One score per completion, each against its own dataset row (``rows[i]`` for ``completions[i]``).

        The one grading path: the training reward, the logged training accuracy and evaluation all
        call it, so they cannot disagree. A completion is a string or TRL's conversational form
        (anything else scores 0); a row is the completion's dataset row, read for ``answer`` and
        whatever else the task grades with (multiple-choice ``options``). The task's ``protocol``
        picks the per-row grader: :meth:`grade_row` (``hrpo``) or :meth:`paper_grade_row` (``paper``).
        """
        if len(rows) != len(completions):
            raise ValueError(f"{len(completions)} completions but {len(rows)} rows")
        grade_row = self.paper_grade_row if self.protocol == "paper" else self.grade_row
        scores = []
        for completion, row in zip(completions, rows, strict=True):
            text = completion_text(completion)
            scores.append(0.0 if text is None else grade_row(text, row, strict_format))
        return scores

    def paper_grade_row(self, completion: str, row: Row, strict_format: bool = False) -> float:
        """Score one completion text against its row's ``answer`` by the authors' rule for ``answer_kind``."""
        # Imported here: hrpo.tasks.paper reuses qa's SQuAD helpers, and qa imports this module.
        from hrpo.tasks.paper import paper_grade

        return paper_grade(
            self.answer_kind, completion, row.get("answer"), marker=self.marker, strict_format=strict_format
        )

    def grade_row(self, completion: str, row: Row, strict_format: bool = False) -> float:
        """Score one completion text against its row by our (``hrpo``) rules; tasks grading with more
        than ``answer`` override it.

        A reference that is not a string (an int from a custom data set) is graded as its ``str``.
        """
        reference = row.get("answer")
        if reference is None:
            return 0.0
        ref = reference if isinstance(reference, str) else str(reference)
        return self.score(completion, ref, strict_format=strict_format)

    def reward_function(self, strict_format: bool = True) -> TaskReward:
        """A TRL reward function ``f(prompts, completions, **columns)``: :meth:`grade` over the columns."""
        return TaskReward(self, strict_format=strict_format)

    def format_score(self, completion: str) -> float:
        """1.0 if the completion has the marker exactly once with a non-empty answer after it."""
        return 1.0 if self.graded_answer(completion, strict_format=True) else 0.0

    def format_reward_function(self) -> Callable[..., list[float]]:
        """A shaping reward for the output format alone (not in the paper; see ``format_reward_weight``)."""
        return FormatReward(self)


class FileTask(Task):
    """A task read from data files (or a hub data set): the shared constructor of benchmark tasks.

    ``data_files`` maps split names to a path or a list of paths (a single path means the train
    split); ``columns`` maps the task's field names to the file's column names.
    """

    def __init__(
        self,
        data_files: dict[str, str | list[str]] | str | None = None,
        columns: dict[str, str] | None = None,
        *,
        marker: str = DEFAULT_MARKER,
        system_prompt: str | None = None,
        protocol: str = "hrpo",
    ) -> None:
        super().__init__(marker=marker, system_prompt=system_prompt, protocol=protocol)
        self.data_files = {"train": data_files} if isinstance(data_files, str) else dict(data_files or {})
        self.columns = dict(columns or {})


class FormatReward:
    """A task's format reward as a picklable callable named ``<task>_format``."""

    def __init__(self, task: Task) -> None:
        self.task = task
        self.__name__ = f"{task.name}_format"

    def __call__(
        self, prompts: Sequence[Any] | None, completions: Sequence[Any], **columns: Any
    ) -> list[float]:
        return [self.task.format_score(completion_text(c) or "") for c in completions]


def column_rows(columns: Mapping[str, Any], n: int) -> list[Row]:
    """TRL's reward columns (each dataset column repeated to line up with the completions) as ``n`` rows.

    Keyword values that are not columns (TRL also passes objects such as ``trainer_state``) are left
    out, and so is a column from the rows past its end.
    """
    cols = {
        k: v
        for k, v in columns.items()
        if not isinstance(v, (str, bytes, Mapping)) and hasattr(v, "__len__") and hasattr(v, "__getitem__")
    }
    return [{k: v[i] for k, v in cols.items() if len(v) > i} for i in range(n)]


class TaskReward:
    """A task's accuracy reward, :meth:`Task.grade` as a picklable callable named ``<task>_accuracy``."""

    def __init__(self, task: Task, *, strict_format: bool = True) -> None:
        self.task = task
        self.strict_format = strict_format
        self.__name__ = f"{task.name}_accuracy"

    def __repr__(self) -> str:
        return f"TaskReward({self.task!r}, strict_format={self.strict_format})"

    def __call__(
        self, prompts: Sequence[Any] | None, completions: Sequence[Any], **columns: Any
    ) -> list[float]:
        if "answer" not in columns:
            raise KeyError(f"{self.__name__} needs the 'answer' column; got columns {sorted(columns)}")
        if len(columns["answer"]) != len(completions):
            raise ValueError(f"{len(completions)} completions but {len(columns['answer'])} answers")
        rows = column_rows(columns, len(completions))
        return self.task.grade(completions, rows, strict_format=self.strict_format)
