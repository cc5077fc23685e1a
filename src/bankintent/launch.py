"""``bankintent train --nproc N``: data-parallel training on this machine, launched by torchrun.

The launcher is PyTorch's own (``python -m torch.distributed.run``, alias ``torchrun``) with a
standalone rendezvous (a free local port); inside each process the Hugging Face Trainer does the
distributed work (DDP over NCCL on GPUs, over gloo on CPUs). Several machines: run torchrun or
``accelerate launch`` directly, as docs/distributed.md shows.
"""

from __future__ import annotations

import os
import subprocess
import sys

import torch

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
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "bankintent.cli", *without_nproc(argv)]


def _environment(nproc: int) -> dict[str, str]:
    """torchrun gives each process one CPU thread unless OMP_NUM_THREADS is set; share the cores instead."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    return env


def relaunch(nproc: int, argv: list[str]) -> int:
    """Run ``bankintent <argv>`` (less ``--nproc``) in ``nproc`` processes under torchrun; its exit status."""
    gpus = torch.cuda.device_count()
    if gpus and nproc > gpus:
        raise ConfigError(f"--nproc {nproc}: this machine has {gpus} GPU(s); use at most one process per GPU")
    with subprocess.Popen(torchrun_command(nproc, argv), env=_environment(nproc)) as launcher:
        try:
            return launcher.wait()
        except KeyboardInterrupt:  # Ctrl-C reached torchrun too: it stops the workers; wait for that
            return launcher.wait()
