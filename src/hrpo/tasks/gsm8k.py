"""GSM8K (grade-school math word problems with numeric answers).

Loads local JSON/JSONL/Parquet files with ``question`` and ``answer`` columns (GSM8K's own format, where
the answer is the worked solution ending in ``#### N``), or the hub dataset ``openai/gsm8k``
through the optional ``datasets`` package when no files are given. Answers are graded as exact
values by :mod:`hrpo.tasks.numbers` (the answer must state one value, equal to the reference's).
"""

from __future__ import annotations

from hrpo.tasks.base import FileTask, Row
from hrpo.tasks.data import field, load_split
from hrpo.tasks.numbers import numbers_match, parse_number

HUB_ID = "openai/gsm8k"


def reference_answer(solution: str) -> str:
    """The final answer of a GSM8K solution: the text after its last ``####``, commas removed."""
    return solution.rsplit("####", 1)[-1].strip().replace(",", "")


class GSM8KTask(FileTask):
    """GSM8K with HRPO's marker prompt.

    ``data_files`` maps split names to local files (a single path means the train split);
    ``columns`` maps this task's field names (``question``, ``answer``) to the file's.
    """

    name = "gsm8k"
    answer_format = "The final answer is a number: write only the number, without units."
    ignore_marker_headings = True  # answers are numbers: a '#### Step' heading is no marker
    answer_kind = "number"

    def _load(self, split: str, limit: int | None) -> list[Row]:
        records, where = load_split(split, self.data_files, HUB_ID, "main")
        rows = []
        for i, rec in enumerate(records[:limit] if limit is not None else records):
            question = str(field(rec, "question", where, i, self.columns))
            solution = str(field(rec, "answer", where, i, self.columns))
            ref = reference_answer(solution)
            # Checked before the commas go, so that "1,2" is refused rather than read as 12.
            raw = solution.rsplit("####", 1)[-1].strip()
            if parse_number(raw) is None:
                raise ValueError(
                    f"{where}: record {i}: the final answer (after the last '####') {raw[-80:]!r} is not "
                    "one number (see hrpo.tasks.numbers for the forms read)"
                )
            rows.append(self.solution_row(split, i, question, solution, ref))
        return rows

    def is_correct(self, predicted: str, reference: str) -> bool:
        """Whether the answer states one value, equal to the reference's (:mod:`hrpo.tasks.numbers`)."""
        return numbers_match(predicted, reference)
