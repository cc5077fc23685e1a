"""The command line: help without heavy imports, every option documented with its default, out-of-scope
answers shown with their own evidence, and progress that stays small in a log."""

import argparse
import dataclasses
import json
import logging
import os
import shutil
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import bankintent
from bankintent import cli
from bankintent.config import AUTO, METHODS, TrainConfig
from bankintent.progress import LOG_INTERVAL

HEAVY = ("torch", "transformers", "onnxruntime")
SET_BY_THE_CLI = ("TQDM_MININTERVAL", "HF_HUB_DISABLE_PROGRESS_BARS", "TRANSFORMERS_VERBOSITY")


@pytest.fixture
def clean_env(monkeypatch):
    """main() in this process: the variables it sets are removed again after the test."""
    for name in SET_BY_THE_CLI:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("COLUMNS", "250")  # help on one line per option


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def test_help_and_import_load_no_heavy_module():
    """--help answers in well under a second because it imports neither PyTorch, Transformers nor ONNX Runtime."""
    code = f"""
import argparse, sys
import bankintent
from bankintent import TrainConfig, DataError
from bankintent.cli import build_parser
parser = build_parser()
commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
for argv in [["--help"], ["--version"], *[[name, "--help"] for name in commands]]:
    try:
        parser.parse_args(argv)
    except SystemExit:
        pass
print("heavy:", sorted(m for m in {HEAVY!r} if m in sys.modules))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage: bankintent train" in result.stdout and "bankintent " + bankintent.__version__ in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "heavy: []"


def test_the_package_api_loads_on_first_use():
    from bankintent.predict import Predictor

    assert bankintent.Predictor is Predictor and bankintent.TrainConfig is TrainConfig
    from bankintent import resolve_config, train  # noqa: F401  (the documented entry points still import)

    assert {"Predictor", "TrainConfig", "train", "__version__"} <= set(dir(bankintent))
    with pytest.raises(AttributeError, match="no attribute 'Predicter'"):
        bankintent.Predicter  # noqa: B018


def test_version(capsys, clean_env):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"bankintent {version('bankintent')}"


def test_train_help_documents_every_option_from_the_config(capsys, clean_env):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = capsys.readouterr().out
    options = {block.split()[0].rstrip(","): " ".join(block.split()) for block in re.split(r"\n(?=  -)", text)}
    for field in dataclasses.fields(TrainConfig):
        help = field.metadata.get("help", "")
        assert help and "\n" not in help, f"{field.name}: no one-line help"
        option = options["--" + field.name.replace("_", "-")]
        assert help in option and "default: " in option, option
    assert "--method {" + ",".join((AUTO, *METHODS)) + "}" in text
    assert "(default: 0.0005; lpft-full, full: 0.0001; lora, lora-unfreeze: 0.001; contrastive: 5e-05)" in " ".join(text.split())  # the recipes' defaults
    assert "(default: off; lpft, lpft-full: on)" in text  # average_weights
    assert "--probe-c A,B" in text and "(default: 1,3,10,30,100)" in text


def test_every_option_of_every_command_has_help_and_shows_its_default():
    parser = cli.build_parser()
    for name, sub in subcommands(parser).items():
        formatter = sub._get_formatter()
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"{name} {action.dest}: no help"
            if action.option_strings and action.default is not None and action.default is not False:
                assert "default" in formatter._get_help_string(action), f"{name} {action.dest}: default not shown"


def test_list_options_parse():
    args = cli.build_parser().parse_args(["train", "--probe-c", "1,3", "--target-modules", "query,value"])
    assert (args.probe_c, args.target_modules) == ([1.0, 3.0], ["query", "value"])


def test_a_tilde_after_the_equals_sign_is_the_home_folder_as_after_a_space(monkeypatch):
    monkeypatch.setenv("HOME", "/home/analyst")
    args = cli.parse(cli.build_parser(), ["predict", "--output=~/out.csv", "--input=~", "--text-column=~x", "runs/x"])
    assert (args.output, args.input, args.dir) == ("/home/analyst/out.csv", "/home/analyst", "runs/x")
    assert args.text_column == "~x"  # ~x is another user's home only where that user exists


@pytest.mark.parametrize("argv, said", [
    (["train", "--ouput", "runs/x"], "bankintent train: error: unrecognized arguments: --ouput runs/x (--ouput: did you mean --output?)"),
    (["distill", "runs/x", "--output", "y", "--lr", "1e-4"], "(--lr: did you mean --learning-rate?)"),  # train's name for it
    (["predict", "runs/x", "hi", "--topk", "3"], "bankintent predict: error: "),
    (["predict", "runs/x", "hi", "--top-k", "0"], "bankintent predict: error: argument --top-k: must be at least 1, got 0 "
                                                  "(usage: bankintent predict --help)"),
    (["train", "--method", "lpt"], "bankintent train: error: argument --method: invalid choice: 'lpt'"),
    (["predict"], "bankintent predict: error: the following arguments are required: dir"),
    (["predict", "runs/x", "hi", "--top-kk", "3", "there"], "unrecognized arguments: --top-kk 3 there (--top-kk: did you mean --top-k?)"),
    (["train", "--epoch", "3"], "unrecognized arguments: --epoch 3 (--epoch: did you mean --epochs?)"),  # not taken for it
])
def test_a_mistyped_flag_is_the_command_s_own_error_with_the_flag_meant(argv, said, capsys):
    with pytest.raises(SystemExit) as stopped:
        cli.main(argv)
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and said in err and len(err.strip().splitlines()) == 1  # one line: no usage block first


IN_SCOPE = {"text": "where is my card", "intent": "card_arrival", "confidence": 0.873, "out_of_scope": False,
            "oos_score": 12.5, "oos_threshold": 98.7, "oos_method": "mahalanobis", "closest_intent": "card_arrival",
            "top_k": [{"intent": "card_arrival", "confidence": 0.873}, {"intent": "lost_or_stolen_card", "confidence": 0.1}]}
OUT_OF_SCOPE = {"text": "what's the weather", "intent": "out_of_scope", "confidence": None, "out_of_scope": True,
                "oos_score": 312.4, "oos_threshold": 98.7, "oos_method": "mahalanobis", "closest_intent": "card_arrival",
                "top_k": [{"intent": "card_arrival", "confidence": 0.41}, {"intent": "exchange_rate", "confidence": 0.2}]}


def test_an_out_of_scope_answer_shows_its_own_evidence():
    assert cli.prediction_line(IN_SCOPE).split() == ["card_arrival", "0.873", "where", "is", "my", "card",
                                                     "(then:", "lost_or_stolen_card", "0.10)"]
    line = cli.prediction_line(OUT_OF_SCOPE)
    assert line.startswith("out_of_scope ")
    assert "(mahalanobis 312.4 > threshold 98.7; closest: card_arrival 0.41)   what's the weather" in line
    assert line.split()[1].startswith("("), "no number in the confidence column of an out-of-scope answer"
    bare = {**OUT_OF_SCOPE, "oos_score": None, "oos_threshold": None, "oos_method": None, "top_k": []}
    assert cli.prediction_line(bare).split()[:4] == ["out_of_scope", "(out", "of", "scope;"]


def test_a_printed_answer_shows_control_characters_as_escapes():
    """A query (or a model's intent name) holding a terminal's escape sequences retitled and cleared the
    terminal it was printed on."""
    hostile = {**IN_SCOPE, "text": "freeze card \x1b]0;PWNED\x07\x1b[2J", "intent": "card\x1b[31m",
               "top_k": [{"intent": "card\x1b[31m", "confidence": 0.873}]}
    line = cli.prediction_line(hostile)
    assert "\x1b" not in line and "\x07" not in line
    assert line.split() == ["card\\x1b[31m", "0.873", "freeze", "card", "\\x1b]0;PWNED\\x07\\x1b[2J"]
    for text in ("Où est ma carte\u202f?", "prix\xa0: 5 €", "👨\u200d👩\u200d👧", "بطاقتي\u200f"):  # printed as they are
        assert line_of(text).endswith(text)
    assert line_of("abc\u202eevil").endswith("abc\\u202eevil")  # a right-to-left override reorders the terminal's line


def test_a_command_line_s_undecoded_bytes_are_read_as_the_utf_8_they_are():
    """UTF-8 typed under a C locale outside Python's UTF-8 mode reaches Python as lone surrogates, which
    the tokenizer refused with a TypeError."""
    from bankintent.predict import check_texts

    assert check_texts(["ma carte est bloqu\udcc3\udca9e", "a\ud800b", "plain"]) == ["ma carte est bloquée", "a\ufffd\ufffd\ufffdb", "plain"]


def line_of(text):
    return cli.prediction_line({**IN_SCOPE, "text": text, "top_k": IN_SCOPE["top_k"][:1]})


def test_a_broken_pipe_is_quiet_only_where_it_is_stdout_s(monkeypatch, capsys):
    """A worker process that could not start (scikit-learn's, for a user who cannot run the Python the
    command runs on) broke a pipe: taken for '| head' going away, the training ended with exit 1 and
    not a word."""
    import subprocess

    def broken(args):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(cli, "predict", broken)
    with pytest.raises(SystemExit) as stop:
        cli.main(["predict", "run", "hello"])
    assert stop.value.code == 1
    assert capsys.readouterr().err.startswith("error: a pipe to another process broke (Broken pipe): a worker process")
    many = ("from bankintent import cli; cli.predict = lambda args: [print('x' * 1000) for _ in range(10000)]; "
            "cli.main(['predict', 'run', 'hello'])")
    quiet = subprocess.run(["bash", "-c", f'set -o pipefail; "{sys.executable}" -c "{many}" | head -c 1 > /dev/null'],
                           capture_output=True, text=True, timeout=120)
    assert (quiet.returncode, quiet.stderr) == (1, "")  # stdout's reader went away ('| head'): quiet


def test_the_cli_offers_every_out_of_scope_score():
    from bankintent import ood

    assert cli.OOS_SCORES == ood.SCORES


def test_query_texts_may_follow_predict_s_options():
    """``predict RUN --top-k 2 "lost card"`` and texts on both sides of an option: every text is a query."""
    parser = cli.build_parser()
    for argv in (["predict", "runs/x", "--top-k", "2", "lost card", "new pin"], ["predict", "runs/x", "lost card", "--top-k", "2", "new pin"]):
        args = cli.parse(parser, argv)
        assert (args.command, args.dir, args.texts, args.top_k, args.func) == ("predict", "runs/x", ["lost card", "new pin"], 2, cli.predict)


def test_predict_prints_out_of_scope_answers_apart(tiny_probe_run, capsys, clean_env):
    cli.main(["predict", str(tiny_probe_run), "my card was stolen", "--oos-score", "msp", "--oos-threshold", "-1"])
    line = capsys.readouterr().out.strip()
    assert line.startswith("out_of_scope ") and "> threshold -1; closest: " in line and line.endswith("my card was stolen")
    cli.main(["predict", str(tiny_probe_run), "my card was stolen", "--oos-score", "msp", "--oos-threshold", "2"])
    intent, confidence = capsys.readouterr().out.split()[:2]
    assert intent != "out_of_scope" and 0 < float(confidence) <= 1


def test_predict_refuses_options_it_would_ignore(tiny_probe_run, capsys, clean_env):
    with pytest.raises(SystemExit) as stop:
        cli.main(["predict", str(tiny_probe_run), "hi", "--output", "x.csv"])  # printed, never written: say so
    assert stop.value.code == 2 and "--output, --resume and --overwrite are for --input FILE" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["predict", str(tiny_probe_run), "hi", "--top-k", "0"])
    assert "argument --top-k: must be at least 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:  # refused before the model loads, and said as an argument, not "text 2"
        cli.main(["predict", str(tiny_probe_run / "missing"), "hi", " "])
    assert stop.value.code == 2 and capsys.readouterr().err.strip().splitlines()[-1] == \
        "error: query argument 2 is empty (as an unset shell variable gives); give the query's text"


def test_a_missing_or_folder_input_is_one_line(tiny_probe_run, tmp_path, capsys, clean_env):
    for given, said in ((tmp_path / "querys.csv", "querys.csv: file not found"), (tmp_path, f"{tmp_path}: a folder, not a file")):
        with pytest.raises(SystemExit) as stop:  # a mistyped name was a FileNotFoundError traceback
            cli.main(["predict", str(tiny_probe_run), "--input", str(given), "--output", str(tmp_path / "p.csv")])
        assert stop.value.code == 2 and capsys.readouterr().err.strip().splitlines()[-1].endswith(said)


def test_a_file_of_queries_is_read_with_the_runs_own_text_column(tiny_probe_run, tmp_path, capsys, clean_env):
    from bankintent.config import trained_text_column

    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "config.yaml").write_text("text_column: utterance\n")
    assert trained_text_column(run) == "utterance" and trained_text_column(run / "adapter") == "utterance"
    assert trained_text_column(tmp_path / "export") == "text"  # no run around it
    queries = tmp_path / "q.csv"
    queries.write_text("query\nmy card was stolen\n")
    with pytest.raises(SystemExit):
        cli.main(["predict", str(tiny_probe_run), "--input", str(queries), "--output", str(tmp_path / "p.csv")])
    assert "missing column 'text' (columns: 'query'); name the column to read with --text-column (text_column in Python)" in capsys.readouterr().err
    cli.main(["predict", str(tiny_probe_run), "--input", str(queries), "--output", str(tmp_path / "p.csv"), "--text-column", "query"])
    assert (tmp_path / "p.csv").read_text().count("my card was stolen") == 1
    # a run trained on 'utterance' reads a file of queries that says 'text' (chat logs gathered apart) from it
    import shutil

    shutil.copytree(tiny_probe_run, tmp_path / "utterance_run")
    config = tmp_path / "utterance_run" / "config.yaml"
    config.write_text(config.read_text().replace("text_column: text", "text_column: utterance"))
    queries.write_text("text\nmy card was stolen\n")
    cli.main(["predict", str(tmp_path / "utterance_run"), "--input", str(queries), "--output", str(tmp_path / "p2.csv")])
    assert (tmp_path / "p2.csv").read_text().count("my card was stolen") == 1


@pytest.mark.parametrize("summary", [
    {"queries": 3, "accuracy": 2 / 3},  # whatever the evaluation leaves out
    {"queries": 3, "accuracy": 1.0, "macro_f1": 1.0, "confused_pairs": [{"count": 2, "intent_a": "a", "intent_b": "b", "examples": []}],
     "accuracy_by_length": [{"length": "<=5 words", "queries": 3, "accuracy": 1.0}, {"length": ">20 words", "queries": 0, "accuracy": float("nan")}],
     "out_of_scope": {"oos_score": "msp", "threshold": 0.5, "coverage": 0.9, "accuracy_kept": 0.95, "oos_recall": None,
                      "oos_examples": "none", "oos_score_reason": "default", "new_key": [1]}},
    {"queries": 3, "accuracy": 1.0, "out_of_scope": {"oos_score": "msp", "threshold": 0.5, "coverage": 0.9, "accuracy_kept": 0.95,
                                                     "oos_recall": 0.8, "oos_examples": "rows labelled out_of_scope",
                                                     "oos_score_reason": "default"}},
])
def test_evaluate_prints_whatever_the_summary_holds(summary, monkeypatch, capsys, clean_env):
    monkeypatch.setattr("bankintent.evaluation.evaluate_run", lambda *args: summary)
    cli.main(["evaluate", "runs/x"])
    out = capsys.readouterr().out
    assert out.startswith("test: 3 in-scope queries, accuracy ") and "written in" not in out  # the stand-in wrote no file
    assert ("accuracy by length: <=5 words 100.0% (3), >20 words n/a (0)" in out) == ("accuracy_by_length" in summary)
    recall = (summary.get("out_of_scope") or {}).get("oos_recall")
    assert (f"(msp, threshold 0.5): answers 90.0%, accuracy on those 95.00%{', recall 80.0% on rows labelled out_of_scope' if recall else ''}"
            "\n  score: default" in out) == ("out_of_scope" in summary)


def test_evaluate_says_the_target_and_when_the_recall_is_on_the_examples_that_chose_the_score(monkeypatch, capsys, clean_env):
    summary = {"queries": 3, "accuracy": 1.0, "out_of_scope": {
        "oos_score": "msp", "threshold": 0.5, "coverage": 0.861, "coverage_target": 0.95, "accuracy_kept": 1.0, "oos_recall": 0.727,
        "oos_examples": "oos.txt: 22 queries", "oos_recall_optimistic": True, "oos_score_reason": "catches the most"}}
    monkeypatch.setattr("bankintent.evaluation.evaluate_run", lambda *args: summary)
    cli.main(["evaluate", "runs/x"])
    assert ("answers 86.1% (target 95%), accuracy on those 100.00%, recall 72.7% on oos.txt: 22 queries, "
            "the examples that chose the score at training: optimistic; evaluate --data FILE with others") in capsys.readouterr().out


@pytest.mark.parametrize("measured", [True, False])
def test_train_says_how_to_measure_a_model_it_could_not(measured, monkeypatch, capsys, clean_env):
    """Small data without a test file trains on every row: nothing is measured, and the summary says how to."""
    metrics = {"method": "contrastive", "val_accuracy": None, "test_accuracy": 0.9 if measured else None, "test_macro_f1": None,
               "trainable_pct": 100.0, "adapter_bytes": 1, "train_seconds": 1.0}
    monkeypatch.setattr("bankintent.training.train", lambda cfg: metrics)
    cli.main(["train", "--data", "mine.csv", "--output", "runs/mine"])
    out = capsys.readouterr().out
    assert ("bankintent evaluate runs/mine --data FILE" in out) != measured


def test_train_says_what_the_fallback_gives_the_test_file(monkeypatch, capsys, clean_env):
    """The table's accuracy takes each query's most probable intent: the last lines say what the service
    answers, with the fallback on."""
    metrics = {"method": "lpft", "val_accuracy": 0.96, "test_accuracy": 0.958, "test_macro_f1": 0.95, "trainable_pct": 1.5,
               "adapter_bytes": 1, "train_seconds": 1.0, "test_answered": 0.917, "test_answered_right": 0.875,
               "test_oos_recall": 0.9375, "test_oos_examples": "test.csv: 16 rows labelled 'out_of_scope'"}
    monkeypatch.setattr("bankintent.training.train", lambda cfg: metrics)
    cli.main(["train", "--data", "mine", "--output", "runs/mine"])
    assert ("out-of-scope: the fallback answers 91.7% of the test file's in-scope queries with an intent, 87.5% with the right one "
            "and catches 93.8% of test.csv: 16 rows labelled 'out_of_scope'") in capsys.readouterr().out


@pytest.mark.parametrize("damage", ["labels.json gone", "labels.json broken", "bankintent.json broken", "weights gone",
                                    "weights garbage", "adapter weights gone"])
def test_a_damaged_model_folder_is_one_line(damage, tiny_probe_run, tiny_runs, tmp_path, capsys):
    """A partial copy of a model folder: one line naming the folder and what is wrong, exit 2 (it was a
    FileNotFoundError, a JSONDecodeError, safetensors' own error, or PEFT's 'Repo id must be a string')."""
    run = tiny_runs["bert"] if damage.startswith("adapter") else tiny_probe_run
    folder = tmp_path / "copy"
    shutil.copytree(run / "adapter", folder)
    name, change = {"labels.json gone": ("labels.json", None), "labels.json broken": ("labels.json", "{"),
                    "bankintent.json broken": ("bankintent.json", "{"), "weights gone": ("model.safetensors", None),
                    "weights garbage": ("model.safetensors", "garbage"),
                    "adapter weights gone": ("adapter_model.safetensors", None)}[damage]
    if change is None:
        (folder / name).unlink()
    else:
        (folder / name).write_text(change)
    with pytest.raises(SystemExit) as stopped:
        cli.main(["predict", str(folder), "my card is lost"])
    err = capsys.readouterr().err.strip().splitlines()
    assert stopped.value.code == 2 and len(err) == 1
    said = (f"damaged model folder: no {name}" if change is None else f"damaged model folder: {name} is not valid JSON"
            if change == "{" else "cannot load the model (SafetensorError: ")
    assert err[0].startswith(f"error: {folder}: {said}")


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs a folder no one may write in")
@pytest.mark.parametrize("command", ["evaluate", "predict", "export"])
def test_an_output_that_cannot_be_written_is_refused_before_the_work(command, tiny_probe_run, tmp_path, capsys, monkeypatch):
    """A read-only place (/proc/self here, which not even a superuser writes in): one line, before any
    model loads, where evaluate, predict --output and export ended in an OSError traceback at the end."""
    (tmp_path / "q.txt").write_text("my card is lost\n")
    monkeypatch.setattr("bankintent.predict.Predictor.load", lambda *a, **k: pytest.fail("the model loaded"))
    args = {"evaluate": ["evaluate", str(tiny_probe_run), "--output", "/proc/self/ev"],
            "predict": ["predict", str(tiny_probe_run), "--input", str(tmp_path / "q.txt"), "--output", "/proc/self/p.csv"],
            "export": ["export", str(tiny_probe_run), "--output", "/proc/self/exp"]}[command]
    with pytest.raises(SystemExit) as stopped:
        cli.main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert stopped.value.code == 2 and len(err) == 1
    assert re.fullmatch(r"error: /proc/self/\w+(\.csv)?: cannot be written \(/proc/self: .+\); choose another --output", err[0])


def test_file_prediction_in_a_log_writes_little_progress(tiny_probe_run, tmp_path):
    """stderr to a pipe (a log): a bar frame every LOG_INTERVAL seconds at most, no "Loading weights"
    bar; empty lines skipped with their count; ``--output -``: JSON lines on stdout."""
    queries = 1500
    path = tmp_path / "queries.txt"
    path.write_text("".join(f"my card was stolen {i}\n" + ("\n" if i % 500 == 0 else "") for i in range(queries)))
    env = {k: v for k, v in os.environ.items() if k not in SET_BY_THE_CLI}
    env["OMP_NUM_THREADS"] = "1"
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "bankintent.cli", "predict", str(tiny_probe_run), "--input", str(path),
                             "--output", "-", "--batch-size", "1"], capture_output=True, text=True, timeout=300, env=env)
    elapsed = time.monotonic() - start
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == queries and lines[1]["row"] == 3  # row 2 is the empty line
    assert "queries.txt: 3 empty row(s) skipped (rows 2, 503, 1004)" in result.stderr
    assert f"{queries} predictions written to stdout" in result.stderr
    assert "Loading weights" not in result.stderr
    frames = result.stderr.count("predicting:")
    assert frames <= 3 + elapsed / LOG_INTERVAL, result.stderr[-3000:]
    assert f"{queries}/{queries}" in result.stderr  # the last frame


@pytest.mark.parametrize("command", [
    ["audit", "--data", "banking77"],
    ["sweep", "--config", "configs/sweep_fewshot.yaml"],
    ["search", "--storage", "sqlite:///{tmp}/study.db", "--trials", "1"],
])
def test_commands_refuse_a_file_as_output_folder_before_any_work(command, tmp_path, capsys, clean_env):
    taken = tmp_path / "notes.txt"
    taken.write_text("mine")
    with pytest.raises(SystemExit) as stop:
        cli.main([part.format(tmp=tmp_path) for part in command] + ["--output", str(taken)])
    assert stop.value.code == 2 and f"{taken}: exists and is not a folder" in capsys.readouterr().err
    assert taken.read_text() == "mine"


def test_the_python_predictor_refuses_bad_arguments_in_one_line(tiny_probe_run, caplog):
    from bankintent import Predictor
    from bankintent.errors import ConfigError, DataError, ModelError

    predictor = Predictor.load(tiny_probe_run)
    assert len(predictor.predict("my card", top_k=99)[0]["top_k"]) == len(predictor.labels)  # as many as there are
    for top_k in (0, -1, 2.5, "3", True):
        with pytest.raises(ConfigError, match=rf"top_k must be a whole number of at least 1, got {re.escape(repr(top_k))}"):
            predictor.predict("my card", top_k=top_k)
    for texts in (None, 5, b"my card", {"my card": 1}):
        with pytest.raises(DataError, match="expected a text or a list of texts"):
            predictor.predict(texts)
    import numpy as np
    import pandas as pd

    queries = ["my card", "where is my money", "my card"]
    expected = [answer["intent"] for answer in predictor.predict(queries)]
    for given in (tuple(queries), pd.Series(queries), pd.DataFrame({"text": queries}).text, np.array(queries), iter(queries)):
        assert [answer["intent"] for answer in predictor.predict(given)] == expected, type(given)
    with pytest.raises(DataError, match=r"got a DataFrame of 2 dimensions; give one column of it, e\.g\. frame\['text'\]"):
        predictor.predict(pd.DataFrame({"id": [1, 2, 3], "text": queries}))  # it answered its 2 column names
    with pytest.raises(DataError, match=r"^text 3 \(index 'c'\): expected a string, got float$"):
        predictor.predict(pd.Series(["my card", "my money", np.nan], index=["a", "b", "c"]))
    assert predictor.predict(" " * 2500 + "my card")[0]["text"] == "my card"  # spaces removed, then cut (it answered '')
    with pytest.raises(ConfigError, match="the out-of-scope threshold must be a finite number, got '2'"):
        Predictor.load(tiny_probe_run, oos_threshold="2")
    with pytest.raises(ConfigError, match="batch_size must be a whole number of at least 1, got 0"):
        Predictor.load(tiny_probe_run, batch_size=0)
    trained = Predictor.load(tiny_probe_run)  # a threshold kept from a model that used another score is said to be
    msp = trained.spec.oos_thresholds["msp"]
    assert trained.oos_score == "knn+msp+rmd" and 0 < msp < 0.5  # in-scope standard deviations; a probability
    with caplog.at_level(logging.WARNING, logger="bankintent"):
        Predictor.load(tiny_probe_run, oos_threshold=trained.oos_threshold - 2.5)  # near, whatever its size or sign
        Predictor.load(tiny_probe_run, oos_score="msp", oos_threshold=2 * msp)
        assert "far from this model's trained" not in caplog.text
        Predictor.load(tiny_probe_run, oos_threshold=700.0)
        assert (f"out-of-scope threshold 700 is far from this model's trained {trained.oos_score} threshold "
                f"({trained.oos_threshold:.4g}): few queries will be out of scope") in caplog.text
        caplog.clear()
        Predictor.load(tiny_probe_run, oos_threshold=trained.oos_threshold - 15)  # as large as the trained one, negative: was silent
        assert "most queries will be out of scope" in caplog.text
        caplog.clear()
        Predictor.load(tiny_probe_run, oos_score="msp", oos_threshold=msp / 100)
        assert "trained msp threshold" in caplog.text and "most queries will be out of scope" in caplog.text
    with pytest.raises(ModelError, match="device 'tpu': "):
        Predictor.load(tiny_probe_run, device="tpu")


def test_sigterm_stops_the_command_as_ctrl_c_but_ends_a_forked_worker_as_by_default():
    """The handler is inherited by a multiprocessing pool's workers, which their pool ends with SIGTERM:
    there it raised KeyboardInterrupt, and every audit printed each worker's traceback. In a process of
    its own, which forks."""
    import subprocess
    import sys

    script = ("import os, signal, time\n"
              "from bankintent.cli import stop_as_ctrl_c\n"
              "signal.signal(signal.SIGTERM, stop_as_ctrl_c(os.getpid()))\n"
              "child = os.fork()\n"
              "if child == 0:\n"  # a forked worker, ended by SIGTERM
              "    try:\n"
              "        os.kill(os.getpid(), signal.SIGTERM)\n"
              "        time.sleep(5)\n"
              "        os._exit(0)\n"
              "    except KeyboardInterrupt:\n"
              "        os._exit(3)\n"
              "_, status = os.waitpid(child, 0)\n"
              "print('worker ended by SIGTERM' if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM else f'worker {status}')\n"
              "try:\n"
              "    os.kill(os.getpid(), signal.SIGTERM)\n"
              "    time.sleep(5)\n"
              "except KeyboardInterrupt:\n"
              "    print('stopped as by Ctrl-C')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.stdout.splitlines() == ["worker ended by SIGTERM", "stopped as by Ctrl-C"], done.stdout + done.stderr[-2000:]


def test_resume_with_the_spark_engine_is_refused_not_ignored(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["predict", str(tmp_path), "--input", str(tmp_path / "logs.csv"), "--output", str(tmp_path / "out.parquet"),
              "--engine", "spark", "--resume"])
    assert "--resume continues a .jsonl output of the local engine; --engine spark writes its Parquet folder in one job" in (
        capsys.readouterr().err)
