"""The project's error types. Each carries a one-line message naming the problem (file, row, field);
the CLI prints it as ``error: <message>`` and exits with status 2, never with a traceback."""

import threading

# set by whichever handler took a SIGTERM (the CLI's, or training's StopRequest): the stop was asked
# for by a scheduler or ``kill``, not Ctrl-C, and the CLI exits 143 rather than 130
TERMINATED = threading.Event()


class BankintentError(Exception):
    """Base class of every error a user can cause and fix."""


class DataError(BankintentError):
    """Malformed or missing training, evaluation or prediction data."""


class ConfigError(BankintentError):
    """An invalid option or configuration file."""


class ModelError(BankintentError):
    """A model folder that is missing, incomplete, unsafe or inconsistent."""


class TrainingInterrupted(KeyboardInterrupt):
    """Training was stopped by Ctrl-C or SIGTERM; the message says what the run folder holds and how to
    go on (``--resume``, ``resume=True``). ``resumable`` False: stopped before the output folder changed,
    so there is nothing to continue. A ``KeyboardInterrupt``, as the stop that caused it: a notebook's
    ``except Exception`` around a training does not take it for a failed run and go on to the next."""

    def __init__(self, message: str, resumable: bool = True):
        super().__init__(message)
        self.resumable = resumable
