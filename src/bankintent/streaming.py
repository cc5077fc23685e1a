"""Streaming batch prediction: a file of any size in constant memory, resumable.

The input (.txt one query a line, .csv or .jsonl) is validated in a first streaming pass, so a bad
row fails before any output is written and the progress bar knows the total (it shows the rate and
the time left). Queries are then read in chunks of ``CHUNK`` queries; the predictor sorts each chunk by
length so its batches pad little, and the chunk's predictions are appended to the
output as JSON lines, in input order, each with the input ``row`` it answers. Memory holds one chunk,
whatever the size of the file.

``resume=True`` continues an interrupted output file: a torn last line (from a killed run) is cut off,
the last complete line is checked against the input (same row, same text) and the queries after it
are predicted, so no line is duplicated or lost.
"""

from __future__ import annotations

import json
from itertools import islice
from pathlib import Path

from tqdm.auto import tqdm

from bankintent.data import iter_queries
from bankintent.errors import DataError
from bankintent.predict import Predictor, check_texts

CHUNK = 4096  # queries read, sorted by length, predicted and written at once


def _complete_lines(output: Path) -> tuple[int, bytes | None]:
    """(number of complete lines of ``output``, the last of them), after truncating a torn last line."""
    if not output.exists():
        return 0, None
    with open(output, "rb+") as handle:
        count, end, last = 0, 0, None
        for line in handle:
            if not line.endswith(b"\n"):
                break
            count, end, last = count + 1, end + len(line), line
        handle.truncate(end)
    return count, last


def _check_continues(output: Path, last: bytes, input_path: Path, row: int, text: str) -> None:
    """The output's last line must be the prediction of query ``row`` of the input."""
    try:
        result = json.loads(last)
        same = result["row"] == row and result["text"] == check_texts([text])[0]
    except (ValueError, TypeError, KeyError):
        same = False
    if not same:
        raise DataError(f"{output}: its last line does not answer row {row} of {input_path}; not its output")


def _resume_point(output: Path, input_path: Path, text_column: str, total: int) -> int:
    done, last = _complete_lines(output)
    if done > total:
        raise DataError(f"{output}: holds {done} lines but {input_path} has only {total} queries; not its output")
    if done:
        row, text = next(islice(iter_queries(input_path, text_column), done - 1, None))
        _check_continues(output, last, input_path, row, text)
    return done


def predict_file(predictor: Predictor, input_path: str | Path, output_path: str | Path, text_column: str = "text",
                 top_k: int = 3, resume: bool = False) -> int:
    """Predict every query of ``input_path`` into ``output_path`` (JSON lines: ``row`` and the fields of
    ``Predictor.predict``); returns the number of lines written by this call."""
    input_path, output_path = Path(input_path), Path(output_path)
    total = sum(1 for _ in iter_queries(input_path, text_column))  # validates every row first
    if total == 0:
        raise DataError(f"{input_path}: no queries")
    if output_path.exists() and not resume:
        raise DataError(f"{output_path}: already exists; pass --resume to continue it or remove it")
    if not output_path.parent.is_dir():
        raise DataError(f"{output_path}: folder {output_path.parent} does not exist")
    done = _resume_point(output_path, input_path, text_column, total) if resume else 0
    queries = islice(iter_queries(input_path, text_column), done, None)
    written = 0
    with open(output_path, "a", encoding="utf-8") as out, \
            tqdm(total=total, initial=done, unit="q", desc="predicting", smoothing=0.1) as bar:
        while chunk := list(islice(queries, CHUNK)):
            rows = [row for row, _ in chunk]
            results = predictor.predict([text for _, text in chunk], top_k=top_k)
            out.writelines(json.dumps({"row": row, **result}) + "\n" for row, result in zip(rows, results))
            out.flush()
            written += len(chunk)
            bar.update(len(chunk))
    return written
