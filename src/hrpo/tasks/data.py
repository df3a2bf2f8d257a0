"""Reading task data from local files (JSON, JSONL, Parquet) or the hub, with column mapping."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Records of a ``.json`` (a list), ``.jsonl`` or ``.parquet`` file; errors name the file and line."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist")
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise ImportError(f"reading {path} needs pyarrow: pip install pyarrow") from exc
        return pq.read_table(path).to_pylist()
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
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


def load_split(
    split: str,
    data_files: Mapping[str, str | list[str]] | None,
    hub_id: str | None,
    hub_config: str | None = None,
) -> tuple[list[dict[str, Any]], str]:
    """Records of ``split`` from ``data_files[split]``, else from the hub via ``datasets``.

    ``data_files[split]`` is one path or a list of paths, concatenated in order (e.g. the paper's
    NQ + HotpotQA training mix). Returns the records and a description of where they came from
    (for error messages).
    """
    if data_files:
        if split not in data_files:
            raise ValueError(f"no data file for split {split!r}; data_files has {sorted(data_files)}")
        paths = data_files[split]
        paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
        records: list[dict[str, Any]] = []
        for path in paths:
            records += read_records(path)
        return records, " + ".join(str(Path(p).expanduser()) for p in paths)
    if hub_id is None:
        raise ValueError("pass data_files: this task has no hub dataset")
    try:
        import datasets
    except ImportError as exc:
        raise ImportError(
            f"pass task_args.data_files (local JSON/JSONL/Parquet) or `pip install datasets` to load {hub_id}"
        ) from exc
    return list(datasets.load_dataset(hub_id, hub_config, split=split)), f"{hub_id}[{split}]"


def field(record: Any, key: str, where: str, index: int, columns: Mapping[str, str] | None = None) -> Any:
    """``record[columns.get(key, key)]``, or a ValueError naming the source, row and field."""
    name = (columns or {}).get(key, key)
    if not isinstance(record, dict):
        raise ValueError(f"{where}: record {index} is a {type(record).__name__}, not an object")
    if name not in record or record[name] is None:
        mapped = f" (mapped from {key!r})" if name != key else ""
        raise ValueError(f"{where}: record {index} has no field {name!r}{mapped}; fields: {sorted(record)}")
    return record[name]
