"""GSM8K (grade-school math word problems, integer answers).

Loads local JSON/JSONL files with ``question`` and ``answer`` columns (GSM8K's own format, where
the answer is the worked solution ending in ``#### N``), or the hub dataset ``openai/gsm8k``
through the optional ``datasets`` package when no files are given.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hrpo.tasks.base import DEFAULT_MARKER, Row, Task, parse_integer

HUB_ID = "openai/gsm8k"


def _read_records(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise FileNotFoundError(f"GSM8K data file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        data = json.loads(text)
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
        return data
    records = []
    for n, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{n}: not valid JSON ({exc.msg})") from exc
    return records


def reference_answer(solution: str) -> str:
    """The final answer of a GSM8K solution: the text after its last ``####``, commas removed."""
    return solution.rsplit("####", 1)[-1].strip().replace(",", "")


class GSM8KTask(Task):
    """GSM8K with HRPO's marker prompt; ``data_files`` maps split names to local files."""

    name = "gsm8k"
    answer_format = "The final answer is a number: write only the number, without units."

    def __init__(
        self,
        data_files: dict[str, str] | str | None = None,
        *,
        marker: str = DEFAULT_MARKER,
        system_prompt: str | None = None,
    ) -> None:
        super().__init__(marker=marker, system_prompt=system_prompt)
        self.data_files = {"train": data_files} if isinstance(data_files, str) else dict(data_files or {})

    def _records(self, split: str) -> tuple[list[dict[str, Any]], str]:
        if self.data_files:
            if split not in self.data_files:
                raise ValueError(
                    f"gsm8k: no file for split {split!r}; data_files has {sorted(self.data_files)}"
                )
            path = Path(self.data_files[split]).expanduser()
            return _read_records(path), str(path)
        try:
            import datasets
        except ImportError as exc:
            raise ImportError(
                "gsm8k: pass task_args.data_files (local JSON/JSONL) or `pip install datasets` to load "
                f"{HUB_ID} from the hub"
            ) from exc
        return list(datasets.load_dataset(HUB_ID, "main", split=split)), f"{HUB_ID}[{split}]"

    def _load(self, split: str, limit: int | None) -> list[Row]:
        records, where = self._records(split)
        rows = []
        for i, rec in enumerate(records[:limit] if limit is not None else records):
            for key in ("question", "answer"):
                if not isinstance(rec, dict) or not isinstance(rec.get(key), str) or not rec[key].strip():
                    raise ValueError(f"{where}: record {i} has no text field {key!r} (keys: {sorted(rec)})")
            ref = reference_answer(rec["answer"])
            if parse_integer(ref) is None:
                raise ValueError(f"{where}: record {i}: answer {ref!r} after '####' is not a number")
            rows.append(
                {
                    "prompt": self.make_prompt(rec["question"]),
                    "answer": ref,
                    "question": rec["question"],
                    "solution": rec["answer"],
                    "id": f"{split}-{i}",
                }
            )
        return rows

    def is_correct(self, predicted: str, reference: str) -> bool:
        want = parse_integer(reference)
        return want is not None and parse_integer(predicted) == want
