"""Data: Banking77 or a user's own CSV/TSV/JSONL/Parquet, validated row by row, split reproducibly.

``--data`` names Banking77 (``banking77``), a folder or one file:

- a folder: ``train.csv`` (or ``.tsv``, ``.jsonl``, ``.parquet``); a validation file ``valid``,
  ``validation`` or ``dev`` (any of those suffixes) if present, else the validation split is a stratified share
  (``val_fraction``) of the training file drawn with a fixed seed (Banking77: 9,002 train / 1,001
  validation); ``test.csv`` (or another of them) if present, only ever evaluated. Files present and not
  used are named in a warning.
- a file: the training file alone (validation carved from it, no test set); the files beside it are
  not read (a warning names those a folder would have used).

Rows labelled ``oos_label`` (default ``out_of_scope``) are not an intent: they are out-of-scope
examples (``Splits.out_of_scope``), as are the queries of ``oos_file``. Rows with an empty text are
skipped and counted (refused with ``strict_data``).

Small data: without a validation file, a training file whose median intent has fewer than
``SMALL_DATA_PER_INTENT`` examples is not split: a 10% share would leave one or two validation
queries per intent, too few to choose an epoch or fit a calibration on, and each of them is an
example the model no longer learns from. Every row then trains, the validation split is empty
(``Splits.small_data``), and training makes its choices by cross-validation on the training data
(see ``bankintent.training``). Without a validation file every intent needs at least 2 examples
(cross-validation needs one to learn from and one to check on): an intent with 1 stops with a
one-line error naming it; with a validation file, choices are made on it and 1 example trains.

``shots`` (``--shots K``, ``--shots-seed``) keeps K training examples per intent, drawn from the
training file, stratified and seeded, before any validation split is carved (an intent with fewer
keeps all): a K-shot data set is then what a user with K examples per intent would have, small-data
rule included. The user's validation file, if any, is kept whole.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import json
import logging
import os
import re
import shlex
import unicodedata
import urllib.request
import zlib
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
from sklearn.model_selection import train_test_split

from bankintent.config import closest_name, first_few
from bankintent.errors import ConfigError, DataError
from bankintent.text import blank

log = logging.getLogger(__name__)

BANKING77 = "banking77"
BANKING77_URL = "https://raw.githubusercontent.com/PolyAI-LDN/task-specific-datasets/master/banking_data/{split}.csv"
CACHE_DIR = Path(os.environ.get("BANKINTENT_CACHE", Path.home() / ".cache" / "bankintent"))
# files of named columns: labelled data, or queries in a column; compared in lower case (Excel on Windows writes .CSV);
# .parquet: a data lake's tables, a Hugging Face dataset's files
DATA_SUFFIXES = (".csv", ".tsv", ".jsonl", ".parquet")
QUERY_SUFFIXES = (".txt", *DATA_SUFFIXES)  # queries alone: .txt is one a line
PARQUET_BATCH = 4096  # rows read from a Parquet file at once
SPREADSHEETS = (".xlsx", ".xlsm", ".xls", ".ods", ".numbers")
WORKBOOK_SIGNATURES = (b"PK\x03\x04", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1")  # .xlsx (a zip file), .xls (OLE2), renamed to .csv
SAVE_AS_CSV = "save the sheet as CSV UTF-8 (in Excel: File > Save As > CSV UTF-8) and give that file"
# a label is warned about as a likely typo of another with this many times its rows and a name this close
# (difflib's ratio: "polcy_renewal" and "policy_renewal" 0.96; Banking77's closest pair of intents 0.83)
TYPO_RARITY, TYPO_SIMILARITY = 4, 0.9
ENCODING_SNIFF_BYTES = 4 << 20  # how much of a file says whether it is UTF-8 or a Windows code page
VALIDATION_STEMS = ("valid", "validation", "dev")
# fewer validation queries than this for an intent and its validation accuracy, the calibration and
# the out-of-scope threshold rest on too little: training warns and records it
MIN_VALIDATION_PER_INTENT = 5
THIN_VALIDATION_SHARE = 0.1  # of the intents, with fewer validation queries than that, before thin_validation warns
FEW_TRAINING_QUERIES = 20  # an intent with fewer, and half the median intent's or fewer, is said to be thin (thin_intents)
# without a validation file, a training file whose median intent has fewer examples than this is
# "small data": no validation split is carved from it (see the module docstring)
SMALL_DATA_PER_INTENT = 20


@dataclass
class Examples:
    texts: list[str]
    labels: list[str]
    rows: list[int] | None = None  # line numbers in the source file, for error messages
    empty_skipped: int = 0  # rows of the source file skipped because their text was empty
    duplicates: int = 0  # rows repeating an earlier (text, label) of the file, kept

    def __len__(self) -> int:
        return len(self.texts)

    def take(self, indices) -> "Examples":
        """The rows at ``indices``, in that order."""
        return Examples([self.texts[i] for i in indices], [self.labels[i] for i in indices],
                        [self.rows[i] for i in indices] if self.rows else None)


@dataclass
class OutOfScope:
    """Out-of-scope example queries: not an intent, never trained on; they choose the out-of-scope
    score and measure how many out-of-scope queries its threshold catches."""

    texts: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)  # where they came from, e.g. "train.csv: 12 rows labelled 'out_of_scope'"
    lines: list[int | None] = field(default_factory=list)  # each one's line in its file, as ``Examples.rows``; None: not from a file
    origins: list[int] = field(default_factory=list)  # each one's source, an index into ``sources``
    files: list[str] = field(default_factory=list)  # each source's file name (the lines' file), in the order of ``sources``

    def __post_init__(self) -> None:
        self.lines = self.lines or [None] * len(self.texts)
        self.origins = self.origins or [0] * len(self.texts)
        self.files = self.files or list(self.sources)

    def __len__(self) -> int:
        return len(self.texts)

    def describe(self) -> str:
        return "; ".join(self.sources) if self.sources else "none"

    def add(self, texts: list[str], source: str, lines: list[int] | None, file: Path) -> None:
        if texts:
            self.texts.extend(texts)
            self.sources.append(source)
            self.files.append(file.name)
            self.lines.extend(lines or [None] * len(texts))
            self.origins.extend([len(self.sources) - 1] * len(texts))


@dataclass
class Splits:
    train: Examples
    validation: Examples
    test: Examples | None
    labels: list[str]  # intent names in the order of the classifier's outputs
    source: str  # what --data named: "banking77", or an absolute folder or file path
    out_of_scope: OutOfScope = field(default_factory=OutOfScope)  # from the training and validation files and oos_file
    test_out_of_scope: OutOfScope = field(default_factory=OutOfScope)  # from the test file
    notes: dict = field(default_factory=dict)  # what loading did (files read, validation source, rows skipped): metrics.json's "data_notes"

    @property
    def small_data(self) -> bool:
        """No validation split: small data without a validation file (every training row trains)."""
        return len(self.validation) == 0

    @property
    def few_examples(self) -> bool:
        """Few examples per intent to train on, with or without a validation file: small data, or a
        training file whose median intent has fewer than ``SMALL_DATA_PER_INTENT`` beside a validation
        file of its own. What the ``auto`` method trains ``contrastive`` for."""
        return self.small_data or bool(self.notes.get("validation_from_file")) and is_small(self.train.labels)

    def ids(self, split: Examples) -> list[int]:
        index = {name: i for i, name in enumerate(self.labels)}
        return [index[label] for label in split.labels]


def file_kind(path: Path, suffixes: tuple[str, ...] = QUERY_SUFFIXES, what: str = "a file of queries") -> str:
    """``csv`` (.csv or .tsv), ``jsonl``, ``txt`` or ``parquet``, from ``path``'s suffix in any case, where it is one
    of ``suffixes``; else a DataError saying what ``what`` must be (a workbook: how to save it as CSV)."""
    if path.is_dir():  # not "the name has no extension": it is no file at all
        raise DataError(f"{path}: a folder, not a file")
    suffix = path.suffix.lower()
    if suffix in SPREADSHEETS:
        raise DataError(f"{path}: a spreadsheet workbook is not read; {SAVE_AS_CSV}")
    if suffix not in suffixes:
        names = [s for s in suffixes if s != ".tsv"]
        listed = ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else names[0]
        tabs = " (a tab-separated .txt, as Excel saves Unicode text: rename it .tsv)" if suffix == ".txt" and ".tsv" in suffixes else ""
        raise DataError(f"{path}: {what} must be {listed}" + (" (.txt: one query a line)" if ".txt" in suffixes else "")
                        + (", not {!r}".format(path.suffix) if path.suffix else " (the name has no extension)") + tabs)
    return {".tsv": "csv"}.get(suffix, suffix[1:])


def _first_bad_line(path: Path) -> tuple[int, int]:
    """(line number, byte) of the first byte sequence in ``path`` that is not UTF-8; (0, 0) where there is none."""
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as exc:
                return number, line[exc.start]
    return 0, 0


def _encoding(path: Path) -> str:
    """How to read ``path``: UTF-8 (a byte-order mark skipped), UTF-16 where it starts with its mark (Excel's
    "Unicode text"), or Windows-1252 where its first bytes are not UTF-8 and are that code page (Excel's
    plain "CSV" on Windows; Latin-1 text reads the same), with a warning, since the guess may misread a
    few letters."""
    with open(path, "rb") as handle:  # read once: the file's first lines, whole
        head = handle.read(ENCODING_SNIFF_BYTES)
        lines = head if head.endswith(b"\n") else head + handle.readline()
    if head.startswith(WORKBOOK_SIGNATURES):
        raise DataError(f"{path}: a workbook or zip archive by its bytes, not text, whatever its name says; {SAVE_AS_CSV}")
    if head[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return "utf-16"
    if b"\x00" in lines:  # valid UTF-8 too, so read as text it would be queries of "h\x00e\x00l\x00l\x00o"
        first = lines.split(b"\n\x00", 1)[0].split(b"\x00\n", 1)[0]  # the header, most often ASCII: half its bytes NUL
        order = next((name for name, zeros in (("little-endian", first[1::2]), ("big-endian", first[::2]))
                      if zeros.count(0) > 0.9 * len(zeros)), None)
        what = (f"UTF-16 ({order}) without the byte-order mark that says so" if order else
                "NUL bytes, as binary files and UTF-16 without its byte-order mark do")
        number = lines.count(b"\n", 0, lines.index(0)) + 1
        raise DataError(f"{path}: line {number}: not text: it holds {what}; save it as UTF-8 (in Excel: CSV UTF-8)")
    try:
        lines.decode("utf-8")
        return "utf-8-sig"
    except UnicodeDecodeError as exc:
        number, byte = lines.count(b"\n", 0, exc.start) + 1, lines[exc.start]
    try:
        head.decode("cp1252")
    except UnicodeDecodeError:
        raise _not_utf8(path, number, byte) from None
    if str(path) not in _GUESSED:  # said once, though a file may be read more than once (its columns, then its rows)
        _GUESSED.add(str(path))
        log.warning("%s: not UTF-8 (line %d, byte %#04x): read as Windows-1252, the encoding of Excel's plain CSV; check its "
                    "accented letters and symbols, or save it as CSV UTF-8", path, number, byte)
    return "cp1252"


_GUESSED: set[str] = set()  # the files read as Windows-1252, warned about


def _not_utf8(path: Path, number: int, byte: int) -> DataError:
    return DataError(f"{path}: line {number}: not valid UTF-8 text (byte {byte:#04x}); save the file as UTF-8 "
                     f"(in Excel: CSV UTF-8)")


def iter_rows(path: str | Path, columns: tuple[str, ...]) -> Iterator[tuple[int, dict]]:
    """Stream (row number, row) from a .csv or .tsv, .jsonl, .txt (one ``text`` a line) or .parquet
    file, in constant memory. Problems raise DataError naming the file and row."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: " + ("a folder, not a file" if path.is_dir() else "file not found"))
    kind = file_kind(path)
    try:
        if kind == "parquet":
            yield from _parquet_rows(path, columns)
            return
        encoding = _encoding(path)
        with open(path, encoding=encoding, newline="" if kind == "csv" else None) as handle:
            if kind == "csv":
                separator, skipped = ("\t", 0) if path.suffix.lower() == ".tsv" else _separator(path, handle)
                yield from _csv_rows(path, handle, columns, separator, skipped)
            elif kind == "jsonl":
                yield from _jsonl_rows(path, handle, columns)
            else:
                for number, line in enumerate(handle, start=1):
                    yield number, {"text": line.rstrip("\r\n")}
    except UnicodeDecodeError:  # past the bytes _encoding read
        if kind == "parquet":  # no lines, and not saved from Excel
            raise DataError(f"{path}: a text column holds bytes that are not UTF-8; write the file's texts as UTF-8") from None
        raise _not_utf8(path, *_first_bad_line(path)) from None
    except OSError as exc:  # no permission to read it, a disk error
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc})") from None


def _separator(path: Path, handle) -> tuple[str, int]:
    """A CSV file's field separator and the lines before its header: a comma, or a semicolon (what Excel
    writes where the comma is the decimal mark) or a tab where the header line has one and no comma,
    or the one a first line ``sep=;`` names (Excel's hint, which Excel writes and reads; the line is
    then skipped). Said in the log when not a comma."""
    header = handle.readline()
    hint = re.fullmatch(r'"?sep=([,;\t|])"?[,;\t|]*', header.rstrip("\r\n"), re.IGNORECASE)
    if hint:
        separator, skipped, why = hint.group(1), 1, "its first line names it"
    else:
        handle.seek(0)
        separator, skipped, why = next((c for c in (";", "\t") if "," not in header and c in header), ","), 0, "its header line has no comma"
    if separator != ",":
        log.info("%s: read as %s-separated (%s)", path, {";": "semicolon", "\t": "tab"}.get(separator, repr(separator)), why)
    return separator, skipped


def _csv_rows(path: Path, handle, columns, separator: str = ",", skipped: int = 0):
    """Rows as ``csv.DictReader`` makes them (missing fields None), numbered by the file line they start
    on: a quoted field can hold line breaks, so one record can span lines, and blank lines are skipped.
    ``skipped``: the lines ``handle`` was read past before the header."""
    reader = csv.reader(handle, delimiter=separator, strict=True)  # a quote left open is an error, not the rest of the file in one text
    end = skipped  # the last line read
    try:
        header = next(reader, None)
        if not header:
            raise DataError(f"{path}: empty file, expected a header row")
        written, header = header, _match_header(header, columns)
        missing = [c for c in columns if c not in header]
        if missing:
            raise DataError(f"{path}: line {skipped + 1}: missing column {missing[0]!r} (columns: {_names(written)}){_column_hint(written, columns)}")
        twice = [c for c in columns if header.count(c) > 1]  # a row's dict kept the last one's value without a word
        if twice:
            raise DataError(f"{path}: line {skipped + 1}: {header.count(twice[0])} columns named {twice[0]!r} (columns: {_names(written)}); "
                            f"rename all but the one to read")
        header = _numbered_repeats(header)
        end = skipped + reader.line_num
        for values in reader:
            start, end = end + 1, skipped + reader.line_num
            if not values:  # a blank line
                continue
            row = dict(zip(header, values)) | {name: None for name in header[len(values):]}
            if len(values) > len(header) or any(row[c] is None for c in columns):
                mark = "comma" if separator == "," else repr(separator)
                quote = f" (a {mark} in a text needs the text in double quotes)" if len(values) > len(header) else ""
                # "...,loan_rateI need a card,new_intent": a label run into the next text; where the field after a
                # separator starts with a space ("my card, it is lost"), a text's own comma is all it can be
                if len(header) > 1 and len(values) == 2 * len(header) - 1 and not values[len(header) - 1][:1].isspace():
                    quote = (f" (a {mark} in a text needs the text in double quotes; or two rows run together, as when rows are "
                             f"added to a file that did not end with a line break)")
                raise DataError(f"{path}: {_lines(start, end)}: expected {len(header)} fields, found {len(values)}{quote}")
            for column in columns:  # a sheet bankintent wrote: its formula-like texts and labels back as they were
                if (written := row[column].strip()) != (given := spreadsheet_text(written)):
                    row[column] = given
            yield start, row
    except csv.Error as exc:  # e.g. a field past the csv module's size limit: a quote left open far above
        if str(exc) == "unexpected end of data":
            raise DataError(f"{path}: line {end + 1}: a double quote opens a text that is never closed (the rest of the file "
                            f"would be read as one text); close the quote or remove it") from None
        if "field larger than field limit" in str(exc):  # no query is that long: a quote left open, or a document pasted in
            raise DataError(f"{path}: {_lines(end + 1, skipped + reader.line_num)}: a field of over {csv.field_size_limit():,} "
                            f"characters (no query is that long: a double quote left open, or a document pasted into a cell)") from None
        raise DataError(f"{path}: {_lines(end + 1, skipped + reader.line_num)}: malformed CSV ({exc})") from None


def _numbered_repeats(header: list[str]) -> list[str]:
    """A header's other columns named twice (``id,id``) as pandas names them, ``id`` and ``id.1``: each
    kept beside the predictions, where the second had replaced the first. Unnamed columns (a sheet's
    trailing commas) are left as they are."""
    seen, taken, named = Counter(), set(header), []
    for name in header:
        seen[name] += 1
        number, given = seen[name] - 1, name
        while name and number and (given := f"{name}.{number}") in taken:  # id, id.1, id: the second id is id.2
            number += 1
        taken.add(given)
        named.append(given)
    return named


def _match_header(header: list[str], columns: tuple[str, ...]) -> list[str]:
    """``header`` with a column named as one of ``columns`` but for case and surrounding spaces
    (``Text``, `` label ``) renamed to it, where exactly one is: spreadsheets write headers so."""
    header = list(header)
    for column in columns:
        if column not in header:
            near = [i for i, name in enumerate(header) if name.strip().casefold() == column.strip().casefold()]
            if len(near) == 1:
                header[near[0]] = column
    return header


def _names(header) -> str:
    """Column names quoted, so that stray spaces and empty names show."""
    return ", ".join(repr(str(name)) for name in header)


def _column_hint(header, columns: tuple[str, ...]) -> str:
    """What to do about a missing column: a header that is one field holding a ``;`` or a tab is a file
    with another separator; otherwise the columns may just be named otherwise."""
    names = [str(name) for name in header]
    separator = next((c for c in (";", "\t", "|") if len(names) == 1 and c in names[0]), None)
    if separator:
        return f"; the file looks {separator!r}-separated, and CSV files are read comma-separated"
    if len(columns) == 1:  # queries alone (predict --input, an out-of-scope file)
        return "; name the column to read with --text-column (text_column in Python)"
    return ("; name the columns to read with --text-column and --label-column (text_column, label_column in Python); "
            "every file of a data set uses the same names")


def _lines(start: int, end: int) -> str:
    """Where a CSV record lies; a record over several lines most often means a quote left open."""
    return f"line {start}" if start >= end else f"lines {start}-{end}, one record (is a quote on line {start} left open?)"


class _RepeatedKey(Exception):
    pass


def _one_value_a_key(pairs: list[tuple[str, object]]) -> dict:
    row = dict(pairs)
    if len(row) < len(pairs):
        raise _RepeatedKey(next(key for i, (key, _) in enumerate(pairs) if any(key == other for other, _ in pairs[:i])))
    return row


def _jsonl_rows(path: Path, handle, columns):
    for number, line in enumerate(handle, start=1):
        if not line.strip():
            continue
        if line.lstrip().startswith("["):  # most often a .json file of one array, renamed
            raise DataError(f"{path}: line {number}: a JSON array, where JSON lines (one object a line) are read; write the file "
                            f"with pandas' to_json(orient='records', lines=True)")
        try:
            row = json.loads(line, object_pairs_hook=_one_value_a_key)
        except _RepeatedKey as exc:  # json keeps the last value silently: the other would be lost, or read as the text
            raise DataError(f"{path}: line {number}: key {exc.args[0]!r} given twice in one object; keep one") from None
        except (json.JSONDecodeError, RecursionError) as exc:
            detail = (f"{exc.msg.removesuffix(' at')} at column {exc.colno}" if isinstance(exc, json.JSONDecodeError)
                      else "nested too deeply")
            raise DataError(f"{path}: line {number}: not valid JSON ({detail})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}: line {number}: expected a JSON object")
        if any(c not in row for c in columns):  # keys written ``Text`` or `` text ``, as a CSV header may be
            row = dict(zip(_match_header(list(row), columns), row.values()))
        missing = [c for c in columns if c not in row]
        if missing:
            raise DataError(f"{path}: line {number}: missing column {missing[0]!r} (columns: {_names(row)}){_column_hint(row, columns)}")
        yield number, row


def _parquet_rows(path: Path, columns):
    """Rows of a Parquet file, numbered from 1, read a batch at a time (pyarrow, which ``datasets``
    installs): a file of logs written by Spark or pandas, any size. The other columns' values are made
    what JSON holds (``_json_value``), so that every output format keeps them alike."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        reader = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0]})") from None
    written = reader.schema_arrow.names
    names = _match_header(written, columns)  # ``Text``, as pandas wrote a spreadsheet's header
    missing = [c for c in columns if c not in names]
    if missing:
        raise DataError(f"{path}: missing column {missing[0]!r} (columns: {_names(written)}){_column_hint(written, columns)}")
    number = 0
    try:
        for batch in reader.iter_batches(batch_size=PARQUET_BATCH):
            for row in batch.to_pylist():
                number += 1
                yield number, {k: v if k in columns else _json_value(v) for k, v in zip(names, row.values())}
    except pa.ArrowException as exc:
        raise DataError(f"{path}: row {number + 1}: unreadable ({str(exc).splitlines()[0]})") from None


def _json_value(value):
    """``value`` as JSON holds it: a timestamp, date or time as ISO 8601 text (with its offset, where it has
    one), a decimal or bytes as text, lists and maps alike inside."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value.hex() if isinstance(value, bytes) else str(value)


def label_name(value) -> str:
    """A label as read: spaces at either end removed, in Unicode's composed form (NFC), so that ``é``
    written as one character or as ``e`` and a combining accent (as some Mac and Excel tools write it)
    is one intent, not two that print alike; and a whole number written as a float (``5.0``, as pandas
    writes a column of intent ids with a missing value) is that number (``5``), not another intent."""
    label = unicodedata.normalize("NFC", str(value).strip())
    whole = re.fullmatch(r"(-?\d+)\.0+", label)
    return whole.group(1) if whole else label


def oos_name(oos_label: str | None) -> str | None:
    """The out-of-scope label given (``--oos-label``) as the file's labels are read (``label_name``)."""
    return label_name(oos_label) if oos_label else oos_label


def numbered(path: str | Path) -> str:
    """What a file's numbers count: a text file's lines, a Parquet file's rows (it has no lines)."""
    return "row" if Path(path).suffix.lower() == ".parquet" else "line"


def line_list(numbers: list[int], word: str = "line") -> str:
    """``line 4`` or ``lines 4, 9, ...`` (the first five); ``word`` "row" for files numbered by row."""
    return f"{word}{'s' if len(numbers) > 1 else ''} " + first_few(map(str, numbers), 5)


def read_examples(path: str | Path, text_column: str = "text", label_column: str = "category",
                  strict: bool = False) -> Examples:
    """Read a labelled .csv, .tsv, .jsonl or .parquet file. A row whose text or label is empty or whitespace is
    skipped and counted (one blank row should not refuse a whole public data set, nor a row left
    unlabelled a whole sheet); with ``strict`` it is refused. A query labelled two ways is warned about."""
    path = Path(path)
    if path.is_file():
        file_kind(path, DATA_SUFFIXES, "a labelled data file")
    texts: list[str] = []
    labels: list[str] = []
    numbers: list[int] = []
    empty: list[int] = []
    unlabelled: list[int] = []
    for number, row in iter_rows(path, (text_column, label_column)):
        value, label = row[text_column], row[label_column]
        if value is None or isinstance(value, str) and blank(value):
            if strict:
                raise DataError(f"{path}: {numbered(path)} {number}: empty text in column {text_column!r} (strict_data refuses empty rows)")
            empty.append(number)
            continue
        if not isinstance(value, str):
            raise DataError(f"{path}: {numbered(path)} {number}: column {text_column!r} holds {type(value).__name__} {str(value)[:40]!r}, "
                            f"not text")
        if label is None or not str(label).strip():
            if strict:
                raise DataError(f"{path}: {numbered(path)} {number}: empty label in column {label_column!r} (strict_data refuses "
                                f"unlabelled rows)")
            unlabelled.append(number)
            continue
        texts.append(value.strip())
        labels.append(label_name(label))
        numbers.append(number)
    if not texts:
        skipped = f"{len(empty)} row(s) with an empty text, {len(unlabelled)} with no label skipped"
        raise DataError(f"{path}: no labelled rows ({skipped})" if empty or unlabelled else f"{path}: no rows after the header")
    if empty:
        log.warning("%s: %d row(s) with an empty text skipped (%s; strict_data / --strict-data refuses them)", path, len(empty),
                    line_list(empty, numbered(path)))
    if unlabelled:
        log.warning("%s: %d row(s) with no label in column %r skipped (%s); label them to use them "
                    "(strict_data / --strict-data refuses them)", path, len(unlabelled), label_column, line_list(unlabelled, numbered(path)))
    first: dict[tuple[str, str], int] = {}
    copies = [number for text, label, number in zip(texts, labels, numbers) if first.setdefault((text, label), number) != number]
    duplicates = len(copies)
    if duplicates:
        log.warning("%s: %d duplicated row(s) kept (%s, each the same text and label as a row above)", path, duplicates,
                    line_list(copies, numbered(path)))
    _warn_conflicts(path, texts, labels, numbers)
    return Examples(texts, labels, numbers, len(empty) + len(unlabelled), duplicates)


def _warn_conflicts(path: Path, texts: list[str], labels: list[str], numbers: list[int]) -> None:
    """Say which queries the file labels two ways (case and spaces aside): the model is taught both, and
    one is most likely a mistake."""
    seen: dict[str, dict[str, int]] = {}
    written: dict[str, str] = {}  # each query as the file first writes it, for the warning
    for text, label, number in zip(texts, labels, numbers):
        key = query_key(text)
        seen.setdefault(key, {}).setdefault(label, number)
        written.setdefault(key, text)
    conflicts = [(key, found) for key, found in seen.items() if len(found) > 1]
    if not conflicts:
        return
    shown = "; ".join(f"{written[key][:40]!r} as {' and '.join(f'{label!r} ({numbered(path)} {line})' for label, line in found.items())}"
                      for key, found in conflicts[:3]) + ("; ..." if len(conflicts) > 3 else "")
    log.warning("%s: %d query(ies) labelled more than one way: %s; the model is taught every label, so keep the right one "
                "(`bankintent audit` lists near-copies too)", path, len(conflicts), shown)


def iter_queries(path: str | Path, text_column: str = "text", *, columns: bool = False,
                 warn: bool = True, skipped: list[int] | None = None, named: str | None = None) -> Iterator[tuple]:
    """Stream (row, query) from a .txt (one query a line), .csv, .jsonl or .parquet file, in constant memory;
    with ``columns=True``, (row, query, the row's other columns as a dict).

    ``row`` is numbered alike for every format: the n-th data row is row n, a header not counted
    (line n of a .txt or .jsonl file; the n-th record after a .csv's header, where blank lines are no
    records, as for Python's csv module and pandas). Rows whose text is empty or blank are skipped,
    keeping their number; once the file is read, ``warn`` logs how many were skipped and which, and a
    ``skipped`` list given gets their row numbers; ``named``: what the warning calls the file."""
    path = Path(path)
    kind = file_kind(path)
    column = "text" if kind == "txt" else text_column
    skipped = [] if skipped is None else skipped
    previous = 0
    for record, (number, row) in enumerate(iter_rows(path, (column,)), start=1):
        row_number = record if kind == "csv" else number
        skipped.extend(range(previous + 1, row_number))  # blank .jsonl lines, which iter_rows passes over
        previous = row_number
        value = row[column]
        if value is not None and not isinstance(value, str):
            raise DataError(f"{path}: row {row_number}: expected text in column {column!r}, got {type(value).__name__}")
        if value is None or blank(value):
            skipped.append(row_number)
            continue
        text = value.strip()
        if columns:
            yield row_number, text, {k: v for k, v in row.items() if k != column}
        else:
            yield row_number, text
    if skipped and warn:
        log.warning("%s: %d empty row(s) skipped (%s)", named or path, len(skipped), line_list(skipped, "row"))


def read_queries(path: str | Path, text_column: str = "text", *, columns: bool = False) -> tuple:
    """(row numbers, queries) of a whole .txt (one a line), .csv, .jsonl or .parquet file of unlabelled queries,
    numbered as ``iter_queries`` numbers them; with ``columns=True``, (rows, queries, each row's other
    columns as a dict). A file with none is an error."""
    path = Path(path).expanduser()
    found = list(iter_queries(path, text_column, columns=columns))
    if not found:
        raise DataError(f"{path}: no queries in the file")
    return tuple(list(values) for values in zip(*found))


# a cell a spreadsheet runs as a formula: an apostrophe before it shows it as text (OWASP's advice on CSV
# injection), and apostrophes before one of these are this escape's own, undone when a .csv is read
FORMULA = re.compile(r"'*[=+\-@\t\r]")


def spreadsheet_safe(value):
    """A text a spreadsheet would run as a formula when it opens a .csv (a customer's query
    "=HYPERLINK(...)", "+cmd|..."), written after an apostrophe; one that already reads so after
    apostrophes gets one more, so ``spreadsheet_text`` gives every text back as it was. A number such as
    -12.5 is left as it is."""
    if not isinstance(value, str) or not FORMULA.match(value):
        return value
    try:
        float(value)
        return value
    except ValueError:
        return "'" + value


def spreadsheet_text(value: str) -> str:
    """``spreadsheet_safe``'s text back: what a sheet written by ``write_sheet`` (or a predictions .csv),
    labelled and saved again, holds as it was given."""
    return value[1:] if value.startswith("'") and spreadsheet_safe(value[1:]) == value else value


def write_sheet(frame, path: str | Path, **options) -> None:
    """Write a DataFrame as a .csv (UTF-8) whose text cells (customers' queries, intent names) are
    ``spreadsheet_safe``: a sheet an analyst opens in a spreadsheet runs nothing a customer typed."""
    texts = frame.select_dtypes(include=["object", "string"]).columns
    frame.assign(**{column: frame[column].map(spreadsheet_safe) for column in texts}).to_csv(path, index=False, encoding="utf-8",
                                                                                            **options)


def input_column_names(columns, taken) -> dict[str, str]:
    """The output name of each input column kept beside a command's own columns (``taken``): its own,
    or ``input_<name>`` (``input_input_<name>``, ...) where it clashes with one of them or with another's,
    in any case: ``Intent`` beside ``intent`` is one column to Spark, Excel's Power Query and SQL."""
    used = {name.lower() for name in taken}
    names: dict[str, str] = {}
    for column in columns:
        name = column
        while name.lower() in used:
            name = f"input_{name}"
        names[column] = name
        used.add(name.lower())
    return names


def with_input_columns(sheet, others: list[dict]):
    """A labelling sheet (``select``, ``discover``: a DataFrame with a ``row`` column) with each query's
    other input columns after ``row`` (an id, a timestamp: what joins the labels back to the logs), as
    read (no id turned into a float where a row lacks it; a nested JSON value as JSON)."""
    import pandas as pd

    cells = [{k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in row.items()} for row in others]
    extra = pd.DataFrame(cells, index=sheet.index, dtype=object)
    extra = extra.rename(columns=input_column_names(extra.columns, set(sheet.columns)))
    at = list(sheet.columns).index("row") + 1
    return pd.concat([sheet.iloc[:, :at], extra, sheet.iloc[:, at:]], axis=1)


def check_labelling_sheet(path: str | Path, columns: list[str], overwrite: bool = False) -> None:
    """Refuse to write a sheet for labelling (a CSV of ``columns``, the last an empty ``label``, with the
    input's own columns among them) over a file that is not an earlier such sheet, or over one in which
    a person has filled in labels: ``select`` and ``discover`` are rerun after each retraining, into the
    same default file, and that work (or the file of queries itself, named by mistake) would be lost.
    ``overwrite`` replaces it. The sheet is CSV: another suffix is refused."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder; --output names the CSV file to write")
    if path.suffix.lower() != ".csv":
        raise ConfigError(f"{path}: the sheet to label is written as CSV; give --output a .csv name")
    if overwrite or not path.is_file():
        return
    import pandas as pd

    try:
        sheet = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError):
        sheet = None
    if sheet is None or [name for name in sheet.columns if name in columns] != columns or sheet.columns[-1] != "label":
        raise ConfigError(f"{path}: exists and is not a sheet this command wrote; choose another --output, or pass --overwrite to replace it")
    filled = int((sheet["label"].str.strip() != "").sum())
    if filled:
        raise ConfigError(f"{path}: holds {filled} label(s) filled in; choose another --output, or pass --overwrite to replace them")


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
            raise DataError(f"could not download Banking77 from {url} ({exc}); set BANKINTENT_DATA_DIR to a folder holding its "
                            f"train.csv and test.csv") from None
        tmp = target / f"{split}.csv.part"
        tmp.write_bytes(payload)
        tmp.replace(target / f"{split}.csv")
    return target


def _banking77_folder() -> Path:
    """A local copy of Banking77 ($BANKINTENT_DATA_DIR; shared/data/banking77 beside the working folder
    or beside the source checkout, as the project's machines keep it; the cache) or a download."""
    given = os.environ.get("BANKINTENT_DATA_DIR")
    if given:  # named, so meant: a wrong one is said, not passed over for another copy
        if not (Path(given).expanduser() / "train.csv").is_file():
            raise DataError(f"BANKINTENT_DATA_DIR={given}: no train.csv there (it names the folder holding Banking77's train.csv and "
                            "test.csv; unset it to read the copy beside the project, or download one)")
        return Path(given).expanduser()
    beside = [folder.parent / "shared" / "data" / BANKING77 for folder in (Path.cwd(), Path(__file__).resolve().parents[2])]
    for candidate in beside:
        if (candidate / "train.csv").is_file():
            return candidate
    return _download_banking77()


@dataclass
class DataFiles:
    """The files ``--data`` stands for."""

    source: str  # "banking77", or the absolute path of the folder or file given
    train: Path
    validation: Path | None = None
    test: Path | None = None


def _pick(folder: Path, stems: tuple[str, ...], what: str) -> Path | None:
    """The first of ``folder``'s files named stem + .csv/.tsv/.jsonl/.parquet, in any case (stems in order of
    preference); a warning names the others, which are not read."""
    present = [p for stem in stems for p in sorted(folder.iterdir()) if p.is_file() and p.stem.lower() == stem
               and p.suffix.lower() in DATA_SUFFIXES]
    if len(present) > 1:
        log.warning("%s: %s files %s: using %s, not %s", folder, what, ", ".join(p.name for p in present),
                    present[0].name, ", ".join(p.name for p in present[1:]))
    return present[0] if present else None


def data_files(data: str, exclude: tuple[Path, ...] = ()) -> DataFiles:
    """Resolve ``--data``: ``banking77``, a folder (train, optional valid|validation|dev and test
    files) or a single training file. Files present and not used are named in a warning (``exclude``:
    files used otherwise, such as the out-of-scope file)."""
    if data == BANKING77:
        folder = _banking77_folder()
        log.info("banking77: read from %s", folder)
        return DataFiles(BANKING77, folder / "train.csv", None, folder / "test.csv" if (folder / "test.csv").is_file() else None)
    path = Path(data).expanduser().resolve()
    if path.is_file():
        file_kind(path, DATA_SUFFIXES, "a data file (or the folder holding train.csv)")
        beside = [p.name for p in sorted(path.parent.iterdir()) if p != path and p.suffix.lower() in DATA_SUFFIXES
                  and p.stem.lower() in ("test", *VALIDATION_STEMS) and p not in exclude]
        if beside:  # a train.csv beside another training file is another version of the data, not left out
            use = (f"give --data {path.parent} to use them" if path.stem == "train" else
                   f"to use them, give --data a folder holding them and this file as train{path.suffix}")
            log.warning("%s: --data names one file, so the files beside it (%s) are not used (the validation split, if "
                        "the data has one, is carved from %s; there is no test set); %s", path, ", ".join(beside), path.name, use)
        return DataFiles(str(path), path)
    if not path.is_dir():
        named = re.fullmatch(r"[\w.-]+/[\w.-]+", str(data)) and not path.parent.exists() and path.suffix.lower() not in DATA_SUFFIXES
        hub = (" (if it names a Hugging Face dataset: one is not read by name; save its split with datasets' to_csv or "
               "to_parquet and give that file)" if named or str(data).startswith("hf://") else "")
        raise DataError(f"{data}: no such data folder or file (expected a folder holding train.csv, or a .csv, .tsv, .jsonl or "
                        f".parquet file){hub}")
    train = _pick(path, ("train",), "training")
    if train is None:
        held = sorted(p.name for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        shown = first_few(held, 6) if held else "nothing"
        raise DataError(f"{path}: no training file (train.csv, train.tsv, train.jsonl or train.parquet) in the folder, which holds {shown}")
    files = DataFiles(str(path), train, _pick(path, VALIDATION_STEMS, "validation"), _pick(path, ("test",), "test"))
    used = {files.train, files.validation, files.test, *(Path(p).resolve() for p in exclude)}
    unused = [p.name for p in sorted(path.iterdir()) if p.suffix.lower() in (*DATA_SUFFIXES, *SPREADSHEETS) and p not in used]
    if unused:
        log.warning("%s: not read: %s (a data folder holds train, valid|validation|dev and test .csv/.tsv/.jsonl/.parquet files)",
                    path, ", ".join(unused))
    return files


def locate(data: str) -> Path:
    """The folder holding ``data``'s training file (``banking77``: a local copy or a download)."""
    return data_files(data).train.parent


def _has_column(path: Path, column: str) -> bool:
    try:
        next(iter_rows(path, (column,)), None)
    except DataError:
        return False
    return True


def query_column(path: str | Path, column: str) -> str:
    """``column``, or ``text`` where the .csv/.jsonl/.parquet file ``path`` lacks ``column`` and has a ``text``
    column: a file of queries gathered apart from the training data (chat logs, out-of-scope
    examples) often names its column ``text`` whatever the training data called it."""
    path = Path(path).expanduser()
    if column == "text" or path.suffix.lower() not in DATA_SUFFIXES or _has_column(path, column) or not _has_column(path, "text"):
        return column
    log.info("%s: no column %r; its queries are read from column 'text'", path, column)
    return "text"


def read_out_of_scope_file(path: str | Path, text_column: str = "text", label_column: str = "category",
                           oos_label: str | None = "out_of_scope") -> tuple[list[str], list[int]]:
    """The queries of an out-of-scope file and their lines (as ``Examples.rows``): .txt (one a line; blank lines and ``#`` comments skipped)
    or .csv/.jsonl/.parquet (the text column; every row is an out-of-scope example). A row whose label column
    names an intent is refused: a labelled data file given here by mistake would set the threshold
    on in-scope queries."""
    path, oos_label = Path(path).expanduser(), oos_name(oos_label)
    kind = file_kind(path, (".txt", *DATA_SUFFIXES), "an out-of-scope file")
    column = "text" if kind == "txt" else query_column(path, text_column)
    first = next(iter_rows(path, ()), None) if kind != "txt" else None
    names = list(first[1]) if first else []
    if first and column not in _match_header(names, (column,)):  # --text-column would rename the data's column too: not the way out
        either = " (or 'text')" if column != "text" else ""
        raise DataError(f"{path}: missing column {column!r}{either} (columns: {_names(names)}); an out-of-scope file's queries are "
                        f"read from the data's text column or from one named 'text': rename its column")
    texts, lines, empty = [], [], 0
    for number, row in iter_rows(path, (column,)):
        value = row[column]
        if value is None or isinstance(value, str) and blank(value):
            empty += kind != "txt"
            continue
        if kind == "txt" and value.lstrip().startswith("#"):
            continue
        if kind == "txt" and not texts and value.strip().casefold() in {"text", "query", text_column.casefold()}:
            log.warning("%s: line %d, %r, is taken for a header and skipped (a .txt file is one query a line, with none)",
                        path, number, value.strip())
            continue
        if not isinstance(value, str):
            raise DataError(f"{path}: {numbered(path)} {number}: column {column!r} holds {type(value).__name__}, not text")
        given = row.get(label_column)  # a JSONL or Parquet file's ids are numbers
        label = label_name(given) if given is not None and str(given).strip() else ""
        if label and label != oos_label and not _written_as_out_of_scope(label, oos_label):
            raise DataError(f"{path}: {numbered(path)} {number}: labelled {label!r}; every row of an out-of-scope file is out of scope "
                            f"(in a data file, rows labelled {oos_label!r} are)")
        texts.append(value.strip())
        lines.append(number)
    if empty:
        log.warning("%s: %d row(s) with an empty text skipped", path, empty)
    if not texts:
        raise DataError(f"{path}: no out-of-scope queries in the file")
    return texts, lines


def _rows(count: int) -> str:
    return f"{count} row" if count == 1 else f"{count} rows"


# how data sets commonly name their out-of-scope label (compared without case or separators):
# CLINC150's "oos", the catch-alls of chatbot exports, and theirs in Spanish, Portuguese, French and German (as _label_key writes them)
OUT_OF_SCOPE_NAMES = {"oos", "outofscope", "outofdomain", "ood", "other", "none", "nointent", "unknown", "fallback", "nomatch",
                      "fueradealcance", "fueradeldominio", "foradeescopo", "foradoescopo", "horsperimetre", "horssujet",
                      "ausserhalb", "sonstiges"}


def _label_key(label: str) -> str:
    """A label without case, accents, spaces or separators: ``Card_Arrival``, ``card arrival`` alike, and
    ``préstamo`` and ``prestamo``."""
    bare = "".join(c for c in unicodedata.normalize("NFKD", label) if not unicodedata.combining(c))
    return re.sub(r"[\W_]+", "", bare).casefold()


def _written_as_out_of_scope(label: str, oos_label: str | None) -> bool:
    """Whether ``label`` (not ``oos_label`` itself) looks like an out-of-scope label: ``oos_label``
    written otherwise, or a usual name for one (``OUT_OF_SCOPE_NAMES``)."""
    return bool(oos_label) and label != oos_label and _label_key(label) in {_label_key(oos_label), *OUT_OF_SCOPE_NAMES}


def _swapped(a: str, b: str) -> bool:
    """Whether ``a`` is ``b`` with two neighbouring letters swapped (``lost_crad``): a typo that difflib's
    ratio scores below ``TYPO_SIMILARITY`` in a short label."""
    differ = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
    return len(a) == len(b) and len(differ) == 2 and differ[1] == differ[0] + 1 and a[differ[0]] == b[differ[1]] and a[differ[1]] == b[differ[0]]


def label_warnings(labels: list[str], oos_label: str | None) -> list[str]:
    """What looks wrong in a training file's labels without being wrong for sure: labels that differ only
    in case, spaces or separators (two intents, where one was most likely meant), a rare label spelt
    almost as a common one (``polcy_renewal`` beside ``policy_renewal``: a typo in a few rows, which one
    row alone stops training with), two thin labels spelt almost alike (a new intent written two ways
    over its few rows), and a label that is the out-of-scope label written otherwise (it
    trains as an intent)."""
    variants: dict[str, list[str]] = {}
    for label in sorted(set(labels)):
        variants.setdefault(_label_key(label), []).append(label)
    found = [f"labels {', '.join(map(repr, group))} differ only in case, accents or separators and train as {len(group)} intents; "
             "write them alike if they are one" for group in variants.values() if len(group) > 1]
    counts = Counter(labels)
    intents = [n for label, n in counts.items() if label != oos_label]
    thin = float(np.median(intents)) / 2 if intents else 0  # a new intent's rows, both spellings of it among them
    for label, n in sorted(counts.items()):
        if label == oos_label:
            continue
        common = [other for other, m in counts.items() if m >= TYPO_RARITY * n and _label_key(other) != _label_key(label)]
        close = difflib.get_close_matches(label, common, n=1, cutoff=TYPO_SIMILARITY) or [other for other in common if _swapped(label, other)][:1]
        if close:
            found.append(f"label {label!r} ({_rows(n)}) is spelt almost as {close[0]!r} ({_rows(counts[close[0]])}) and trains "
                         f"as an intent of its own; relabel its rows {close[0]!r} if it is a typo")
            continue
        # a new intent written two ways over its few rows (2 and 6): neither is common, both are thin
        twin = [other for other, m in counts.items() if other > label and other != oos_label and max(n, m) < thin and m < TYPO_RARITY * n
                and n < TYPO_RARITY * m and _label_key(other) != _label_key(label)]
        close = difflib.get_close_matches(label, twin, n=1, cutoff=TYPO_SIMILARITY)
        if close:
            found.append(f"labels {label!r} ({_rows(n)}) and {close[0]!r} ({_rows(counts[close[0]])}) are spelt almost alike, both "
                         f"thin, and train as 2 intents; write them alike if they are one")
    found += [f"label {label!r} trains as an intent; rows of out-of-scope examples are labelled {oos_label!r} "
              f"(--oos-label {shlex.quote(label)} if these rows are out of scope)" for label in sorted(set(labels))
              if _written_as_out_of_scope(label, oos_label)]
    return found


def set_apart(examples: Examples, oos_label: str | None) -> tuple[Examples, Examples]:
    """(the rows of intents, the rows labelled ``oos_label``)."""
    oos_label = oos_name(oos_label)
    if not oos_label or oos_label not in examples.labels:
        return examples, Examples([], [], [])
    keep = [i for i, label in enumerate(examples.labels) if label != oos_label]
    kept = examples.take(keep)
    kept.empty_skipped, kept.duplicates = examples.empty_skipped, examples.duplicates
    return kept, examples.take([i for i, label in enumerate(examples.labels) if label == oos_label])


def draw_shots(examples: Examples, shots: int, seed: int) -> Examples:
    """``shots`` examples of each label, drawn without replacement with ``seed`` (a label with fewer
    keeps all), in the file's order. The same seed draws the same rows; each label's draw does not
    depend on the other labels'."""
    if shots < 1:
        raise DataError(f"shots must be at least 1, got {shots}")
    by_label: dict[str, list[int]] = {}
    for i, label in enumerate(examples.labels):
        by_label.setdefault(label, []).append(i)
    keep: list[int] = []
    for label in sorted(by_label):
        rows = by_label[label]
        if len(rows) > shots:
            rng = np.random.default_rng([seed, zlib.crc32(label.encode())])
            rows = sorted(rng.choice(rows, size=shots, replace=False).tolist())
        keep.extend(rows)
    subset = examples.take(sorted(keep))
    subset.empty_skipped, subset.duplicates = examples.empty_skipped, examples.duplicates
    return subset


def is_small(labels: list[str]) -> bool:
    """Whether a training file is small data: its median intent has fewer than ``SMALL_DATA_PER_INTENT`` examples."""
    counts = sorted(Counter(labels).values())
    return bool(counts) and float(np.median(counts)) < SMALL_DATA_PER_INTENT


def distinct_queries(keys, labels) -> Counter:
    """Each label's distinct queries, ``keys`` being each row's query as ``query_key`` reads it: a
    repeated row (a file's copy, a thin intent's repeat) teaches nothing new, nor is more evidence."""
    return Counter(label for _, label in set(zip(keys, labels)))


def _check_two_per_intent(full: Examples, train_file: Path) -> None:
    # distinct queries, as the validation split tells them apart (``query_key``): a repeated row teaches nothing new
    counts = distinct_queries([query_key(text) for text in full.texts], full.labels)
    rare = sorted(label for label, n in counts.items() if n < 2)
    if rare:
        known = [label for label, n in counts.items() if n >= 2]

        def line(label: str) -> str:
            row = full.rows[full.labels.index(label)] if full.rows else None
            return f"{numbered(train_file)} {row}" if row else ""

        def typo(label: str) -> str:
            close = closest_name(label, known)
            return f"a typo for {close!r}?" if close else ""

        others = [f"{label!r} ({'; '.join(said)})" if (said := [part for part in (line(label), typo(label)) if part]) else repr(label)
                  for label in rare[1:]]
        more = f" (and {len(others)} other label(s) with one: {first_few(others, 5)})" if others else ""
        at, meant = line(rare[0]), typo(rare[0])
        where = f"{at}: " if at else ""
        hint = f" ({meant})" if meant else ""
        repeated = full.labels.count(rare[0]) - 1
        example = f"1 distinct example (its other {repeated} row(s) repeat it, case and spaces aside)" if repeated else "1 example"
        raise DataError(f"{train_file}: {where}label {rare[0]!r}{more} has {example}{hint}; every intent needs at least 2 (one to "
                        f"learn from, one to check the choices on by cross-validation): add an example of it or remove its row")


def _stratified_split(full: Examples, val_fraction: float, split_seed: int) -> tuple[list[int], list[int]]:
    """Row indices (train, validation): a stratified ``val_fraction`` of the rows, drawn with
    ``split_seed``; then each validation row that repeats a training row (same label, same text but for
    case and spaces, ``query_key``) trades places with a training row of its intent that repeats
    nothing, so that validation never scores a query the model trained on. The sizes and the strata stay as drawn (Banking77: 9,002 / 1,001)."""
    train, val = (list(part) for part in train_test_split(range(len(full)), test_size=val_fraction, stratify=full.labels,
                                                          random_state=split_seed))
    keys = [(query_key(text), label) for text, label in zip(full.texts, full.labels)]
    copies = Counter(keys)
    trained = {keys[i] for i in train}
    spare: dict[str, deque] = {}
    for position, i in enumerate(train):
        if copies[keys[i]] == 1:
            spare.setdefault(full.labels[i], deque()).append(position)
    traded = 0
    for position, i in enumerate(val):
        if keys[i] in trained and spare.get(full.labels[i]):
            swap = spare[full.labels[i]].popleft()
            train[swap], val[position] = i, train[swap]
            traded += 1
    if traded:
        log.info("validation split: %d cop(ies) of training rows drawn for it trained instead", traded)
    return train, val


def split_validation(full: Examples, validation: Examples | None, train_file: Path, val_fraction: float,
                     split_seed: int) -> tuple[Examples, Examples, str]:
    """The validation split, in one place: the user's own validation file when there is one (then
    every row of the training file trains); small data (``is_small``): none, every row trains; else a
    stratified ``val_fraction`` of the training file drawn with ``split_seed``, so that every run sees
    the same split. Returns (train, validation, how the validation split was made)."""
    labels = sorted(set(full.labels))
    if validation is not None:
        return full, validation, "file"
    _check_two_per_intent(full, train_file)
    if is_small(full.labels):
        median = float(np.median(list(Counter(full.labels).values())))
        return full, Examples([], [], []), (f"none: small data (median {median:g} examples per intent, fewer than {SMALL_DATA_PER_INTENT}, "
                                            f"and no validation file): every row trains, choices are cross-validated")
    if round(len(full) * val_fraction) < len(labels):
        raise DataError(f"{train_file}: {len(full)} rows are too few for a stratified {val_fraction:.0%} validation split over "
                        f"{len(labels)} labels (raise val_fraction, or give a validation file: valid.csv beside train.csv)")
    if len(full) - round(len(full) * val_fraction) < len(labels):
        raise DataError(f"{train_file}: a {val_fraction:.0%} validation split of {len(full)} rows leaves too few to train {len(labels)} labels "
                        f"(lower val_fraction)")
    train_idx, val_idx = _stratified_split(full, val_fraction, split_seed)
    return full.take(train_idx), full.take(val_idx), f"{val_fraction:.0%} of the training file (stratified, split_seed {split_seed})"


def training_counts(splits: Splits) -> tuple[Counter, float]:
    """Each intent's training queries, and the median intent's count."""
    counts = Counter(splits.train.labels)
    return counts, float(np.median([counts[label] for label in splits.labels]))


def thin_intents(splits: Splits) -> dict[str, int]:
    """The intents with fewer than ``FEW_TRAINING_QUERIES`` training queries and at most half as many as
    the median intent (say, a new intent added with ten examples to a file of forty an intent), fewest
    first, with their counts: a model recognises such an intent less often than the others. A file of
    few examples for every intent (small data) has none: the rule is relative to the median."""
    counts, median = training_counts(splits)
    return {label: counts[label] for label in sorted(splits.labels, key=lambda label: (counts[label], label))
            if counts[label] < FEW_TRAINING_QUERIES and counts[label] <= median / 2}


def check_trained_intents(model, labels: list[str], splits: Splits) -> None:
    """Refuse a model whose intents are not those of the data its run reads now (``splits``): the data
    was changed since training, or the model folder's ``labels.json`` was edited by hand."""
    if labels != splits.labels:
        which = "; ".join(f"{side} only: {first_few(map(repr, sorted(names)), 3)}" for side, names in (("the model", set(labels) - set(splits.labels)),
                                                                             ("the data", set(splits.labels) - set(labels))) if names)
        raise DataError(f"{model}: the model's intents are not those of the data read ({splits.source}; {which or 'in another order'}); "
                        f"was the data or the model folder changed since training?")


def thin_intents_warning(splits: Splits) -> str | None:
    """``thin_intents`` as a one-line warning with its remedy; None where there is none."""
    thin = thin_intents(splits)
    if not thin:
        return None
    median = training_counts(splits)[1]
    carved = Counter(splits.validation.labels) if not splits.notes.get("validation_from_file") else Counter()  # of the file's rows
    held = lambda name: f" (+{carved[name]} held out for validation)" if carved[name] else ""  # noqa: E731
    shown = first_few((f"{name!r}: {count}{held(name)}" for name, count in thin.items()), 5)
    return (f"{len(thin)} intent(s) have far fewer training queries than the median intent ({median:g}): {shown}; the model "
            f"recognises them less often and sends more of their queries out of scope: add examples of them "
            f"(`bankintent audit` lists thin intents)")


def thin_validation(splits: Splits) -> str | None:
    """A one-line warning when more than ``THIN_VALIDATION_SHARE`` of the intents have fewer than
    ``MIN_VALIDATION_PER_INTENT`` validation queries, else None. A few such intents among many (the
    stratified 10% of Banking77 gives 2 of its 77 three or four) leave the validation split, which
    calibration and the threshold use as a whole, as good as it was: a warning there is one the user
    cannot act on."""
    counts = Counter(splits.validation.labels)
    thin = sorted((counts[label], label) for label in splits.labels if counts[label] < MIN_VALIDATION_PER_INTENT)
    if len(thin) <= THIN_VALIDATION_SHARE * len(splits.labels):
        return None
    fewest, name = thin[0]
    remedy = (f"add validation queries to {Path(splits.notes['validation']).name}" if splits.notes.get("validation_from_file")
              else "add validation queries (valid.csv) or raise val_fraction")
    return (f"the validation split is thin: {len(thin)} of {len(splits.labels)} intents have fewer than {MIN_VALIDATION_PER_INTENT} "
            f"validation queries ({name!r}: {fewest}; {len(splits.validation)} queries in all), so validation accuracy, "
            f"calibration and the out-of-scope threshold rest on little; {remedy}")


def is_number(label: str) -> bool:
    """Whether a label is an intent's id (a dataset's ``label`` column), not its name."""
    return re.fullmatch(r"-?[0-9]+", label) is not None


def _check_known(examples: Examples, path: Path, known: set[str], oos_label: str | None = None, otherwise: str = "") -> None:
    """Refuse a label of ``examples`` that is not ``known``; ``otherwise``: the way out to offer."""
    for row, label in zip(examples.rows or [], examples.labels):
        if label not in known:
            hint = (f" (out-of-scope rows are read under the label {oos_label!r}; --oos-label {shlex.quote(label)} reads these as such)"
                    if _written_as_out_of_scope(label, oos_label) else
                    " (this file's labels are numbers, the model's intents names: write the names in the file, docs/training.md)"
                    if is_number(label) and not any(map(is_number, known)) else "")
            close = closest_name(label, sorted(known) + ([oos_label] if oos_label else []))
            ways = [f"a typo for {close!r}?"] if close else []
            if otherwise and close != oos_label:  # a guess can be wrong: the other way stays offered
                ways.append(otherwise)
            more = examples.labels.count(label) - 1
            also = f", nor on {more} more row(s) labelled so" if more else ""
            others = list(dict.fromkeys(other for other in examples.labels if other not in known and other != label))
            if others:  # said at once, not one per run of the command
                also += f", nor {len(others)} other label(s) of the file ({first_few(map(repr, others), 3)})"
            why = hint or (f" ({' If not, '.join(ways)})" if ways else "")
            raise DataError(f"{path}: {numbered(path)} {row}: label {label!r} never seen in training{also}{why}")


def _check_written_otherwise(examples: Examples, path: Path, known: set[str]) -> None:
    """Refuse a label that is one of ``known`` written otherwise (``lost card`` for the model's ``Lost
    Card``): not an intent the model never saw, nor a mistake to score its answers against (with
    --unseen-as-oos its right answers were counted as the fallback's misses)."""
    def key(label: str) -> str | None:  # case, spaces and _ or - between words aside; no guess for '-1' and '1'
        return re.sub(r"[\s_-]+", " ", label).strip().casefold() if re.search(r"[^\W\d_]", label) else None

    keys = {key(name): name for name in known if key(name)}
    for row, label in zip(examples.rows or [], examples.labels):
        meant = keys.get(key(label)) if label not in known else None
        if meant is not None:
            more = sum(1 for other in examples.labels if other not in known and key(other) in keys) - 1
            also = f" ({more} more row(s) of this file likewise)" if more else ""
            raise DataError(f"{path}: {numbered(path)} {row}: label {label!r} is the model's intent {meant!r} written otherwise{also}; "
                            f"write the labels as the model's intents are written")


def read_test_file(path: Path, known: set[str], text_column: str = "text", label_column: str = "category",
                   strict_data: bool = False, oos_label: str | None = "out_of_scope",
                   unseen_as_oos: bool | None = None) -> tuple[Examples | None, OutOfScope]:
    """A file of labelled queries to test a model on: its in-scope examples (None when it holds only
    out-of-scope rows) and its out-of-scope rows set apart; every label must be one of ``known``, or
    with ``unseen_as_oos`` the rows of other labels are out of scope too (intents added since the
    model trained: what its fallback should catch). None: not an option where the file is read
    (training's test file), so the error does not offer it."""
    oos_label = oos_name(oos_label)
    test, oos = set_apart(read_examples(path, text_column, label_column, strict_data), oos_label)
    _check_written_otherwise(test, path, known)
    out_of_scope = OutOfScope()
    out_of_scope.add(oos.texts, f"{path.name}: {_rows(len(oos))} labelled {oos_label!r}", oos.rows, path)
    away = [i for i, label in enumerate(test.labels) if label not in known] if unseen_as_oos else []
    if away:
        unseen = sorted({test.labels[i] for i in away})
        gone = test.take(away)
        out_of_scope.add(gone.texts, f"{path.name}: {_rows(len(away))} of {len(unseen)} intent(s) the model never saw "
                         f"({first_few(unseen, 5)})", gone.rows, path)
        test = test.take([i for i, label in enumerate(test.labels) if label in known])
    offer = ("--unseen-as-oos counts the rows of intents the model never saw as out of scope" if unseen_as_oos is False else
             f"label the rows of intents training has none of {oos_label!r} to test the fallback on them" if oos_label else "")
    _check_known(test, path, known, oos_label, offer)
    return (test if test.texts else None), out_of_scope


def data_record(splits: Splits) -> dict:
    """What a run trains on, to compare later: the sizes of its splits and a digest of every training
    and validation query with its label."""
    digest = hashlib.sha256()
    for name, split in (("train", splits.train), ("validation", splits.validation)):
        for text, label in zip(split.texts, split.labels):
            digest.update(f"{name}\t{label}\t{text}\n".encode())
    return {"train": len(splits.train), "validation": len(splits.validation), "intents": len(splits.labels),
            "sha256": digest.hexdigest()}


def queries_digest(examples: Examples | None, out_of_scope: OutOfScope) -> str | None:
    """A digest of a labelled file's queries with their labels, its out-of-scope rows included (None: no
    query): two runs tested on the same queries from two folders compare, two tested on others do not."""
    if examples is None and not len(out_of_scope):
        return None
    digest = hashlib.sha256()
    for text, label in zip(examples.texts if examples is not None else [], examples.labels if examples is not None else []):
        digest.update(f"{label}\t{text}\n".encode())
    for text in out_of_scope.texts:
        digest.update(f"\t{text}\n".encode())
    return digest.hexdigest()


def test_digest(splits: Splits) -> str | None:
    """The test file's ``queries_digest`` (None: no test file)."""
    return queries_digest(splits.test, splits.test_out_of_scope)


def data_changes(was: dict, now: dict) -> str | None:
    """How the data of two ``data_record``s differ, in words; None where they do not."""
    if was == now:
        return None
    return (f"then {was['train']} training and {was['validation']} validation queries of {was['intents']} intents, now "
            f"{now['train']} and {now['validation']} of {now['intents']}{'' if was['train'] != now['train'] else ', other queries'}")


def query_key(text: str) -> str:
    """A query as the (uncased) model reads it, to find copies: case and runs of spaces ignored."""
    return " ".join(text.casefold().split())


def seen_in_training(examples: Examples, path: Path, train: Examples, train_path: Path) -> int:
    """How many queries of ``examples`` (a validation or test file) are also training queries, said in
    a warning where they are 1% of the file or more (scored as if unseen, they flatter the model), else
    in the log."""
    known = {query_key(text) for text in train.texts}
    seen = sum(query_key(text) in known for text in examples.texts)
    if seen:
        level = logging.WARNING if seen >= 0.01 * len(examples) else logging.INFO
        log.log(level, "%s: %d of its %d queries are also in %s (scored as if unseen)", path, seen, len(examples), train_path.name)
    return seen


def load_splits(
    data: str = BANKING77,
    text_column: str = "text",
    label_column: str = "category",
    val_fraction: float = 0.1,
    split_seed: int = 42,
    max_train_samples: int | None = None,
    strict_data: bool = False,
    oos_label: str | None = "out_of_scope",
    oos_file: str | None = None,
    shots: int | None = None,
    shots_seed: int = 42,
) -> Splits:
    """Train, validation and (if present) test examples of ``data`` (see the module docstring), the
    out-of-scope examples set apart, and notes on what was read."""
    oos_label = oos_name(oos_label)
    oos_path = Path(oos_file).expanduser().resolve() if oos_file else None
    files = data_files(data, exclude=(oos_path,) if oos_path else ())
    read = lambda path: set_apart(read_examples(path, text_column, label_column, strict_data), oos_label)  # noqa: E731
    out_of_scope, test_out_of_scope = OutOfScope(), OutOfScope()
    full, oos = read(files.train)
    out_of_scope.add(oos.texts, f"{files.train.name}: {_rows(len(oos))} labelled {oos_label!r}", oos.rows, files.train)
    if not full.texts:
        raise DataError(f"{files.train}: every row is labelled {oos_label!r} (out of scope); no intent to train")
    if len(set(full.labels)) < 2:
        besides = f" (its {_rows(len(oos))} labelled {oos_label!r} are out-of-scope examples, not an intent)" if oos else ""
        raise DataError(f"{files.train}: one intent, {full.labels[0]!r}{besides}; a classifier needs at least 2 intents to tell "
                        f"apart: add the rows of another intent")
    spelled = sorted({label for label in full.labels if oos_label and label != oos_label and _label_key(label) == _label_key(oos_label)})
    if spelled:  # rows meant as out-of-scope examples would train an intent, and the fallback would have none
        raise DataError(f"{files.train}: label {spelled[0]!r} is the out-of-scope label {oos_label!r} written otherwise, and its "
                        f"rows would train as an intent; pass --oos-label {shlex.quote(spelled[0])} (oos_label in Python) to "
                        f"take them as out-of-scope examples, or relabel them {oos_label!r}")
    log.info("%s: %d queries of %d intents%s", files.train, len(full), len(set(full.labels)),
             f", and {_rows(len(oos))} labelled {oos_label!r} (out-of-scope examples)" if oos else "")
    warnings = label_warnings(full.labels, oos_label)  # of the file's labels, before a draw of --shots
    if all(map(is_number, full.labels)):
        ids = sorted(set(full.labels), key=int)
        log.warning("%s: the intents are numbers (%s): answers, reports and the service give these numbers, and few-shot "
                    "training cannot learn from their names; write the intent names in the file instead (docs/training.md, "
                    "'Your own data')", files.train, first_few(ids, 4))
    validation = None
    if files.validation is not None:
        validation, oos = read(files.validation)
        out_of_scope.add(oos.texts, f"{files.validation.name}: {_rows(len(oos))} labelled {oos_label!r}", oos.rows, files.validation)
        _check_known(validation, files.validation, set(full.labels), oos_label)
        log.info("validation split: %s (%d queries)", files.validation, len(validation))
    if oos_path is not None:
        texts, lines = read_out_of_scope_file(oos_path, text_column, label_column, oos_label)
        out_of_scope.add(texts, f"{oos_path.name}: {len(texts)} queries", lines, oos_path)
    labels = sorted(set(full.labels))
    file_rows = len(full)
    if shots is not None:
        full = draw_shots(full, shots, shots_seed)
        log.info("shots: %d training example(s) per intent drawn (seed %d): %d of %d rows", shots, shots_seed, len(full), file_rows)
        fewer = sorted((n, label) for label, n in Counter(full.labels).items() if n < shots)
        if fewer:
            log.warning("shots: %d intent(s) have fewer than %d examples and keep all they have (%s)", len(fewer), shots,
                        first_few((f"{label!r}: {n}" for n, label in fewer), 3))
    train, validation, how = split_validation(full, validation, files.train, val_fraction, split_seed)
    for warning in warnings:  # said after the split: a typo on one row stops it, and its error names the typo alone
        if strict_data:
            raise DataError(f"{files.train}: {warning} (strict_data refuses what looks like a mistake)")
        log.warning("%s: %s", files.train, warning)
    if max_train_samples is not None and max_train_samples < len(labels):
        raise DataError(f"{files.train}: max_train_samples={max_train_samples} is fewer than the {len(labels)} intents; "
                        f"a stratified sample needs one query of each")
    if max_train_samples is not None and max_train_samples < len(train):
        keep, _ = train_test_split(range(len(train)), train_size=max_train_samples, stratify=train.labels, random_state=split_seed)
        train = train.take(keep)
        single = sorted(label for label, n in distinct_queries([query_key(t) for t in train.texts], train.labels).items() if n < 2)
        if single and not len(validation):  # small data's choices are cross-validated: it failed after training
            raise DataError(f"{files.train}: max_train_samples={max_train_samples} leaves {len(single)} intent(s) with one example "
                            f"({first_few(map(repr, single), 3)}); with no validation split every intent needs 2 (small data's "
                            f"choices are cross-validated): sample more, or give a validation file")
    test, seen = None, {}
    if how == "file":
        seen["validation"] = seen_in_training(validation, files.validation, train, files.train)
    if files.test is not None:
        test, test_out_of_scope = read_test_file(files.test, set(labels), text_column, label_column, strict_data, oos_label)
        seen["test"] = seen_in_training(test, files.test, full, files.train)  # every row of the file, validation's too
    empty = {p.name: e.empty_skipped for p, e in ((files.train, full), (files.validation, validation), (files.test, test))
             if p is not None and e is not None and e.empty_skipped}
    notes = {
        "train_file": str(files.train),
        "validation": str(files.validation) if how == "file" else how,
        "validation_from_file": how == "file",
        "test_file": str(files.test) if files.test else None,
        "empty_rows_skipped": sum(empty.values()),
        "empty_rows_skipped_by_file": empty,
        "duplicate_rows": full.duplicates,
        "queries_also_in_training": seen,
    }
    if shots is not None:
        notes["shots"] = {"per_intent": shots, "seed": shots_seed, "rows": len(full), "of_rows": file_rows}
    splits = Splits(train, validation, test, labels, files.source, out_of_scope, test_out_of_scope, notes)
    missing = [label for label in labels if label not in set(validation.labels)]
    if splits.small_data:
        log.warning("validation: %s", how)
    elif missing:
        log.warning("%s: %d intent(s) have no validation query (e.g. %r)", files.validation or files.train, len(missing), missing[0])
    return splits


def run_splits(cfg, notes: bool = True) -> Splits:
    """The splits a run with options ``cfg`` (a ``config.TrainConfig``: training's, or a run folder's
    ``config.yaml``) trains, validates and tests on: the same files, validation split and ``shots``
    draw, and the same out-of-scope rows set apart. Training, evaluation, the report and distillation
    all read a run's data through it, so they cannot disagree on which queries a split holds.
    ``notes`` False keeps the data's warnings (duplicates, files not used) unsaid: a run's data read
    again, whose training said them already."""
    if not notes:
        level = log.level
        log.setLevel(logging.ERROR)
        try:
            return run_splits(cfg)
        finally:
            log.setLevel(level)
    return load_splits(cfg.data, cfg.text_column, cfg.label_column, cfg.val_fraction, cfg.split_seed, cfg.max_train_samples,
                       strict_data=cfg.strict_data, oos_label=cfg.oos_label, oos_file=cfg.oos_file,
                       shots=cfg.shots, shots_seed=cfg.draw_seed)
