"""Reading data from local files (JSON, JSONL, Parquet) or the hub, with column mapping."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

DATA_SUFFIXES = (".json", ".jsonl", ".parquet")
DATASETS_HINT = "pip install 'hrpo[datasets]'"


class MissingDependencyError(ImportError, ValueError):
    """An optional package a setting needs is not installed; the message says how to install it."""


def import_datasets(why: str) -> Any:
    """The ``datasets`` module (an optional dependency), or an error saying ``why`` it is needed."""
    try:
        import datasets
    except ImportError as exc:
        raise MissingDependencyError(f"{why} needs the datasets package: {DATASETS_HINT}") from exc
    return datasets


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
    datasets = import_datasets(f"loading {hub_id} (or pass task_args.data_files, local JSON/JSONL/Parquet)")
    return list(datasets.load_dataset(hub_id, hub_config, split=split)), f"{hub_id}[{split}]"


def _split_file(directory: Path, split: str) -> Path | None:
    found = [
        directory / f"{split}{suffix}"
        for suffix in DATA_SUFFIXES
        if (directory / f"{split}{suffix}").is_file()
    ]
    if len(found) > 1:
        raise ValueError(
            f"{directory}: several files for split {split!r}: {', '.join(p.name for p in found)}"
        )
    return found[0] if found else None


def load_dataset_splits(
    name: str, config: str | None, train_split: str, test_split: str | None
) -> tuple[Any, Any | None]:
    """The training rows and the test rows (None when there is no such split) of ``name``.

    ``name`` is a local data file (the training split), a directory holding ``<split>.json``,
    ``.jsonl`` or ``.parquet`` files, or a hub dataset id read with ``datasets`` (its splits are
    returned as map-style ``datasets.Dataset`` objects).
    """
    path = Path(name).expanduser()
    if path.is_file():
        return read_records(path), None
    if path.is_dir():
        train = _split_file(path, train_split)
        if train is None:
            files = sorted(p.name for p in path.iterdir() if p.suffix in DATA_SUFFIXES)
            raise FileNotFoundError(
                f"dataset_name {name}: no {train_split}.json/.jsonl/.parquet in the directory (data files: "
                f"{', '.join(files) or 'none'})"
            )
        test = _split_file(path, test_split) if test_split else None
        return read_records(train), None if test is None else read_records(test)
    check_dataset_name(name)
    datasets = import_datasets(f"dataset_name {name!r} (a hub dataset id)")
    splits = datasets.load_dataset(name, config)
    if train_split not in splits:
        raise ValueError(f"dataset {name} has no split {train_split!r}; splits: {', '.join(splits)}")
    return splits[train_split], splits.get(test_split)


def check_dataset_name(name: str) -> None:
    """Fail early on a ``dataset_name`` that cannot load: a missing local file, or a hub id without
    ``datasets`` installed."""
    path = Path(name).expanduser()
    if path.exists():
        return
    if path.suffix in DATA_SUFFIXES or name.startswith((".", "/", "~")):
        raise FileNotFoundError(f"dataset_name {name}: no such file or directory")
    import_datasets(f"dataset_name {name!r} (no local file of that name, so a hub dataset id)")


def field(record: Any, key: str, where: str, index: int, columns: Mapping[str, str] | None = None) -> Any:
    """``record[columns.get(key, key)]``, or a ValueError naming the source, row and field."""
    name = (columns or {}).get(key, key)
    if not isinstance(record, dict):
        raise ValueError(f"{where}: record {index} is a {type(record).__name__}, not an object")
    if name not in record or record[name] is None:
        mapped = f" (mapped from {key!r})" if name != key else ""
        raise ValueError(f"{where}: record {index} has no field {name!r}{mapped}; fields: {sorted(record)}")
    return record[name]
