"""Inference latency and throughput of every backend, measured side by side in one run.

    python benchmarks/latency.py runs/demo [--queries 300] [--batches 30] [--accuracy] [--json]
    python benchmarks/latency.py runs/demo --also runs/student-3 runs/student-2 --accuracy   # smaller models beside it

Backends, all on the CPU:
- ``hf-peft-unmerged`` (the baseline): the code a user would write with Hugging Face + PEFT, the
  LoRA adapter left unmerged: ``tokenizer(texts, padding=True, return_tensors="pt")``, ``model(**batch)``;
- ``pytorch-merged``: ``Predictor.load(DIR)`` (LoRA merged into the base at load);
- ``onnx-fp32`` and ``onnx-int8``: ``Predictor.load`` of ``bankintent export DIR [--quantize int8]``.
The ``Predictor`` rows include everything a caller gets: tokenization, the forward pass, calibrated
probabilities, the out-of-scope score (the model's, or ``--oos-score``) and the result dicts.

Single-query latency: each of ``--queries`` test queries (``--data``; default: the run's own test split) is sent alone to every backend;
p50 and p95 in ms. Batch throughput: ``--batches`` consecutive chunks of 64 test queries, as a
client would send them (not sorted by length), each one call; queries per second. The baseline pads
each chunk to its longest query, as the plain code does; ``Predictor`` sorts the chunk by length and
runs it in batches of its default size (``predict.CPU_BATCH``). The backends take
turns in blocks, over three rounds in rotating order (see ``measure``). ``ratio_to_baseline`` is the baseline's
p50 divided by the backend's (a speed-up: 2.0 = twice as fast); ``throughput_ratio`` likewise for
throughput. ``--accuracy`` adds each backend's accuracy on the whole test split (of its top intent,
the out-of-scope fallback aside) and its agreement with ``pytorch-merged``.

Batch independence (the ``Predictor`` rows): ``INDEPENDENCE_QUERIES`` test queries are predicted
alone (one call each), then in chunks of 64 as a client sends them (``Predictor`` runs them in
batches of similar length) and as single forward passes of 64, each padded to its longest query.
``batch Δconf`` is the largest difference, over the queries and the intents, between a calibrated
probability alone and in a batch (as ``predict`` rounds it, to 6 decimals); ``answers changed``, how
many queries got another answer (intent, or out of scope). A query's answer should not depend on its
neighbours: both are zero up to float rounding.

``--also DIR...`` measures other models of the same task in the same rotation (distilled students,
``bankintent distill``): each adds its ``pytorch-merged``, ``onnx-fp32`` and ``onnx-int8`` rows,
named ``FOLDER/backend``, and a last table gives its speed against DIR's same backend.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from bankintent.config import export_record  # noqa: E402
from bankintent.data import Examples, read_test_file, run_splits  # noqa: E402
from bankintent.errors import BankintentError  # noqa: E402
from bankintent.evaluation import data_config  # noqa: E402
from bankintent.export import export  # noqa: E402
from bankintent.modeling import load_model, load_tokenizer, read_spec  # noqa: E402
from bankintent.ood import SCORES  # noqa: E402
from bankintent.predict import Predictor, model_folder  # noqa: E402
from bankintent.results import markdown_table  # noqa: E402

BATCH = 64
WARMUP = 10
INDEPENDENCE_QUERIES = 256
ROUNDS = 3
SETTLE_SECONDS = 1.0  # before each block: the threads the previous backend left spinning go to sleep
BASELINE = "hf-peft-unmerged"
COLUMNS = ["backend", "p50 ms", "p95 ms", "batch-64 q/s", "p50 speed-up", "throughput speed-up", "batch Δconf", "answers changed"]


def baseline(folder: Path):
    """The plain Hugging Face + PEFT code, adapter unmerged: texts -> intent names."""
    model, spec = load_model(folder, merge=False)
    tokenizer = load_tokenizer(spec.base_model)

    @torch.inference_mode()
    def predict(texts: list[str]) -> list[str]:
        batch = tokenizer(texts, padding=True, truncation=True, max_length=spec.max_length, return_tensors="pt")
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        probs = torch.softmax(logits / spec.temperature, dim=-1)
        return [spec.labels[i] for i in probs.argmax(-1).tolist()]

    return predict


class PredictorBackend:
    """``Predictor.predict``, timed whole; the top intent, so that accuracy compares the models
    (``intent`` itself is ``out_of_scope`` for the queries past the fallback's threshold)."""

    def __init__(self, path: Path, threads: int | None, oos_score: str | None = None):
        self.predictor = Predictor.load(path, device="cpu", threads=threads, oos_score=oos_score)

    def __call__(self, texts: list[str]) -> list[str]:
        return [r["top_k"][0]["intent"] for r in self.predictor.predict(texts, top_k=3)]


def reusable(target: Path, folder: Path) -> bool:
    """Whether ``target`` already holds a finished export of the model folder ``folder``. An export of
    another model there stops the run: it would be measured under this model's name."""
    if not (target / "COMPLETE").is_file():
        return False
    source = export_record(target).get("source", "")
    if Path(source).resolve() != folder.resolve():
        raise SystemExit(f"error: {target} holds an export of {source}, not of {folder}; pass another --export-dir")
    return True


def build_backends(run: Path, export_dir: Path, threads: int | None, oos_score: str | None = None, prefix: str = "") -> dict:
    """The ``Predictor`` backends of ``run`` (exported into ``export_dir`` unless an export of it is
    there), and the baseline unless ``prefix`` names a model measured beside the main one."""
    folder = model_folder(run)
    onnx_fp32, onnx_int8 = export_dir / "onnx-fp32", export_dir / "onnx-int8"
    for target, quantize in ((onnx_fp32, None), (onnx_int8, "int8")):
        if not reusable(target, folder):
            export(folder, target, format="onnx", quantize=quantize, overwrite=True)  # an unfinished export of it
    return ({} if prefix else {BASELINE: baseline(folder)}) | {
        prefix + "pytorch-merged": PredictorBackend(folder, threads, oos_score),
        prefix + "onnx-fp32": PredictorBackend(onnx_fp32, threads, oos_score),
        prefix + "onnx-int8": PredictorBackend(onnx_int8, threads, oos_score),
    }


def timed(fn, texts: list[str]) -> float:
    start = time.perf_counter()
    fn(texts)
    return time.perf_counter() - start


def measure(backends: dict, texts: list[str], queries: int, batches: int, rounds: int = ROUNDS) -> dict[str, dict]:
    """Each backend in turn runs a block of single queries, then of batches; ``rounds`` rounds, each
    in another order, so that a change in machine load hits all backends alike. Blocks, not one query
    per backend in turn: PyTorch's OpenMP threads keep spinning for a while after each call, and
    would take a core from whichever backend ran next."""
    singles = {name: [] for name in backends}
    batch_seconds = {name: 0.0 for name in backends}
    names = list(backends)
    single_texts = texts[WARMUP : WARMUP + queries]
    cycled = list(itertools.islice(itertools.cycle(texts), BATCH * batches))  # more batches than the split holds reuse it
    chunks = [cycled[i : i + BATCH] for i in range(0, BATCH * batches, BATCH)]
    with tqdm(total=rounds * len(names), desc="blocks of single queries and batches", unit="block") as bar:
        for r in range(rounds):
            for name in names[r % len(names):] + names[: r % len(names)]:
                fn = backends[name]
                time.sleep(SETTLE_SECONDS)
                for text in texts[:WARMUP]:
                    fn([text])
                for text in single_texts[r::rounds]:
                    singles[name].append(timed(fn, [text]))
                for chunk in chunks[r::rounds]:
                    batch_seconds[name] += timed(fn, chunk)
                bar.update()
    return {
        name: {
            "p50_ms": 1000 * statistics.median(singles[name]),
            "p95_ms": 1000 * float(np.percentile(singles[name], 95)),
            "throughput_qps": BATCH * len(chunks) / batch_seconds[name],
        }
        for name in backends
    }


def accuracy(backends: dict, texts: list[str], labels: list[str]) -> dict[str, dict]:
    predicted = {}
    for name, fn in tqdm(backends.items(), desc="accuracy on the test split", unit="backend"):
        predicted[name] = [intent for i in range(0, len(texts), 256) for intent in fn(texts[i : i + 256])]
    reference = np.array(predicted["pytorch-merged"])
    return {
        name: {"test_accuracy": float(np.mean(np.array(p) == np.array(labels))), "agreement_with_pytorch": float(np.mean(np.array(p) == reference))}
        for name, p in predicted.items()
    }


def batch_independence(backends: dict, texts: list[str]) -> dict[str, dict]:
    """For each ``Predictor`` backend: the largest difference of a calibrated probability between a
    query alone and in a batch (``Predictor``'s batches of similar length, and one padded batch of
    64), and how many queries got another answer (intent, or out of scope)."""

    def answers(predictor: Predictor, chunk: int) -> tuple[list[str], np.ndarray]:
        results = [r for i in range(0, len(texts), chunk) for r in predictor.predict(texts[i : i + chunk], top_k=len(predictor.labels))]
        index = {label: i for i, label in enumerate(predictor.labels)}
        probabilities = np.zeros((len(results), len(index)))
        for row, result in enumerate(results):
            for ranked in result["top_k"]:
                probabilities[row, index[ranked["intent"]]] = ranked["confidence"]
        return [r["intent"] for r in results], probabilities

    results = {}
    for name, fn in tqdm(backends.items(), desc="batch independence", unit="backend"):
        if not isinstance(fn, PredictorBackend):
            continue
        predictor = fn.predictor
        alone_intents, alone = answers(predictor, 1)
        batched = [answers(predictor, BATCH)]
        default = predictor.batch_size
        predictor.batch_size = BATCH
        try:
            batched.append(answers(predictor, BATCH))
        finally:
            predictor.batch_size = default
        results[name] = {
            "batch_max_confidence_diff": float(max(np.abs(p - alone).max() for _, p in batched)),
            "batch_answers_changed": int(max(sum(a != b for a, b in zip(intents, alone_intents)) for intents, _ in batched)),
        }
    return results


def figure(results: dict[str, dict], path: Path, command: str, first: str) -> None:
    """Test accuracy against single-query p50 and against batch throughput, one point per model
    (colour) and backend (marker); rows are named ``backend`` for the first model (``first``),
    ``MODEL/backend`` for the others."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    def parts(name: str) -> tuple[str, str]:
        return tuple(name.split("/", 1)) if "/" in name else (first, name)

    models = list(dict.fromkeys(parts(name)[0] for name in results))
    backends = list(dict.fromkeys(parts(name)[1] for name in results))
    markers = dict(zip(backends, "osD^vP*X"))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8), sharey=True)
    for ax, key, label in ((axes[0], "p50_ms", "single-query p50 (ms, lower is better)"),
                           (axes[1], "throughput_qps", "batch-64 throughput (queries/s, higher is better)")):
        for name, values in results.items():
            model, backend = parts(name)
            ax.scatter(values[key], 100 * values["test_accuracy"], s=40, color=f"C{models.index(model)}", marker=markers[backend])
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    handles = [Line2D([], [], color=f"C{i}", marker="o", linestyle="", label=m) for i, m in enumerate(models)]
    handles += [Line2D([], [], color="grey", marker=markers[b], linestyle="", label=b) for b in backends]
    fig.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 0.9))
    fig.suptitle("\n".join(textwrap.wrap(command, 140)), fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def test_queries(run_dir: Path, data: str | None) -> tuple[Examples, str]:
    """The labelled queries timed and scored, and where they come from: ``data`` (a labelled file, read
    with the run's columns, its out-of-scope rows left out; or a data folder or ``banking77``: its test
    split), by default the test split of the data the run trained on."""
    cfg = data_config(run_dir, data)
    if data and Path(data).expanduser().is_file():
        labels = set(read_spec(model_folder(run_dir)).labels)
        examples, _ = read_test_file(Path(data).expanduser(), labels, cfg.text_column, cfg.label_column, oos_label=cfg.oos_label)
        if examples is None:
            raise BankintentError(f"{data}: only out-of-scope rows; give queries of the model's intents")
        return examples, str(data)
    splits = run_splits(cfg, notes=False)
    if splits.test is None or not len(splits.test):
        raise BankintentError(f"{cfg.data}: no test split to time and score on; give --data FILE (labelled queries of the model's intents)")
    return splits.test, f"{cfg.data} (its test split)"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", help="a training run or model folder (LoRA)")
    parser.add_argument("--data", help="the labelled queries timed and scored: a file, or a data folder or banking77 (its test "
                                       "split); default: the test split of the data the model trained on")
    parser.add_argument("--queries", type=int, default=300, help="single queries timed per backend")
    parser.add_argument("--batches", type=int, default=30, help="batches of 64 timed per backend")
    parser.add_argument("--threads", type=int, default=None, help="threads for PyTorch and ONNX Runtime (default: all cores)")
    parser.add_argument("--export-dir", help="keep (and reuse) the ONNX exports here")
    parser.add_argument("--oos-score", choices=SCORES,
                        help="out-of-scope score of the Predictor backends (default: the model's); msp costs nothing beside the forward pass")
    parser.add_argument("--accuracy", action="store_true", help="also accuracy on the whole test split and agreement with PyTorch")
    parser.add_argument("--also", nargs="+", default=[], metavar="DIR", help="other models (e.g. distilled students) measured beside DIR")
    parser.add_argument("--figure", metavar="PNG", help="with --accuracy: test accuracy against p50 and throughput, a point per backend")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)
    if args.figure and not args.accuracy:
        parser.error("--figure needs --accuracy")
    hf_logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        test, source = test_queries(Path(args.dir), args.data)
    except BankintentError as exc:
        raise SystemExit(f"error: {exc}") from None
    with tempfile.TemporaryDirectory() as tmp:
        exports = Path(args.export_dir or tmp)
        backends = build_backends(Path(args.dir), exports, args.threads, args.oos_score)
        for other in map(Path, args.also):
            backends |= build_backends(other, exports / other.name, args.threads, args.oos_score, prefix=f"{other.name}/")
        results = measure(backends, test.texts, args.queries, args.batches)
        for name, values in batch_independence(backends, test.texts[:INDEPENDENCE_QUERIES]).items():
            results[name].update(values)
        if args.accuracy:
            for name, values in accuracy(backends, test.texts, test.labels).items():
                results[name].update(values)
    base = results[BASELINE]
    if args.figure:
        figure(results, Path(args.figure), f"python benchmarks/latency.py {' '.join(sys.argv[1:] if argv is None else argv)}", args.dir)
    rows = [{"backend": name, **values, "ratio_to_baseline": base["p50_ms"] / values["p50_ms"],
             "throughput_ratio": values["throughput_qps"] / base["throughput_qps"]} for name, values in results.items()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    columns = COLUMNS + (["test accuracy", "agreement"] if args.accuracy else [])
    table = [{
        "backend": r["backend"], "p50 ms": f"{r['p50_ms']:.2f}", "p95 ms": f"{r['p95_ms']:.2f}",
        "batch-64 q/s": f"{r['throughput_qps']:.0f}", "p50 speed-up": f"{r['ratio_to_baseline']:.2f}x",
        "throughput speed-up": f"{r['throughput_ratio']:.2f}x",
        "batch Δconf": f"{r['batch_max_confidence_diff']:.1e}" if "batch_max_confidence_diff" in r else "-",
        "answers changed": str(r["batch_answers_changed"]) if "batch_answers_changed" in r else "-",
        **({"test accuracy": f"{100 * r['test_accuracy']:.2f}%", "agreement": f"{100 * r['agreement_with_pytorch']:.2f}%"} if args.accuracy else {}),
    } for r in rows]
    score = args.oos_score or read_spec(model_folder(Path(args.dir))).oos_score
    print(f"{args.dir}: {torch.get_num_threads()} PyTorch threads, {os.cpu_count()} CPUs, "
          f"{args.queries} single queries and {args.batches} batches of {BATCH} per backend from {source}, out-of-scope score {score}")
    print(markdown_table(table, columns))
    if args.also:
        print(f"\nAgainst {args.dir}'s same backend (throughput: its batch-64 q/s over {args.dir}'s; p50: {args.dir}'s over its):")
        by_name = {r["backend"]: r for r in rows}
        print(markdown_table([{
            "backend": r["backend"], "throughput ratio": f"{r['throughput_qps'] / by_name[r['backend'].split('/', 1)[1]]['throughput_qps']:.2f}x",
            "p50 speed-up": f"{by_name[r['backend'].split('/', 1)[1]]['p50_ms'] / r['p50_ms']:.2f}x",
        } for r in rows if "/" in r["backend"]], ["backend", "throughput ratio", "p50 speed-up"]))


if __name__ == "__main__":
    sys.exit(main())
