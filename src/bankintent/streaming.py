"""Streaming batch prediction: a file of any size in constant memory.

The input (.txt one query a line, .csv, .jsonl or .parquet; standard input, one query a line, is first
copied to a temporary file) is read in a first streaming pass, so a bad row
fails before any output is written or the model is loaded, and the progress bar knows the total (it
shows the rate and the time left). Rows with an empty text are skipped with a warning that counts
them. Queries are then read in chunks (``FIRST_CHUNK`` queries, then as many as the model answered in
``CHUNK_SECONDS``, up to ``CHUNK``: the first answers are written, and the progress bar moves, every
few seconds even on a slow machine with the PyTorch model); the predictor sorts each chunk by length so its
batches pad little, and the chunk's predictions are written in input order. Memory holds one chunk,
whatever the size of the file.

Each output row is ``row`` (the n-th data row of the input is row n, a header not counted, whatever
the input format; see ``data.iter_queries``), the input row's other columns (an ``id``, say; one named
like a prediction field is renamed ``input_<name>``), then the fields of ``Predictor.predict``. The
output's format follows its extension: ``.jsonl`` (one JSON object a line), ``.csv`` (``top_k``
spread over ``top1_intent``, ``top1_confidence``, ... columns), ``.parquet`` (needs pyarrow), or
``-`` for JSON lines on stdout. A .csv or .parquet file is written beside its name as ``.part`` and
renamed when complete, so a killed run never leaves a file that looks whole.

``resume=True`` continues an interrupted .jsonl output: a torn last line (from a killed run) is cut
off, the last complete line is checked against the input (same row, same text) and against the model
and options of this run (its query answered again must give the same answer: another model,
``--top-k``, ``--oos-score`` or ``--oos-threshold`` would mix two kinds of answers in one file), and
the queries after it are predicted, so no line is duplicated or lost.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, NamedTuple

from tqdm.auto import tqdm

from bankintent.config import check_writable
from bankintent.data import input_column_names, iter_queries, spreadsheet_safe
from bankintent.errors import DataError

if TYPE_CHECKING:
    from bankintent.predict import Predictor

log = logging.getLogger(__name__)

CHUNK = 4096  # queries read, sorted by length, predicted and written at once, at most
FIRST_CHUNK = 256  # the first chunk's size, and the least
CHUNK_SECONDS = 10.0  # the time a chunk is sized to take, at the rate of the one before
STDOUT = STDIN = "-"
STDIN_NAME = "standard input"  # what messages call it
FORMATS = (".jsonl", ".csv", ".parquet")
# the least input (bytes) whose first read shows a bar: about a couple of seconds' reading. A bar that
# waited to show (tqdm's delay) was drawn at once anyway by the first warning logged beside it
SCAN_BAR_BYTES = 16 * 2**20
INT64 = (-2**63, 2**63 - 1)  # the whole numbers a Parquet int64 column holds


def _complete_lines(output: Path) -> tuple[int, bytes | None, int]:
    """(number of complete lines of ``output``, the last of them, the bytes they take: where a torn last
    line is cut once the file is known to be this run's)."""
    if not output.exists():
        return 0, None, 0
    with open(output, "rb") as handle:
        count, end, last = 0, 0, None
        for line in handle:
            if not line.endswith(b"\n"):
                break
            count, end, last = count + 1, end + len(line), line
    return count, last, end


def _check_continues(output: Path, last: bytes, input_path: Path, row: int, text: str) -> dict:
    """The output's last line must be the prediction of query ``row`` of the input."""
    from bankintent.predict import check_texts

    try:
        result = json.loads(last)
        same = result["row"] == row and result["text"] == check_texts([text])[0]
    except (ValueError, TypeError, KeyError):
        same = False
    if not same:
        raise DataError(f"{output}: its last line does not answer row {row} of {input_path}; not its output")
    return result


def _resume_point(output: Path, input_path: Path, text_column: str, total: int) -> tuple[int, dict | None]:
    """(lines of ``output`` done, the last of them) for ``resume``; a torn last line (the run killed while
    writing it) cut off, once the file's last complete line shows it is this input's output."""
    done, last, end = _complete_lines(output)
    if done > total:
        raise DataError(f"{output}: holds {done} lines but {input_path} has only {total} queries; not its output")
    result = None
    if done:
        row, text = next(islice(iter_queries(input_path, text_column, warn=False), done - 1, None))
        result = _check_continues(output, last, input_path, row, text)
    if output.exists():
        os.truncate(output, end)
    return done, result


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= 1e-4
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


def _check_same_answers(output: Path, last: dict, predictor: Predictor, top_k: int) -> None:
    """The output's last answer, given again by this run's model and options: a file continued with
    another model or other options would hold two kinds of answers."""
    again = predictor.predict([last["text"]], top_k=top_k)[0]

    def change(name: str) -> str:
        was, now = last.get(name), again[name]
        if name != "top_k":
            return f"{name} {was!r} -> {now!r}"
        return f"top_k {len(was or [])} -> {len(now)}" if len(was or []) != len(now) else "top_k's intents or confidences"

    differ = [change(name) for name in ("intent", "confidence", "oos_method", "oos_threshold", "top_k") if not _same(last.get(name), again[name])]
    if differ:
        raise DataError(f"{output}: its answers were made with another model or other options (its last query, answered again: "
                        f"{'; '.join(differ)}); continue it with the model and options it was started with, or write another --output")


def interrupted_note(output: str | Path, kept: int | None = None) -> str:
    """What a prediction cut short (Ctrl-C) leaves in ``output`` (``kept``: the answers in it, if known),
    for the line the command ends with."""
    kind = output_format(output)
    if kind == "stdout":
        return "interrupted: the answers so far were written to stdout"
    if kind == "jsonl" and kept == 0:
        return "interrupted before the first answers were written: nothing to continue; run the same command again"
    if kind == "jsonl":
        return (f"interrupted: {'the' if kept is None else f'{kept:,}'} answers so far are kept in {output}; continue with the same "
                f"command and --resume")
    return (f"interrupted: nothing written (a .{kind} output is written once complete; a .jsonl output keeps what is done "
            f"and continues with --resume)")


class PredictionInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) stopped ``predict_file``; the message says what the output keeps."""


def output_format(output: str | Path) -> str:
    """``jsonl``, ``csv``, ``parquet`` or ``stdout``, from the output's name; DataError if unknown or
    if .parquet is asked for without pyarrow."""
    if str(output) == STDOUT:
        return "stdout"
    suffix = Path(output).suffix.lower()
    if suffix not in FORMATS:
        raise DataError(f"{output}: unknown output format {suffix or '(no extension)'!r}; "
                        f"use {', '.join(FORMATS)}, or - for JSON lines on stdout")
    if suffix == ".parquet":
        try:
            import pyarrow.parquet  # noqa: F401
        except ImportError:
            raise DataError(f"{output}: writing .parquet needs pyarrow (pip install pyarrow); "
                            "or write .jsonl or .csv") from None
    return suffix[1:]


def _check_output(output: str | Path, kind: str, resume: bool, overwrite: bool = False) -> None:
    if kind == "stdout":
        if resume:
            raise DataError("--resume continues an output file; it cannot continue stdout")
        return
    output = Path(output)
    if resume and overwrite:
        raise DataError(f"{output}: --resume continues the file and --overwrite replaces it; give one of them")
    if resume and kind != "jsonl":
        raise DataError(f"{output}: --resume continues .jsonl output only (a killed .{kind} run leaves no "
                        "file to continue: it is written as .part and renamed when complete)")
    if output.exists() and not resume and not overwrite:
        hint = "pass --resume to continue it or --overwrite to replace it" if kind == "jsonl" else "pass --overwrite to replace it"
        raise DataError(f"{output}: already exists; {hint}")
    if output.is_dir():
        raise DataError(f"{output}: is a folder; name an output file")
    if output.is_symlink():  # one planted in a shared folder would have the answers written over the file it names
        raise DataError(f"{output}: is a symbolic link (to {os.readlink(output)}); name the file itself")
    if resume and output.is_file():  # appended to in place: the file must be writable, not its folder
        try:
            open(output, "ab").close()
        except OSError as exc:
            raise DataError(f"{output}: cannot be continued ({exc.strerror})") from None
    else:
        check_writable(output)


def _scan(input_path: Path, text_column: str, named: str) -> tuple[int, dict[str, set[type]], list[int]]:
    """(number of queries, the input's other columns and the value types each holds, the empty rows
    skipped, said in the log as the input ``named``), reading the whole input once, which validates every row."""
    total, columns, skipped = 0, {}, []
    small = not input_path.is_file() or input_path.stat().st_size < SCAN_BAR_BYTES  # a missing file: iter_queries says so
    with tqdm(desc="checking the input", unit="q", disable=small) as bar:
        for _, _, extra in iter_queries(input_path, text_column, columns=True, skipped=skipped, named=named):
            total += 1
            bar.update()
            for name, value in extra.items():  # a whole number past Parquet's int64 is kept as text
                columns.setdefault(name, set()).add(str if type(value) is int and not INT64[0] <= value <= INT64[1] else type(value))
    return total, columns, skipped


@contextmanager
def _readable(input_path: str | Path) -> Iterator[Path]:
    """The input's path; standard input (``-``) is first copied, as bytes, into a temporary
    ``stdin.txt`` (one query a line) in $TMPDIR, since the input is read twice: checked whole, then
    predicted. Its errors and warnings name it "standard input", not the temporary file."""
    if str(input_path) != STDIN:
        yield Path(input_path)
        return
    if sys.stdin.isatty():
        print("reading queries from standard input, one a line; end with Ctrl-D", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="bankintent-") as folder:
        path = Path(folder) / "stdin.txt"
        with open(path, "wb") as handle:
            shutil.copyfileobj(sys.stdin.buffer, handle)
        renamed = _Renamed(str(path), STDIN_NAME)  # the log's warnings too (its encoding, say)
        handlers = logging.getLogger().handlers
        for handler in handlers:
            handler.addFilter(renamed)
        try:
            yield path
        except DataError as exc:
            raise DataError(str(exc).replace(str(path), STDIN_NAME)) from None
        finally:
            for handler in handlers:
                handler.removeFilter(renamed)


class _Renamed(logging.Filter):
    """Writes ``new`` for ``old`` in the messages a handler is given."""

    def __init__(self, old: str, new: str):
        super().__init__()
        self.old, self.new = old, new

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self.old in message:
            record.msg, record.args = message.replace(self.old, self.new), ()
        return True


def next_chunk(size: int, seconds: float) -> int:
    """The next chunk's size: as many queries as the model answers in ``CHUNK_SECONDS`` at the rate of
    a chunk of ``size`` that took ``seconds``, between ``FIRST_CHUNK`` and ``CHUNK``."""
    return max(min(FIRST_CHUNK, CHUNK), min(CHUNK, int(size / max(seconds, 1e-6) * CHUNK_SECONDS)))


class Predicted(NamedTuple):
    """What ``predict_file`` did: the predictions this call wrote, and the input's empty rows (skipped)."""
    written: int
    skipped: list[int]


def predict_file(predictor: Predictor | Callable[[], Predictor], input_path: str | Path, output_path: str | Path,
                 text_column: str = "text", top_k: int = 3, resume: bool = False, overwrite: bool = False) -> Predicted:
    """Predict every query of ``input_path`` (``-``: standard input, one query a line) into
    ``output_path`` (format from its extension, ``-``: stdout). ``predictor``: a Predictor, or a
    function returning one, called once the input and output have been checked."""
    kind = output_format(output_path)
    _check_output(output_path, kind, resume, overwrite)
    if STDIN not in (str(input_path), str(output_path)) and Path(output_path).exists() and Path(input_path).exists() \
            and os.path.samefile(input_path, output_path):  # --overwrite removed the input, --resume cut its last line
        raise DataError(f"{output_path}: is the input file; write the predictions to another file")
    named = STDIN_NAME if str(input_path) == STDIN else str(input_path)
    with _readable(input_path) as readable:
        return _predict_file(predictor, readable, named, output_path, kind, text_column, top_k, resume, overwrite)


def _predict_file(predictor, input_path: Path, named: str, output_path, kind: str, text_column: str, top_k: int, resume: bool,
                  overwrite: bool) -> Predicted:
    total, columns, skipped = _scan(input_path, text_column, named)
    if total == 0:
        raise DataError(f"{input_path}: no queries")
    done, last = _resume_point(Path(output_path), input_path, text_column, total) if resume else (0, None)
    if overwrite and kind == "jsonl" and Path(output_path).exists():  # appended to: start it empty (.csv and .parquet replace it whole)
        Path(output_path).unlink()
    if callable(predictor):
        predictor = predictor()
    if last is not None:
        _check_same_answers(Path(output_path), last, predictor, top_k)
    queries = islice(iter_queries(input_path, text_column, columns=True, warn=False), done, None)
    writer, names, written, size = None, {}, 0, min(FIRST_CHUNK, CHUNK)
    try:
        with tqdm(total=total, initial=done, unit="q", desc="predicting", smoothing=0.1) as bar:
            while chunk := list(islice(queries, size)):
                started = time.perf_counter()
                results = predictor.predict([text for _, text, _ in chunk], top_k=top_k)
                size = next_chunk(len(chunk), time.perf_counter() - started)
                if writer is None:  # a missing folder is made now, once the input and the model have been read
                    if kind != "stdout":
                        Path(output_path).parent.mkdir(parents=True, exist_ok=True)
                    taken = {"row", *results[0]}
                    if kind == "csv":  # where a .csv spreads top_k: an input's own top1_intent was written over
                        taken |= {f"top{rank}_{field}" for rank in range(1, top_k + 1) for field in ("intent", "confidence")}
                    names = input_column_names(columns, taken)
                    writer = _WRITERS[kind](output_path, {names[c]: kinds for c, kinds in columns.items()})
                writer.write([{"row": row, **{names[c]: extra.get(c) for c in columns}, **result}
                              for (row, _, extra), result in zip(chunk, results)])
                written += len(chunk)
                bar.update(len(chunk))
    except BaseException as exc:
        if writer is not None:
            writer.abort()
        if isinstance(exc, KeyboardInterrupt):  # a .jsonl's lines counted: a chunk may be in it whose count was not yet added
            kept = None  # the others keep nothing
            if kind == "jsonl":
                kept, _, end = _complete_lines(Path(output_path))
                os.truncate(output_path, end)  # a line torn by the interruption: the file reads as JSON lines
            raise PredictionInterrupted(interrupted_note(output_path, kept)) from None
        raise
    if writer is not None:
        writer.close()
    return Predicted(written, skipped)


class _JsonLines:
    """Appends JSON lines to a file (continued by ``resume``) or to stdout."""

    def __init__(self, output: str | Path, columns: dict[str, set[type]]):
        self.stdout = str(output) == STDOUT
        self.handle = sys.stdout if self.stdout else open(output, "a", encoding="utf-8")

    def write(self, rows: list[dict]) -> None:
        self.handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)  # é as é, as --json and the service write it
        self.handle.flush()

    def abort(self) -> None:  # what is written stays: --resume continues it
        self.close()

    def close(self) -> None:
        if not self.stdout:
            self.handle.close()


class _WholeFile:
    """A file written as ``<name>.part`` and renamed to ``<name>`` when complete."""

    def __init__(self, output: str | Path, columns: dict[str, set[type]]):
        self.output = Path(output)
        self.part = self.output.with_name(self.output.name + ".part")
        self.part.unlink(missing_ok=True)  # a killed run's, or a link planted there: written anew, never through it
        self.columns = columns

    def abort(self) -> None:
        self.finish()
        self.part.unlink(missing_ok=True)

    def close(self) -> None:
        self.finish()
        self.part.replace(self.output)

    def finish(self) -> None:
        raise NotImplementedError


class _Csv(_WholeFile):
    def __init__(self, output, columns):
        super().__init__(output, columns)
        self.handle = open(self.part, "x", encoding="utf-8", newline="")
        self.writer = None

    def write(self, rows: list[dict]) -> None:
        rows = [self._flat(row) for row in rows]
        if self.writer is None:  # every row holds every column (None where the input row had none)
            self.writer = csv.DictWriter(self.handle, fieldnames=list(rows[0]))
            self.writer.writeheader()
        self.writer.writerows(rows)

    @staticmethod
    def _flat(row: dict) -> dict:
        flat = {}
        for name, value in row.items():
            if name == "top_k" and isinstance(value, list):
                for rank, item in enumerate(value, start=1):
                    flat[f"top{rank}_intent"], flat[f"top{rank}_confidence"] = spreadsheet_safe(item["intent"]), item["confidence"]
            else:
                flat[name] = spreadsheet_safe(json.dumps(value) if isinstance(value, (dict, list)) else value)
        return flat

    def finish(self) -> None:
        self.handle.close()


class _Parquet(_WholeFile):
    """Parquet through pyarrow, one row group per chunk. Input columns take the type of their values
    (strings, integers, floats or booleans; anything else is stored as JSON text)."""

    def __init__(self, output, columns):
        super().__init__(output, columns)
        self.writer = None

    def _schema(self, rows: list[dict]):
        import pyarrow as pa

        known = {
            "row": pa.int64(), "text": pa.string(), "intent": pa.string(), "confidence": pa.float64(),
            "out_of_scope": pa.bool_(), "oos_score": pa.float64(), "oos_threshold": pa.float64(),
            "oos_method": pa.string(), "closest_intent": pa.string(),
            "top_k": pa.list_(pa.struct([("intent", pa.string()), ("confidence", pa.float64())])),
        }
        known.update({name: _arrow_type(kinds) for name, kinds in self.columns.items()})
        others = [name for name in rows[0] if name not in known]  # fields Predictor.predict may add
        inferred = pa.Table.from_pylist([{name: row[name] for name in others} for row in rows]).schema if others else None
        return pa.schema([pa.field(name, known[name]) if name in known else inferred.field(name) for name in rows[0]])

    def _convert(self, rows: list[dict]) -> list[dict]:
        import pyarrow as pa

        strings = {name for name in self.columns if pa.types.is_string(self.schema.field(name).type)}
        return [{k: json.dumps(v) if k in strings and v is not None and not isinstance(v, str) else v for k, v in row.items()}
                for row in rows]

    def write(self, rows: list[dict]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.writer is None:
            self.schema = self._schema(rows)
            self.writer = pq.ParquetWriter(self.part, self.schema)
        self.writer.write_table(pa.Table.from_pylist(self._convert(rows), schema=self.schema))

    def finish(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _arrow_type(types: set[type]):
    import pyarrow as pa

    types = types - {type(None)}
    if types == {bool}:
        return pa.bool_()
    if types == {int}:
        return pa.int64()
    if types and types <= {int, float}:
        return pa.float64()
    return pa.string()


_WRITERS = {"jsonl": _JsonLines, "stdout": _JsonLines, "csv": _Csv, "parquet": _Parquet}
