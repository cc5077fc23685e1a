"""The ``bankintent`` command: one typed function per subcommand, no logic of its own.

``train``'s options are generated from ``TrainConfig``'s fields, so the flags, the YAML keys and the
Python API never drift apart.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import typing

from bankintent.errors import BankintentError


def train(args: argparse.Namespace) -> None:
    from bankintent.config import resolve_config
    from bankintent.errors import TrainingInterrupted
    from bankintent.results import markdown_table, results_row
    from bankintent.training import train as run

    overrides = {k: v for k, v in vars(args).items() if k not in ("command", "func", "config", "nproc")}
    cfg = resolve_config(args.config, **overrides)
    if args.nproc and args.nproc > 1:  # options checked once, before N processes start
        from bankintent.launch import relaunch

        raise SystemExit(relaunch(args.nproc, sys.argv[1:]))
    try:
        metrics = run(cfg)
    except (KeyboardInterrupt, TrainingInterrupted) as exc:
        print(f"\n{exc or 'interrupted'}. Continue with: bankintent train --config {cfg.output}/config.yaml --resume",
              file=sys.stderr)
        raise SystemExit(130) from None
    if metrics:
        print(markdown_table([results_row(metrics)]))
        print(f"\nmodel: {cfg.output}/adapter   metrics: {cfg.output}/metrics.json")


def evaluate(args: argparse.Namespace) -> None:
    from bankintent.evaluation import evaluate_run

    summary = evaluate_run(args.dir, args.split, args.data, args.text_column, args.label_column)
    coverage = summary["out_of_scope"]
    print(f"{args.split}: {summary['queries']} queries, accuracy {summary['accuracy']:.2%}, macro-F1 {summary['macro_f1']:.2%}")
    print("accuracy by length: " + ", ".join(f"{r['length']} {r['accuracy']:.1%} ({r['queries']})" for r in summary["accuracy_by_length"]))
    print("most confused intent pairs:")
    for pair in summary["confused_pairs"]:
        print(f"  {pair['count']:3d}  {pair['intent_a']} <-> {pair['intent_b']}   e.g. {pair['examples'][0]}")
    if "threshold" in coverage:
        print(f"out-of-scope ({coverage['oos_score']}, threshold {coverage['threshold']:.4g}): answers {coverage['coverage']:.1%}, "
              f"accuracy on those {coverage['accuracy_kept']:.2%}, probe-set recall {coverage['probe_recall']:.1%}")
    print(f"written: {args.dir}/{args.split}_evaluation.json, _per_intent.csv, _confused_pairs.csv, _by_length.csv, _coverage.csv/.png")


def predict(args: argparse.Namespace) -> None:
    from bankintent.predict import Predictor

    if bool(args.texts) == bool(args.input):
        raise BankintentError("give either query texts or --input FILE")
    if args.input and not args.output:
        raise BankintentError("--input needs --output FILE.jsonl")
    predictor = Predictor.load(args.dir, batch_size=args.batch_size, allow_pickle=args.allow_pickle,
                               oos_score=args.oos_score, oos_threshold=args.oos_threshold)
    if args.input:
        from bankintent.streaming import predict_file

        written = predict_file(predictor, args.input, args.output, text_column=args.text_column, top_k=args.top_k,
                               resume=args.resume)
        print(f"{written} predictions written to {args.output}")
        return
    results = predictor.predict(args.texts, top_k=args.top_k)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            alternatives = ", ".join(f"{t['intent']} {t['confidence']:.2f}" for t in r["top_k"][1:])
            print(f"{r['intent']:<40} {r['confidence']:.3f}   {r['text']}" + (f"   (then: {alternatives})" if alternatives else ""))


def export(args: argparse.Namespace) -> None:
    from bankintent.export import export as run

    folder = run(args.dir, args.output, format=args.format, quantize=args.quantize)
    print(f"exported to {folder}")


def serve(args: argparse.Namespace) -> None:
    from bankintent.serving import serve as run

    if bool(args.dir) == bool(args.models_dir):
        raise BankintentError("give either a model DIR or --models-dir DIR")
    run(model_dir=args.dir, models_dir=args.models_dir, host=args.host, port=args.port, workers=args.workers,
        api_key_file=args.api_key_file, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms)


def sweep(args: argparse.Namespace) -> None:
    from bankintent.sweep import run_sweep

    run_sweep(args.config, args.output, seeds=args.seeds)


def search(args: argparse.Namespace) -> None:
    from bankintent.search import run_search

    overrides = {k: v for k, v in (("data", args.data), ("base_model", args.base_model), ("max_train_samples", args.max_train_samples)) if v is not None}
    run_search(method=args.method, trials=args.trials, storage=args.storage, output=args.output, config_file=args.config, **overrides)


def report(args: argparse.Namespace) -> None:
    from bankintent.report import write_report

    paths = write_report(args.dirs, args.output)
    print("written: " + ", ".join(map(str, paths)))


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    from bankintent.config import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        kind = hints[f.name]
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
            continue
        args = typing.get_args(kind)
        base = next((a for a in args if a is not type(None)), kind)
        if typing.get_origin(base) is list:
            parser.add_argument(flag, type=lambda s, t=typing.get_args(base)[0]: [t(x) for x in s.split(",") if x.strip()], default=None, metavar="A,B")
        else:
            parser.add_argument(flag, type=base, default=None)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bankintent", description="LoRA intent classification for banking chatbots.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a classifier; writes the model, metrics and curves to --output")
    p.add_argument("--config", help="YAML file of options (configs/*.yaml); flags override it")
    p.add_argument("--nproc", type=int, default=None, help="launch N data-parallel processes on this machine (torchrun)")
    _add_config_options(p)
    p.set_defaults(func=train)

    p = sub.add_parser("evaluate", help="accuracy, macro-F1, per-intent scores, confused pairs, accuracy by length")
    p.add_argument("dir", help="a training run's output folder")
    p.add_argument("--data", help="data folder or 'banking77' (default: the run's)")
    p.add_argument("--split", choices=("test", "validation"), default="test")
    p.add_argument("--text-column")
    p.add_argument("--label-column")
    p.set_defaults(func=evaluate)

    p = sub.add_parser("predict", help="predict intents of queries or of a file")
    p.add_argument("dir", help="a training run's output folder or a model folder")
    p.add_argument("texts", nargs="*", help="queries")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--input", help=".txt (one query a line), .csv or .jsonl file")
    p.add_argument("--output", help="write predictions as JSON lines")
    p.add_argument("--text-column", default="text")
    p.add_argument("--batch-size", type=int, default=None, help="queries per batch (default: sized for the backend)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted --output file")
    p.add_argument("--allow-pickle", action="store_true", help="accept a base model stored as pickled .bin weights")
    p.add_argument("--oos-score", choices=("msp", "mahalanobis"), help="out-of-scope score (default: the one chosen at training)")
    p.add_argument("--oos-threshold", type=float, help="out-of-scope threshold (default: chosen on validation for the target coverage)")
    p.set_defaults(func=predict)

    p = sub.add_parser("export", help="export a model folder for fast inference (ONNX, optionally int8)")
    p.add_argument("dir")
    p.add_argument("--format", choices=("onnx", "merged"), default="onnx")
    p.add_argument("--quantize", choices=("int8",), default=None)
    p.add_argument("--output", required=True)
    p.set_defaults(func=export)

    p = sub.add_parser("serve", help="HTTP service: POST /v1/predict, /healthz, /readyz, /metrics, /docs, web page at /")
    p.add_argument("dir", nargs="?", help="a model folder (or training run folder)")
    p.add_argument("--models-dir", help="serve every model folder in this folder, on one base model")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--api-key-file", help="require 'Authorization: Bearer <key>' with a key from this file")
    p.add_argument("--max-batch", type=int, default=64, help="micro-batch: most texts per forward pass")
    p.add_argument("--max-wait-ms", type=float, default=2.0, help="micro-batch: longest wait for more requests")
    p.set_defaults(func=serve)

    p = sub.add_parser("sweep", help="run a list of training runs; writes results.csv and results.md")
    p.add_argument("--config", required=True, help="sweep YAML (configs/sweep_reference.yaml)")
    p.add_argument("--output", required=True)
    p.add_argument("--seeds", type=int, default=None, help="seeds per run (mean +- std)")
    p.set_defaults(func=sweep)

    p = sub.add_parser("search", help="Bayesian hyperparameter search with Optuna on validation accuracy")
    p.add_argument("--method", default="lpft")
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--storage", required=True, help="sqlite:///DIR/study.db (resumable)")
    p.add_argument("--output", default=None, help="folder for the trials' runs (default: beside the study)")
    p.add_argument("--config", default=None, help="base YAML config")
    p.add_argument("--data")
    p.add_argument("--base-model")
    p.add_argument("--max-train-samples", type=int)
    p.set_defaults(func=search)

    p = sub.add_parser("report", help="self-contained HTML + Markdown report of runs and sweeps")
    p.add_argument("dirs", nargs="+", help="run or sweep folders")
    p.add_argument("--output", required=True)
    p.set_defaults(func=report)
    return parser


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except BankintentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
