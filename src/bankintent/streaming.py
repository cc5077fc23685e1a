"""Streaming batch prediction: a file of any size in constant memory, resumable.

The input is validated in a first streaming pass (so a bad row fails before any output is written
and the progress bar knows the total), then predicted in batches and appended as JSON lines.
``resume=True`` skips the queries whose predictions the output already holds; a torn last line (from
a killed run) is cut off first, so nothing is duplicated or lost.
"""

from __future__ import annotations

import json
from itertools import islice
from pathlib import Path

from tqdm.auto import tqdm

from bankintent.data import iter_queries
from bankintent.errors import DataError
from bankintent.predict import Predictor


def _complete_lines(output: Path) -> int:
    """Count the complete lines of ``output``, truncating a torn last line."""
    if not output.exists():
        return 0
    with open(output, "rb+") as handle:
        count, end = 0, 0
        for line in handle:
            if not line.endswith(b"\n"):
                break
            count, end = count + 1, end + len(line)
        handle.truncate(end)
    return count


def predict_file(predictor: Predictor, input_path: str | Path, output_path: str | Path, text_column: str = "text",
                 top_k: int = 3, batch_size: int | None = None, resume: bool = False) -> int:
    """Predict every query of ``input_path`` into ``output_path`` (JSON lines); returns lines written."""
    input_path, output_path = Path(input_path), Path(output_path)
    total = sum(1 for _ in iter_queries(input_path, text_column))  # validates every row first
    if total == 0:
        raise DataError(f"{input_path}: no queries")
    if output_path.exists() and not resume:
        raise DataError(f"{output_path}: already exists; pass --resume to continue it or remove it")
    done = _complete_lines(output_path) if resume else 0
    if done > total:
        raise DataError(f"{output_path}: holds {done} lines but {input_path} has only {total} queries; not its output")
    batch_size = batch_size or predictor.batch_size * 4
    queries = (text for _, text in islice(iter_queries(input_path, text_column), done, None))
    written = 0
    with open(output_path, "a") as out, tqdm(total=total, initial=done, unit="q", desc="predicting") as bar:
        while batch := list(islice(queries, batch_size)):
            for result in predictor.predict(batch, top_k=top_k):
                out.write(json.dumps(result) + "\n")
            out.flush()
            written += len(batch)
            bar.update(len(batch))
    return written
