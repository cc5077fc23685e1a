"""Memory cost of serving one more model: an extra LoRA adapter on the shared base (what
``bankintent serve --models-dir`` does) against an extra whole model (what a second
``bankintent serve DIR`` process, or ``Predictor.load``, costs). Measured as the growth of this
process's resident memory (RSS), beside the size of the tensors loaded, in one run.

    python benchmarks/adapter_memory.py runs/demo --adapters 8 --models 2
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import os
import tempfile
from pathlib import Path

import psutil
import torch
from tqdm.auto import tqdm

from bankintent.predict import Predictor
from bankintent.registry import Registry

LIBC = ctypes.CDLL(ctypes.util.find_library("c")) if ctypes.util.find_library("c") else None


def rss_mib() -> float:
    """Resident memory after a garbage collection and giving freed heap back (glibc malloc_trim)."""
    gc.collect()
    if LIBC is not None:
        LIBC.malloc_trim(0)
    return psutil.Process().memory_info().rss / 2**20


def tensor_mib(tensors) -> float:
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", nargs="?", default="runs/demo", help="a trained LoRA run or model folder")
    parser.add_argument("--adapters", type=int, default=8, help="extra adapters to load")
    parser.add_argument("--models", type=int, default=2, help="extra whole models to load")
    args = parser.parse_args()
    torch.set_num_threads(1)
    run = Path(args.dir).resolve()

    with tempfile.TemporaryDirectory() as models_dir:
        for i in range(args.adapters + 1):  # the same adapter under several names: each is loaded anew
            os.symlink(run, Path(models_dir) / f"bank_{i}")
        registry = Registry(models_dir=models_dir)
        start = rss_mib()
        registry.get("bank_0")
        first = rss_mib()
        for i in tqdm(range(1, args.adapters + 1), desc="adapters"):
            registry.get(f"bank_{i}")
        adapters = rss_mib()
        [base] = registry.bases
        adapter_params = [p for n, p in base.model.named_parameters() if n.endswith(".bank_1.weight") or n.endswith(".bank_1.bias")]

        whole = []
        for _ in tqdm(range(args.models), desc="whole models"):
            whole.append(Predictor.load(run))
        models = rss_mib()

    per_adapter = (adapters - first) / args.adapters
    per_model = (models - adapters) / args.models
    print(f"{run}: RSS growth of this process (psutil), {os.cpu_count()} CPUs")
    print("| what | RSS per item (MiB) | tensors per item (MiB) |")
    print("|---|--:|--:|")
    print(f"| base model + first adapter (--models-dir) | {first - start:.1f} | {tensor_mib(base.model.parameters()) - tensor_mib(adapter_params) * args.adapters:.1f} |")
    print(f"| each extra adapter on the shared base ({args.adapters} loaded) | {per_adapter:.1f} | {tensor_mib(adapter_params):.2f} |")
    print(f"| each extra whole model, merged ({args.models} loaded) | {per_model:.1f} | {tensor_mib(whole[0].model.parameters()):.1f} |")
    print(f"an extra adapter costs {per_adapter / per_model:.1%} of an extra whole model")


if __name__ == "__main__":
    main()
