"""``bankintent train --nproc N``: data-parallel training on this machine, launched by torchrun.

The launcher is PyTorch's own (``torch.distributed.run``, alias ``torchrun``, run by this module so
that a stop by Ctrl-C or SIGTERM, or a process's own error, ends with the processes' own lines rather
than torchrun's traceback) with a standalone rendezvous (a free local port); inside each process the
Hugging Face Trainer does the
distributed work (DDP over NCCL on GPUs, over gloo on CPUs). Several machines: run torchrun or
``accelerate launch`` directly, as docs/distributed.md shows.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

from bankintent.errors import ConfigError


def without_nproc(argv: list[str]) -> list[str]:
    """``argv`` less its ``--nproc N`` / ``--nproc=N`` option (the launched processes must not relaunch)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            kept.append(arg)
    return kept


def torchrun_command(nproc: int, argv: list[str]) -> list[str]:
    return [sys.executable, "-m", "bankintent.launch", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "bankintent.cli", *without_nproc(argv)]


def torchrun(argv: list[str]) -> int:
    """torchrun with ``argv``; its exit status. Stopped by a signal (which it passes to the processes,
    and they say where they stopped), 128 + the signal; a process that failed (it said why), its status."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main

    try:
        main(argv)
    except SignalException as exc:
        return 128 + int(exc.sigval)
    except ChildFailedError as exc:  # a process killed by a signal has a negative status
        code = next((failure.exitcode for failure in exc.failures.values() if failure.exitcode), 1)
        return code if code > 0 else 128 - code
    return 0


def _environment(nproc: int) -> dict[str, str]:
    """torchrun gives each process one CPU thread unless OMP_NUM_THREADS is set; share the cores instead."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    return env


def start_child(command: list[str], **options) -> subprocess.Popen:
    """A ``bankintent`` child process (a sweep's run, a search's trial, torchrun) in a session of its own:
    a terminal's Ctrl-C, or a SIGTERM to the whole process group, reaches this process alone, which
    passes one stop on (``stop_children``). A child stopped twice (by the terminal and by its parent)
    takes the second stop as "now", without saving its checkpoint."""
    return subprocess.Popen(command, start_new_session=True, **options)


def stop_children(children, signum: int = signal.SIGTERM) -> None:
    """Stop the children still running (training saves a checkpoint on the signal), and wait for them."""
    running = [child for child in children if child.poll() is None]
    for child in running:
        child.send_signal(signum)
    for child in running:
        child.wait()


def relaunch(nproc: int, argv: list[str]) -> int:
    """Run ``bankintent <argv>`` (less ``--nproc``) in ``nproc`` processes under torchrun; its exit status.
    Ctrl-C and SIGTERM here are passed on to torchrun, which passes them to the processes: they save a
    checkpoint as one process does, and this one waits for them."""
    import torch

    gpus = torch.cuda.device_count()
    if gpus and nproc > gpus:
        raise ConfigError(f"--nproc {nproc}: this machine has {gpus} GPU(s); use at most one process per GPU")
    with start_child(torchrun_command(nproc, argv), env=_environment(nproc)) as launcher:
        main_thread = threading.current_thread() is threading.main_thread()  # where signal handlers can be set
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: launcher.send_signal(signum)) if main_thread else None
        try:
            while True:
                try:
                    return launcher.wait()
                except KeyboardInterrupt:  # passed on; a second Ctrl-C too, which stops the processes at once
                    launcher.send_signal(signal.SIGINT)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    raise SystemExit(torchrun(sys.argv[1:]))
