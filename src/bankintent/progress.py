"""Progress bars that suit where they are written.

On a terminal a bar redraws itself in place, so frequent frames cost nothing. Written to a log file or
a pipe, every frame stays: tqdm's default of one frame per 0.1 s filled logs with bar frames. When
stderr is not a terminal, ``configure`` sets ``TQDM_MININTERVAL`` (tqdm >= 4.66 reads ``TQDM_*``
variables as the defaults of every bar), so each bar writes a frame every ``LOG_INTERVAL`` seconds
at most: ours, the Hugging Face Trainer's and the Hub's alike, in this process and the processes it
starts (torchrun workers, service workers).

Commands that only load a model (predict, evaluate, export, serve, report) also set
``HF_HUB_DISABLE_PROGRESS_BARS``, which Transformers follows too: loading a model whose weights are
already on disk showed a "Loading weights" bar on every ``predict``.

tqdm reads the variables when it is first imported, so ``configure`` runs before anything imports it
(the command line parses its arguments first and imports the heavy modules in the command itself).
A variable the user has set is left as it is.
"""

from __future__ import annotations

import os
import sys
from typing import TextIO

LOG_INTERVAL = 5.0  # seconds between two frames of a bar written to a file or a pipe


def configure(stream: TextIO | None = None, loading_bars: bool = True) -> None:
    """Set the progress bars' defaults for output to ``stream`` (default: stderr); with
    ``loading_bars=False``, no Hugging Face bars (model loading, Hub downloads)."""
    stream = stream if stream is not None else sys.stderr
    if not _is_terminal(stream):
        os.environ.setdefault("TQDM_MININTERVAL", str(LOG_INTERVAL))
    if not loading_bars:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def _is_terminal(stream: TextIO | None) -> bool:
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or closed
        return False
