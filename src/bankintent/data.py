"""Data: Banking77 or a user's own CSV/JSONL, validated row by row, split reproducibly.

The validation split is a stratified 10% of the training file drawn with a fixed seed (Banking77:
9,002 train / 1,001 validation); the official test file (3,080 queries) is only ever evaluated.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from sklearn.model_selection import train_test_split

from bankintent.errors import DataError

log = logging.getLogger(__name__)

BANKING77 = "banking77"
BANKING77_URL = "https://raw.githubusercontent.com/PolyAI-LDN/task-specific-datasets/master/banking_data/{split}.csv"
CACHE_DIR = Path(os.environ.get("BANKINTENT_CACHE", Path.home() / ".cache" / "bankintent"))


@dataclass
class Examples:
    texts: list[str]
    labels: list[str]
    rows: list[int] | None = None  # line numbers in the source file, for error messages

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class Splits:
    train: Examples
    validation: Examples
    test: Examples | None
    labels: list[str]  # intent names in the order of the classifier's outputs
    source: str

    def ids(self, split: Examples) -> list[int]:
        index = {name: i for i, name in enumerate(self.labels)}
        return [index[label] for label in split.labels]


def _first_bad_line(path: Path) -> tuple[int, int]:
    """(line number, byte) of the first byte sequence in ``path`` that is not UTF-8."""
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as exc:
                return number, line[exc.start]
    return 0, 0


def iter_rows(path: str | Path, columns: tuple[str, ...]) -> Iterator[tuple[int, dict]]:
    """Stream (row number, row) from a .csv, .jsonl or .txt file (.txt: one ``text`` a line), in
    constant memory. Problems raise DataError naming the file and row."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with open(path, encoding="utf-8-sig", newline="" if path.suffix == ".csv" else None) as handle:
            if path.suffix == ".csv":
                yield from _csv_rows(path, handle, columns)
            elif path.suffix == ".jsonl":
                yield from _jsonl_rows(path, handle, columns)
            else:
                for number, line in enumerate(handle, start=1):
                    yield number, {"text": line.rstrip("\r\n")}
    except UnicodeDecodeError:
        number, byte = _first_bad_line(path)
        raise DataError(f"{path}: row {number}: not valid UTF-8 text (byte {byte:#04x})") from None


def _csv_rows(path: Path, handle, columns):
    reader = csv.DictReader(handle)
    try:
        header = reader.fieldnames
        if not header:
            raise DataError(f"{path}: empty file, expected a header row")
        missing = [c for c in columns if c not in header]
        if missing:
            raise DataError(f"{path}: row 1: missing column {missing[0]!r} (columns: {', '.join(header)})")
        for row in reader:
            if None in row or any(row[c] is None for c in columns):
                raise DataError(f"{path}: row {reader.line_num}: expected {len(header)} fields")
            yield reader.line_num, row
    except csv.Error as exc:
        raise DataError(f"{path}: row {reader.line_num}: malformed CSV ({exc})") from None


def _jsonl_rows(path: Path, handle, columns):
    for number, line in enumerate(handle, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise DataError(f"{path}: row {number}: not valid JSON ({getattr(exc, 'msg', 'nested too deeply')})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}: row {number}: expected a JSON object")
        missing = [c for c in columns if c not in row]
        if missing:
            raise DataError(f"{path}: row {number}: missing column {missing[0]!r} (columns: {', '.join(map(str, row))})")
        yield number, row


def clean_text(path: Path, number: int, value, column: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{path}: row {number}: empty text in column {column!r}")
    return value.strip()


def read_examples(path: str | Path, text_column: str = "text", label_column: str = "category") -> Examples:
    """Read a labelled .csv or .jsonl file; every row needs a non-empty text and label."""
    path = Path(path)
    texts: list[str] = []
    labels: list[str] = []
    numbers: list[int] = []
    for number, row in iter_rows(path, (text_column, label_column)):
        texts.append(clean_text(path, number, row[text_column], text_column))
        label = row[label_column]
        if label is None or not str(label).strip():
            raise DataError(f"{path}: row {number}: empty label in column {label_column!r}")
        labels.append(str(label).strip())
        numbers.append(number)
    if not texts:
        raise DataError(f"{path}: no rows after the header")
    duplicates = len(texts) - len(set(zip(texts, labels)))
    if duplicates:
        log.warning("%s: %d duplicated row(s) kept", path, duplicates)
    return Examples(texts, labels, numbers)


def iter_queries(path: str | Path, text_column: str = "text") -> Iterator[tuple[int, str]]:
    """Stream (row number, query) from a .txt (one query a line), .csv or .jsonl file."""
    path = Path(path)
    column = "text" if path.suffix not in (".csv", ".jsonl") else text_column
    for number, row in iter_rows(path, (column,)):
        yield number, clean_text(path, number, row[column], column)


def _download_banking77() -> Path:
    target = CACHE_DIR / BANKING77
    if (target / "train.csv").is_file() and (target / "test.csv").is_file():
        return target
    target.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        url = BANKING77_URL.format(split=split)
        log.info("downloading %s", url)
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                payload = response.read()
        except OSError as exc:
            raise DataError(f"could not download Banking77 from {url} ({exc}); pass --data DIR with train.csv and test.csv") from None
        tmp = target / f"{split}.csv.part"
        tmp.write_bytes(payload)
        tmp.replace(target / f"{split}.csv")
    return target


def locate(data: str) -> Path:
    """A folder holding train.csv/.jsonl: the path given, or for ``banking77`` a local copy
    ($BANKINTENT_DATA_DIR, ../shared/data/banking77, the cache) or a download."""
    if data != BANKING77:
        path = Path(data)
        if not path.is_dir():
            raise DataError(f"{path}: data folder not found")
        return path
    candidates = [os.environ.get("BANKINTENT_DATA_DIR"), Path.cwd().parent / "shared" / "data" / BANKING77]
    for candidate in candidates:
        if candidate and (Path(candidate) / "train.csv").is_file():
            return Path(candidate)
    return _download_banking77()


def _find(folder: Path, stem: str) -> Path | None:
    for suffix in (".csv", ".jsonl"):
        if (folder / f"{stem}{suffix}").is_file():
            return folder / f"{stem}{suffix}"
    return None


def load_splits(
    data: str = BANKING77,
    text_column: str = "text",
    label_column: str = "category",
    val_fraction: float = 0.1,
    split_seed: int = 42,
    max_train_samples: int | None = None,
) -> Splits:
    folder = locate(data)
    train_file = _find(folder, "train")
    if train_file is None:
        raise DataError(f"{folder}: no train.csv or train.jsonl")
    full = read_examples(train_file, text_column, label_column)
    counts = Counter(full.labels)
    rare = sorted(label for label, n in counts.items() if n < 2)
    if rare:
        raise DataError(f"{train_file}: label {rare[0]!r} has {counts[rare[0]]} example(s); at least 2 are needed for a stratified validation split")
    labels = sorted(counts)
    if round(len(full) * val_fraction) < len(labels):
        raise DataError(f"{train_file}: {len(full)} rows are too few for a stratified {val_fraction:.0%} validation split over {len(labels)} labels")
    tr_x, va_x, tr_y, va_y = train_test_split(
        full.texts, full.labels, test_size=val_fraction, stratify=full.labels, random_state=split_seed
    )
    if max_train_samples is not None and max_train_samples < len(tr_x):
        tr_x, _, tr_y, _ = train_test_split(
            tr_x, tr_y, train_size=max_train_samples, stratify=tr_y, random_state=split_seed
        )
    test = None
    test_file = _find(folder, "test")
    if test_file is not None:
        test = read_examples(test_file, text_column, label_column)
        known = set(labels)
        for row, label in zip(test.rows, test.labels):
            if label not in known:
                raise DataError(f"{test_file}: row {row}: label {label!r} never seen in training")
    return Splits(Examples(list(tr_x), list(tr_y)), Examples(list(va_x), list(va_y)), test, labels, str(folder))

