"""The ``bankintent`` command: one function per subcommand, each parsing nothing, calling one function of
the package and printing its result.

The arguments are parsed before anything heavy is imported: PyTorch, Transformers and ONNX Runtime
are imported inside the commands, so ``--help`` and a mistyped option answer at once. ``train``'s
options are generated from ``TrainConfig``'s fields and their documentation, so the flags, the YAML
keys and the Python API never drift apart.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import logging
import os
import re
import shlex
import signal
import stat
import sys
import threading
import types
import typing
import unicodedata
from numbers import Real
from select import POLLERR, POLLHUP, POLLOUT, poll  # the module's name is the select command's
from pathlib import Path

from bankintent import progress
from bankintent.errors import TERMINATED, BankintentError

TRAINING_COMMANDS = ("train", "sweep", "search")  # they keep the Hugging Face bars (downloads of a base model)
OOS_SCORES = ("msp", "mahalanobis", "knn", "knn+msp", "knn+msp+rmd")  # bankintent.ood.SCORES, without importing numpy to parse arguments
INPUT_TEXT_COLUMN_HELP = "column holding the query text in a .csv, .jsonl or .parquet --input (default: the one the run trained on, else text)"
ALLOW_PICKLE_HELP = "accept a base model stored as pickled .bin weights (loading them can run code)"


def _status(message: str) -> None:
    """A line on a terminal while a command imports and loads (seconds before its first result); kept
    out of logs and pipes, whose readers want results and errors only."""
    if sys.stderr.isatty():
        print(message, file=sys.stderr, flush=True)


def train(args: argparse.Namespace) -> None:
    from bankintent.config import resolve_config

    overrides = {k: v for k, v in vars(args).items() if k not in ("command", "func", "config", "nproc")}
    cfg = resolve_config(args.config, **overrides)
    if args.nproc is not None and args.nproc != 1:
        from bankintent.launch import relaunch
        from bankintent.training import check_launch

        check_launch(cfg, args.nproc)
        raise SystemExit(relaunch(args.nproc, sys.argv[1:]))
    _status(f"training {cfg.method} on {cfg.data} into {cfg.output} ...")
    from bankintent.config import MODEL_DIR
    from bankintent.results import fallback_on_test, markdown_table, results_row
    from bankintent.training import train as run

    try:
        metrics = run(cfg)
    except KeyboardInterrupt as exc:  # training's TrainingInterrupted: what the run folder holds, and how to go on
        if os.environ.get("RANK", "0") == "0":  # under torchrun, the first process says it for all
            print(f"\n{str(exc) or 'interrupted'}", file=sys.stderr)
        raise stopped() from None
    if metrics:
        print(markdown_table([results_row(metrics)]))
        if said := fallback_on_test(metrics):
            print(said)
        print(f"\nmodel: {Path(cfg.output) / MODEL_DIR}   metrics: {Path(cfg.output) / 'metrics.json'}")
        if metrics["val_accuracy"] is None and metrics["test_accuracy"] is None:  # small data, every row trained on
            print(f"no accuracy measured: every row trained and the data has no test file; measure it on labelled queries the "
                  f"model has not seen with: bankintent evaluate {shlex.quote(str(cfg.output))} --data FILE")


def evaluate(args: argparse.Namespace) -> None:
    _status(f"evaluating {args.dir} on its {args.split} split ...")
    from bankintent.evaluation import evaluate_run, summary_lines

    summary = evaluate_run(args.dir, args.split, args.data, args.text_column, args.label_column, args.output, args.overwrite,
                           args.oos_label, args.unseen_as_oos, args.oos_score, args.oos_threshold, args.allow_pickle)
    print("\n".join(summary_lines(summary, args.split, Path(args.output or args.dir))))


# the bidirectional overrides and isolates, which reorder what a terminal shows of a line
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def printable(text) -> str:
    r"""``text`` with control characters (and bidirectional overrides) written as escapes (``\x1b``): a
    query or an intent name holding a terminal's escape sequences would otherwise retitle, clear or
    rewrite the user's terminal. Other characters, no-break spaces and joiners among them, print as they are."""
    return "".join(repr(c)[1:-1] if unicodedata.category(c) == "Cc" or c in BIDI_CONTROLS else c for c in str(text))


def prediction_line(result: dict) -> str:
    """One prediction as the command prints it (``printable``). An out-of-scope answer shows its own
    evidence (the out-of-scope score against the threshold) and names the closest intent with that
    intent's probability, never as the confidence of ``out_of_scope``."""
    result = {**result, "text": printable(result.get("text")), "intent": printable(result.get("intent", "out_of_scope")),
              "closest_intent": printable(result["closest_intent"]) if result.get("closest_intent") else None,
              "top_k": [{**t, "intent": printable(t.get("intent"))} for t in result.get("top_k") or []]}
    if result.get("out_of_scope"):
        score, threshold = result.get("oos_score"), result.get("oos_threshold")
        evidence = (f"{result.get('oos_method') or 'score'} {score:.4g} > threshold {threshold:.4g}"
                    if isinstance(score, Real) and isinstance(threshold, Real) else "out of scope")
        closest = result.get("closest_intent")
        probability = next((t.get("confidence") for t in result.get("top_k") or [] if t.get("intent") == closest), None)
        if closest:
            evidence += f"; closest: {closest}" + (f" {probability:.2f}" if isinstance(probability, Real) else "")
        return f"{result.get('intent', 'out_of_scope'):<40} ({evidence})   {result.get('text')}"
    alternatives = ", ".join(f"{t['intent']} {t['confidence']:.2f}" for t in (result.get("top_k") or [])[1:])
    return (f"{result['intent']:<40} {_number(result.get('confidence'))}   {result.get('text')}"
            + (f"   (then: {alternatives})" if alternatives else ""))


def _number(value) -> str:
    return f"{value:.3f}" if isinstance(value, Real) else "  n/a"


def positive_int(value: str) -> int:
    """An argument that must be a whole number of at least 1 (``Parser`` turns the error into one line)."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def _text_column(args: argparse.Namespace) -> str:
    """--text-column, else the column the run trained on (``text`` where the --input file has that
    and not the run's)."""
    from bankintent.config import trained_text_column
    from bankintent.data import query_column

    return args.text_column or query_column(args.input, trained_text_column(args.dir))


def predict(args: argparse.Namespace) -> None:
    if bool(args.texts) == bool(args.input):
        raise BankintentError("give either query texts or --input FILE")
    if args.input and not args.output:
        raise BankintentError("--input needs --output FILE (.jsonl, .csv or .parquet; - for stdout)")
    if not args.input and (args.output or args.resume or args.overwrite):
        raise BankintentError("--output, --resume and --overwrite are for --input FILE; the predictions of query texts are printed")

    def load():
        _status(f"loading {args.dir} ...")
        from bankintent.predict import Predictor

        return Predictor.load(args.dir, batch_size=args.batch_size, allow_pickle=args.allow_pickle,
                              oos_score=args.oos_score, oos_threshold=args.oos_threshold)

    if args.engine == "spark":
        if not args.input or args.input == "-":
            raise BankintentError("--engine spark scores a file: give --input FILE and --output FILE.parquet")
        if args.resume:
            raise BankintentError("--resume continues a .jsonl output of the local engine; --engine spark writes its Parquet "
                                  "folder in one job: run it again")
        _status(f"starting Spark ({args.master or 'the master spark-submit or the environment names'}) ...")
        from bankintent.spark import score_file

        written, failed = score_file(args.dir, args.input, args.output, text_column=_text_column(args), top_k=args.top_k,
                                     master=args.master, batch_size=args.batch_size, oos_score=args.oos_score,
                                     oos_threshold=args.oos_threshold, overwrite=args.overwrite)
        unscored = f" ({failed} not scored: no text, said in their 'error' column)" if failed else ""
        print(f"{written} rows written to {args.output}, {written - failed} scored{unscored}")
        return
    if args.master:
        raise BankintentError("--master is for --engine spark")
    if args.input:
        from bankintent.data import line_list
        from bankintent.streaming import STDOUT, PredictionInterrupted, predict_file

        try:
            done = predict_file(load, args.input, args.output, text_column=_text_column(args), top_k=args.top_k,
                                resume=args.resume, overwrite=args.overwrite)
        except KeyboardInterrupt as exc:  # before the answers began (reading the input, loading the model): nothing written
            print(exc if isinstance(exc, PredictionInterrupted) else "interrupted before predicting began; run the same command again",
                  file=sys.stderr)
            raise stopped() from None
        to_stdout = args.output == STDOUT
        skipped = f"; {len(done.skipped)} empty row(s) skipped ({line_list(done.skipped, 'row')})" if done.skipped else ""
        print(f"{done.written} predictions written to {'stdout' if to_stdout else args.output}{skipped}",
              file=sys.stderr if to_stdout else sys.stdout)
        return
    from bankintent.text import blank

    empty = [i for i, text in enumerate(args.texts, start=1) if blank(text)]
    if empty:  # before the model loads; a file's empty rows are skipped, but an argument is one query asked for
        raise BankintentError(f"query argument {empty[0]} is empty (as an unset shell variable gives); give the query's text")
    results = load().predict(args.texts, top_k=args.top_k)
    if args.json:
        print(json.dumps(results, indent=2, ensure_ascii=False))
    else:
        for result in results:
            print(prediction_line(result))


def export(args: argparse.Namespace) -> None:
    _status(f"exporting {args.dir} to {args.output} ...")
    from bankintent.export import export as run

    folder = run(args.dir, args.output, format=args.format, quantize=args.quantize, calibration_data=args.calibration_data,
                 overwrite=args.overwrite, allow_pickle=args.allow_pickle)
    print(f"exported to {folder}")


def serve(args: argparse.Namespace) -> None:
    if bool(args.dir) == bool(args.models_dir):
        raise BankintentError("give either a model DIR or --models-dir DIR")
    from bankintent.config import check_port

    check_port(args.host, args.port)  # before the service's imports, which take seconds
    _status(f"loading {args.dir or args.models_dir} ...")
    from bankintent.serving import serve as run

    run(model_dir=args.dir, models_dir=args.models_dir, host=args.host, port=args.port, workers=args.workers,
        api_key_file=args.api_key_file, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, oos_score=args.oos_score,
        oos_threshold=args.oos_threshold, allowed_hosts=args.allowed_host)


def sweep(args: argparse.Namespace) -> None:
    _status(f"sweep {args.config} into {args.output} ...")
    from bankintent.sweep import run_sweep

    results = run_sweep(args.config, args.output, seeds=args.seeds, jobs=args.jobs, train=not args.no_train)
    print(f"{len(results)} finished run(s) in {Path(args.output) / 'results.md'} and results.csv")


# the training options search takes as flags (the others from --config): what the data is and which encoder
SEARCH_OPTIONS = ("data", "text_column", "label_column", "oos_label", "oos_file", "base_model", "max_train_samples")


def search(args: argparse.Namespace) -> None:
    _status(f"search: {args.trials} trials{f' of {args.method}' if args.method else ''} in {args.storage} ...")
    from bankintent.search import run_search

    overrides = {name: getattr(args, name) for name in SEARCH_OPTIONS if getattr(args, name) is not None}
    run_search(method=args.method, trials=args.trials, storage=args.storage, output=args.output, config_file=args.config, **overrides)


def report(args: argparse.Namespace) -> None:
    _status(f"report of {len(args.dirs)} folder(s) into {args.output} ...")
    from bankintent.report import write_report

    paths = write_report(args.dirs, args.output)
    print("written: " + ", ".join(map(str, paths)))


def audit(args: argparse.Namespace) -> None:
    _status(f"auditing {args.data} ...")
    from bankintent.audit import audit as run

    found = run(args.data, args.output, base_model=args.base_model, text_column=args.text_column, label_column=args.label_column,
                oos_label=args.oos_label, duplicate_threshold=args.duplicate_threshold, seed=args.seed)
    confused = found.get("most_confused")
    pair = f", most confused intents {confused[0]} / {confused[1]} ({confused[2]})" if confused else ""
    print(f"audit of {found['queries']:,} queries, {found['intents']} intents: likely label errors {found['label_issues']}, "
          f"near-duplicates with different labels {found['conflicting_duplicates']}, thin intents {found['thin_intents']}{pair}, "
          f"very short queries {found['short_queries']}, truncated {found['truncated_queries']} -> {Path(args.output) / 'summary.md'}")


def discover(args: argparse.Namespace) -> None:
    _status(f"loading {args.dir} ...")
    from bankintent.discover import discover as run

    found = run(args.dir, args.input, args.output, all_queries=args.all, text_column=_text_column(args),
                distance_threshold=args.distance_threshold, min_size=args.min_size, seed=args.seed, overwrite=args.overwrite)
    chosen = "every query" if args.all else f"{found['out_of_scope']:,} out-of-scope queries"
    print(f"{found['queries']:,} queries, {chosen} grouped: {found['clusters']} candidate intents of {found['in_clusters']:,} "
          f"queries, {found['unclustered']:,} left unclustered -> {Path(args.output) / 'clusters.csv'}, queries.csv, map.png, discover.json")


def select(args: argparse.Namespace) -> None:
    _status(f"loading {args.dir} ...")
    from bankintent.selection import select as run

    found = run(args.dir, args.input, args.budget, args.output, text_column=_text_column(args), seed=args.seed, overwrite=args.overwrite)
    print(f"{found['selected']} of {found['queries']:,} queries to label next -> {args.output} "
          f"(median margin {found['median_margin_selected']:.3f}, all queries {found['median_margin_all']:.3f})")


def distill(args: argparse.Namespace) -> None:
    _status(f"distilling {args.dir} into {args.output} ...")
    from bankintent.config import MODEL_DIR
    from bankintent.distill import distill as run
    from bankintent.results import percent_in_words as pct

    given = {k: v for k, v in vars(args).items() if v is not None}
    options = {k: v for k, v in given.items() if k not in ("command", "func", "dir", "output", "overwrite", "resume")}
    metrics = run(args.dir, args.output, overwrite=args.overwrite, resume=args.resume, **options)  # a stop says how to go on
    teacher = metrics.get("teacher_test_accuracy")
    print(f"student: {metrics['layers']} of {metrics['teacher_layers']} layers, validation {pct(metrics['val_accuracy'])}, "
          f"test {pct(metrics['test_accuracy'])} (teacher {pct(teacher)}) -> {Path(args.output) / MODEL_DIR}")


class Parser(argparse.ArgumentParser):
    """argparse's parser with one-line errors (a bad value, a missing argument, a mistyped flag): the
    error and where the usage is, rather than the usage block first. Each command's parser is one too."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (usage: {self.prog} --help)\n")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds ``(default: X)`` to an option's help, unless there is nothing to show (no default, or a
    flag that is off) or the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help = action.help or ""
        if action.default is None or action.default is False or action.default is argparse.SUPPRESS or "default" in help:
            return help
        return super()._get_help_string(action)


def _show(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ",".join(map(_show, value))
    return str(value)


def config_option_help(option: dataclasses.Field, recipes: bool = True) -> str:
    """A ``TrainConfig`` field's help with its default, and (``recipes``) the recipes that set another
    default (``lr``: "... (default: 0.0005; lora, lora-unfreeze: 0.0001; full: 5e-05)")."""
    from bankintent.config import RECIPES

    help = option.metadata.get("help", "")
    if "default" in help:  # a default that a value cannot say ("chosen from the base model")
        return help
    default = option.default_factory() if option.default is dataclasses.MISSING else option.default
    differ: dict[str, list[str]] = {}
    for method, recipe in RECIPES.items() if recipes else ():
        if option.name in recipe and recipe[option.name] != default:
            differ.setdefault(_show(recipe[option.name]), []).append(method)
    others = "".join(f"; {', '.join(methods)}: {value}" for value, methods in differ.items())
    return f"{help} (default: {_show(default)}{others})"


def _add_config_options(parser: argparse.ArgumentParser, options: type, names: tuple[str, ...] | None = None) -> None:
    """A flag for each field of the dataclass ``options`` (``TrainConfig``, ``DistillConfig``), or for
    those of ``names``."""
    hints = typing.get_type_hints(options)
    for option in dataclasses.fields(options):
        if names is not None and option.name not in names:
            continue
        flag = "--" + option.name.replace("_", "-")
        help = config_option_help(option, recipes=options.__name__ == "TrainConfig").replace("%", "%%")
        kind = hints[option.name]
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help)
            continue
        if typing.get_origin(kind) in (typing.Union, types.UnionType):  # X | None
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        if typing.get_origin(kind) is list:
            item = typing.get_args(kind)[0]
            parser.add_argument(flag, type=lambda s, t=item: [t(x) for x in s.split(",") if x.strip()], default=None,
                                metavar="A,B", help=help)
        else:
            choices = option.metadata.get("choices")
            metavar = None if choices else {int: "N", float: "X"}.get(kind, option.name.upper())
            parser.add_argument(flag, type=kind, default=None, choices=choices, metavar=metavar, help=help)


def build_parser() -> argparse.ArgumentParser:
    from bankintent import __version__
    from bankintent.config import DEFAULT_BASE_MODEL, SPLITS, DistillConfig, TrainConfig

    # allow_abbrev: --epoch would be taken for --epochs, and a mistyped flag for another; refused, naming the one meant
    parser = Parser(prog="bankintent", description="LoRA intent classification for banking chatbots.", formatter_class=HelpFormatter,
                    allow_abbrev=False)
    parser.add_argument("--version", action="version", version=f"bankintent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, **options) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=options.pop("description", help), formatter_class=HelpFormatter,
                              allow_abbrev=False, **options)

    p = command("train", "train a classifier; writes the model, metrics and curves to --output",
                epilog="'(default: X; lora: Y)': the lora recipe's default is Y (configs/METHOD.yaml holds each "
                       "method's recipe). Flags override --config, which overrides the recipe.")
    p.add_argument("--config", help="YAML file of options (configs/*.yaml; keys are the flags' names with _); flags override it")
    p.add_argument("--nproc", type=int, default=None, help="launch N data-parallel processes on this machine (torchrun) (default: 1)")
    _add_config_options(p, TrainConfig)
    p.set_defaults(func=train)

    p = command("evaluate", "accuracy, macro-F1, per-intent scores, confused pairs, accuracy by length, out-of-scope coverage")
    p.add_argument("dir", help="a training run's output folder; or a model folder or an exported folder, with --data FILE")
    p.add_argument("--data", help="a .csv/.tsv/.jsonl/.parquet file of labelled queries, evaluated as the test split; or 'banking77' or a "
                                  "data folder, as train --data (default: the run's data)")
    p.add_argument("--split", choices=SPLITS, default="test", help="which split to evaluate")
    p.add_argument("--text-column", help="column holding the query text (default: the run's)")
    p.add_argument("--label-column", help="column holding the intent label (default: the run's)")
    p.add_argument("--oos-label", help="label of out-of-scope rows, whose recall the fallback is measured on (default: the run's, "
                                       "else out_of_scope)")
    p.add_argument("--unseen-as-oos", action="store_true", help="count the rows of a --data file labelled with intents the model "
                                                                 "never saw as out of scope (default: refused)")
    p.add_argument("--output", help="folder to write the results to (default: the run's folder)")
    p.add_argument("--overwrite", action="store_true", help="replace an evaluation of other data in the folder")
    p.add_argument("--oos-score", choices=OOS_SCORES, help="out-of-scope score (default: the one chosen at training)")
    p.add_argument("--oos-threshold", type=float, help="out-of-scope threshold, on the score's scale (default: chosen at training)")
    p.add_argument("--allow-pickle", action="store_true", help=ALLOW_PICKLE_HELP)
    p.set_defaults(func=evaluate)

    p = command("predict", "predict the intents of queries, or of a file of them",
                epilog="With --input, each output row holds 'row' (the n-th data row of the input is row n, a header "
                       "not counted, whatever the format), the input row's other columns (one named like a prediction "
                       "field becomes input_<name>), then the prediction. A .csv or .parquet output is written as "
                       "NAME.part and renamed when complete; --resume continues a .jsonl output. With --engine spark the "
                       "output has the input's columns and the prediction, no 'row' (docs/spark.md).")
    p.add_argument("dir", help="a training run's output folder, a model folder or an exported folder")
    p.add_argument("texts", nargs="*", help="queries (or give --input)")
    p.add_argument("--top-k", type=positive_int, default=3, help="most probable intents listed per query")
    p.add_argument("--json", action="store_true", help="print the predictions as JSON")
    p.add_argument("--input", help="file of queries: .txt (one a line), .csv, .tsv, .jsonl or .parquet, or - for standard input (one a line); "
                   "empty rows are skipped and counted")
    p.add_argument("--output", help="with --input: .jsonl, .csv or .parquet file (format from the extension), or - for JSON lines on stdout")
    p.add_argument("--text-column", help=INPUT_TEXT_COLUMN_HELP)
    p.add_argument("--batch-size", type=positive_int, default=None, help="queries per batch (default: sized for the backend)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted .jsonl --output file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    p.add_argument("--allow-pickle", action="store_true", help=ALLOW_PICKLE_HELP)
    p.add_argument("--oos-score", choices=OOS_SCORES, help="out-of-scope score (default: the one chosen at training)")
    p.add_argument("--oos-threshold", type=float, help="out-of-scope threshold (default: the one set at training for the target "
                                                       "coverage, on validation or, with small data, on held-out training queries)")
    p.add_argument("--engine", choices=("local", "spark"), default="local",
                   help="local: this process, streaming; spark: a pandas UDF on Apache Spark (--input .parquet/.csv/.jsonl/.txt, "
                        "--output .parquet; needs pip install 'bankintent[spark]')")
    p.add_argument("--master", help="with --engine spark: the Spark master, e.g. local[2] (default: spark-submit's or the environment's)")
    p.set_defaults(func=predict)

    p = command("export", "export a model folder for fast inference (ONNX, optionally int8)")
    p.add_argument("dir", help="a training run's output folder or a model folder")
    p.add_argument("--format", choices=("onnx", "merged"), default="onnx", help="onnx: ONNX Runtime model; merged: LoRA merged into the weights")
    p.add_argument("--quantize", choices=("int8",), default=None,
                   help="int8 weights and activations, the activation scales calibrated at export (default: none)")
    p.add_argument("--calibration-data", metavar="PATH", default=None,
                   help="int8: queries that set the activation scales: a .txt (one a line), .csv/.jsonl/.parquet (text column), "
                        "a data folder or banking77 (default: the training data in the run's config.yaml)")
    p.add_argument("--output", required=True, help="folder to write (new or empty)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export in --output")
    p.add_argument("--allow-pickle", action="store_true", help=ALLOW_PICKLE_HELP)
    p.set_defaults(func=export)

    p = command("serve", "HTTP service: POST /v1/predict, /healthz, /readyz, /metrics, /docs, web page at /")
    p.add_argument("dir", nargs="?", help="a model folder (or training run folder)")
    p.add_argument("--models-dir", help="serve every model folder in this folder, on one base model")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--allowed-host", action="append", default=None, metavar="NAME",
                   help="on 127.0.0.1 or localhost, which answer requests addressed to those names only: another name to "
                        "answer (a reverse proxy that passes the client's Host header); repeat for more")
    p.add_argument("--port", type=int, default=8000, help="port to listen on")
    p.add_argument("--workers", type=int, default=1, help="service processes")
    p.add_argument("--api-key-file", help="require 'Authorization: Bearer <key>' with a key from this file (default: no key)")
    p.add_argument("--max-batch", type=int, default=64, help="micro-batch: most texts per forward pass")
    p.add_argument("--max-wait-ms", type=float, default=2.0, help="micro-batch: longest wait for more requests")
    p.add_argument("--oos-score", choices=OOS_SCORES, help="out-of-scope score of every model, with the threshold chosen for it at "
                                                           "training (default: each model's own; msp is the cheapest)")
    p.add_argument("--oos-threshold", type=float, help="out-of-scope threshold of the one model served, on its score's scale "
                                                       "(default: the one set at training for the target coverage, on validation "
                                                       "or, with small data, on held-out training queries)")
    p.set_defaults(func=serve)

    p = command("sweep", "run a list of training runs; writes results.csv and results.md")
    p.add_argument("--config", required=True, help="sweep YAML (configs/sweep_reference.yaml)")
    p.add_argument("--output", required=True, help="folder of the runs and their results")
    p.add_argument("--seeds", type=int, default=None, help="seeds per run, reported as mean +- std (default: the sweep file's)")
    p.add_argument("--jobs", type=int, default=1, help="runs trained at once (on a GPU several small runs share the device)")
    p.add_argument("--no-train", action="store_true", help="only write the tables, from the runs already finished in --output")
    p.set_defaults(func=sweep)

    p = command("search", "Bayesian hyperparameter search with Optuna on validation accuracy")
    p.add_argument("--method", help="training recipe whose hyperparameters are searched (default: --config's, else auto: the one "
                   "train chooses for the data, lpft or contrastive for few examples per intent)")
    p.add_argument("--trials", type=int, default=20, help="finished trials the study should hold in all (a resumed study runs the rest)")
    p.add_argument("--storage", required=True, help="sqlite:///DIR/study.db (resumable)")
    p.add_argument("--output", default=None, help="folder for the trials' runs (default: beside the study)")
    p.add_argument("--config", default=None, help="base YAML config (default: the method's recipe)")
    _add_config_options(p, TrainConfig, SEARCH_OPTIONS)
    p.set_defaults(func=search)

    p = command("report", "self-contained HTML + Markdown report of runs, sweeps and searches")
    p.add_argument("dirs", nargs="+", help="run, sweep or search folders")
    p.add_argument("--output", required=True, help="folder to write report.html and report.md to")
    p.set_defaults(func=report)

    p = command("audit", "likely label errors, conflicting near-duplicates, confusable and thin intents of a labelled data set")
    p.add_argument("--data", required=True, help="'banking77', a data folder (train and validation files are audited) or a file")
    p.add_argument("--output", default="audit", help="folder for the findings (CSV per finding, summary.md/.html)")
    p.add_argument("--base-model", default=DEFAULT_BASE_MODEL, help="encoder whose frozen embeddings the audit uses")
    p.add_argument("--text-column", default="text", help="column holding the query text")
    p.add_argument("--label-column", default="category", help="column holding the intent label")
    p.add_argument("--oos-label", default="out_of_scope", help="label of out-of-scope example rows, left out of the audit")
    p.add_argument("--duplicate-threshold", type=float, default=0.95, help="cosine similarity at which two queries are near-duplicates")
    p.add_argument("--seed", type=int, default=42, help="seed of the cross-validation folds")
    p.set_defaults(func=audit)

    p = command("discover", "group out-of-scope queries into candidate new intents (clusters, keywords, examples, a map)")
    p.add_argument("dir", help="a training run's output folder or a model folder")
    p.add_argument("--input", required=True, help="file of queries: .txt (one a line), .csv, .tsv, .jsonl or .parquet")
    p.add_argument("--output", default="discover", help="folder for clusters.csv, queries.csv, map.png and discover.json")
    p.add_argument("--all", action="store_true", help="cluster every query, not only those the model calls out of scope")
    p.add_argument("--text-column", help=INPUT_TEXT_COLUMN_HELP)
    p.add_argument("--distance-threshold", type=float, default=0.6, help="cosine distance at which clusters stop merging (average linkage)")
    p.add_argument("--min-size", type=int, default=5, help="fewest distinct queries (copies of one count once) a cluster reported "
                                                           "holds; smaller groups stay unclustered")
    p.add_argument("--seed", type=int, default=42, help="seed of the map's layout")
    p.add_argument("--overwrite", action="store_true", help="replace a queries.csv in --output whose labels were filled in")
    p.set_defaults(func=discover)

    p = command("select", "the unlabelled queries most worth labelling next (uncertain and diverse)")
    p.add_argument("dir", help="a training run's output folder or a model folder")
    p.add_argument("--input", required=True, help="file of unlabelled queries: .txt (one a line), .csv, .tsv, .jsonl or .parquet")
    p.add_argument("--budget", type=int, required=True, help="how many queries to pick")
    p.add_argument("--output", default="to_label.csv", help="CSV of the picked queries, with an empty label column")
    p.add_argument("--text-column", help=INPUT_TEXT_COLUMN_HELP)
    p.add_argument("--seed", type=int, default=42, help="seed of the diversity clustering (same seed, same pick)")
    p.add_argument("--overwrite", action="store_true", help="replace an --output file whose labels were filled in (or that another command wrote)")
    p.set_defaults(func=select)

    p = command("distill", "train a student to match a trained model (fewer encoder layers) or several (--teachers: an "
                           "ensemble in one model); a run folder like any other")
    p.add_argument("dir", help="the teacher (the first, whose layers the student starts from): a training run's output folder")
    p.add_argument("--output", required=True, help="the student's run folder")
    p.add_argument("--overwrite", action="store_true", help="replace what --output holds")
    p.add_argument("--resume", action="store_true",
                   help="continue a student stopped by Ctrl-C or SIGTERM from its checkpoint (the same options)")
    _add_config_options(p, DistillConfig)
    p.set_defaults(func=distill)
    return parser


def _command_parser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    return parser._subparsers._group_actions[0].choices[name]  # noqa: SLF001 (argparse keeps no other handle)


def parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """The command line's arguments. A command that takes any number of texts (``predict RUN TEXT...``)
    takes them before, between and after its options (``predict RUN --top-k 2 "lost card"``), as
    argparse's intermixed parsing reads them; arguments a command does not take are refused in one line.
    ``--output=~/runs/x`` is read as ``--output ~/runs/x`` is: the shell expands a ``~`` after a space,
    not after ``=``, and a folder named ``~`` is never what was meant."""
    argv = [f"{arg.partition('=')[0]}={os.path.expanduser(arg.partition('=')[2])}" if re.match(r"--[\w-]+=~", arg) else arg
            for arg in argv]
    args, extra = parser.parse_known_args(argv)
    command = _command_parser(parser, args.command)
    if extra and any(action.nargs == "*" for action in command._actions if not action.option_strings):  # noqa: SLF001
        args, extra = command.parse_known_intermixed_args(argv[argv.index(args.command) + 1:],
                                                          argparse.Namespace(command=args.command))
    if extra:
        _unknown_flags(parser, args, extra)
    return args


def _unknown_flags(parser: argparse.ArgumentParser, args: argparse.Namespace, extra: list[str]) -> None:
    """Arguments the command does not take: the error is the command's own (its usage, not the
    top-level one), with the flag probably meant (``--ouput``: ``--output``; ``--lr``: ``--learning-rate``)."""
    command = _command_parser(parser, args.command)
    known = [flag for action in command._actions for flag in action.option_strings if flag.startswith("--")]  # noqa: SLF001
    hints = []
    for given in (e.split("=")[0] for e in extra if e.startswith("--")):
        initials = [k for k in known if "".join(word[0] for word in k[2:].split("-")) == given[2:] and "-" in k[2:]]
        meant = initials[:1] or difflib.get_close_matches(given, known, n=1, cutoff=0.6)
        hints += [f"{given}: did you mean {meant[0]}?"] if meant else []
    command.error(f"unrecognized arguments: {' '.join(extra)}" + (f" ({'; '.join(hints)})" if hints else ""))


def stop_as_ctrl_c(pid: int):
    """A SIGTERM handler that stops process ``pid`` as Ctrl-C does. A process forked from it (a worker of a
    multiprocessing pool, which its pool ends with SIGTERM) inherits the handler: there it ends as by
    default, where a KeyboardInterrupt would print each worker's traceback."""
    def handler(signum, frame):
        if os.getpid() != pid:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        TERMINATED.set()
        raise KeyboardInterrupt

    return handler


def stopped() -> SystemExit:
    """The exit of a command stopped by a signal, as a shell reports one: 128 + the signal's number
    (130 for Ctrl-C, 143 for SIGTERM), so a scheduler can tell a stop it asked for from the user's."""
    return SystemExit(128 + (signal.SIGTERM if TERMINATED.is_set() else signal.SIGINT))


def stdout_gone() -> bool:
    """Whether standard output is a pipe whose reader has gone (a write there raises BrokenPipeError)."""
    try:
        fd = sys.stdout.fileno()
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
            return False
        poller = poll()
        poller.register(fd, POLLOUT)
        return any(events & (POLLERR | POLLHUP) for _, events in poller.poll(0))
    except (OSError, ValueError):  # no descriptor (a notebook's stdout): no pipe of its to break
        return False


def never_unencodable() -> None:
    """Standard output and error write what the locale cannot encode as escapes (``\\u20ac``), where a
    Latin-1 terminal met an intent named 'frais_€' with a UnicodeEncodeError traceback; the files the
    package writes are UTF-8 whatever the locale."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure") and (stream.errors or "strict") == "strict":
            stream.reconfigure(errors="backslashreplace")


def main(argv: list[str] | None = None) -> None:
    TERMINATED.clear()  # a SIGTERM an earlier call in this process took is not this one's
    never_unencodable()
    args = parse(build_parser(), sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # read when Transformers is imported, below
    progress.configure(loading_bars=args.command in TRAINING_COMMANDS)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from tqdm.contrib.logging import logging_redirect_tqdm  # after configure: tqdm reads its defaults when imported

    for noisy in ("httpx", "urllib3", "filelock", "sentence_transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # SIGTERM (kill, docker stop, a scheduler's timeout) stops a command as Ctrl-C does: it says what was
    # left and how to go on, where its default would end it without a word; serve keeps uvicorn's own
    # graceful shutdown, and training's fine-tuning epochs their checkpoint on either signal
    own = args.command != "serve" and threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, stop_as_ctrl_c(os.getpid())) if own else None
    try:
        with logging_redirect_tqdm():  # a warning written while a bar is drawn gets a line of its own, the bar redrawn below it
            args.func(args)
    except BankintentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt as exc:  # with what was stopped and how to go on, where the command says
        print(str(exc) or "interrupted", file=sys.stderr)
        raise stopped() from None
    except BrokenPipeError as exc:
        if stdout_gone():  # the reader of stdout went away (``| head``): stop quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise SystemExit(1) from None
        # another pipe: to a worker process (scikit-learn's, say) that could not start or ended
        print(f"error: a pipe to another process broke ({exc.strerror or exc}): a worker process could not start or "
              "ended early (can this user run the Python the command runs on?)", file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        if own and previous is not None:  # None: a handler set from C, which Python cannot set back
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    main()
