"""Distillation: the layers a student keeps, its initialisation from the teacher, and a student run
folder that saves, loads, exports, evaluates and answers with the out-of-scope fields; one-line errors."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import _save_tiny, _tiny_rows, tiny_options, write_csv
from safetensors.torch import load_file, save_file

from bankintent import Predictor, resolve_config, train
from bankintent.distill import distill, student_layers
from bankintent.errors import ConfigError, DataError, ModelError
from bankintent.evaluation import evaluate_run
from bankintent.export import export
from bankintent.modeling import ModelSpec, build_model, keep_layers, load_model, num_layers, save_model

QUERIES = ["my card was stolen", "what exchange rate do you use", "top up failed again", "where is my new card"]
LABELS = {"card_arrival": "delivery", "exchange_rate": "fx", "lost_or_stolen_card": "stolen", "top_up_failed": "top_up"}


@pytest.fixture(scope="module")
def four_layers(tmp_path_factory) -> dict:
    """Tiny BERT and DistilBERT with 4 encoder layers (the shared fixtures have 2)."""
    from transformers import BertConfig, BertModel, DistilBertConfig, DistilBertModel

    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                                intermediate_size=64, max_position_embeddings=128))
    distilbert = DistilBertModel(DistilBertConfig(vocab_size=30522, dim=32, n_layers=4, n_heads=2, hidden_dim=64,
                                                  max_position_embeddings=128))
    return {name: _save_tiny(model, tmp_path_factory.mktemp(name)) for name, model in (("bert", bert), ("distilbert", distilbert))}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """The tiny data set with intents that are not Banking77's, so that calibration and evaluation skip
    the built-in out-of-scope probe set (hundreds of queries)."""
    folder = tmp_path_factory.mktemp("data")
    for split, seed, per_intent in (("train", 0, 20), ("test", 1, 5)):
        write_csv(folder / f"{split}.csv", [(text, LABELS[label]) for text, label in _tiny_rows(seed, per_intent)])
    return folder


@pytest.fixture(scope="module")
def teacher(four_layers, data, tmp_path_factory) -> Path:
    """A linear probe on the 4-layer tiny BERT (mean pooling): the quickest real training run."""
    out = tmp_path_factory.mktemp("teacher")
    train(resolve_config(None, method="linear-probe", **tiny_options(four_layers["bert"], data, out)))
    return out


@pytest.fixture(scope="module")
def cls_teacher(four_layers, data, tmp_path_factory) -> Path:
    """A DistilBERT run with the model's own head, written directly (untrained: only the plumbing is tested)."""
    out = tmp_path_factory.mktemp("cls_teacher")
    cfg = resolve_config(None, method="full", pooling="cls", **tiny_options(four_layers["distilbert"], data, out))
    spec = ModelSpec(base_model=cfg.base_model, method="full", pooling="cls", labels=sorted(LABELS.values()), max_length=24)
    torch.manual_seed(1)
    save_model(build_model(spec), spec, out / "adapter")
    cfg.save(out / "config.yaml")
    return out


def test_student_layers_are_the_top_of_equal_blocks():
    assert student_layers(6, 3) == [1, 3, 5]
    assert student_layers(6, 2) == [2, 5]
    assert student_layers(6, 4) == [0, 2, 3, 5]
    assert student_layers(6, 1) == [5]
    assert student_layers(4, 2) == [1, 3]
    assert student_layers(12, 6) == [1, 3, 5, 7, 9, 11]
    assert student_layers(6, 6) == [0, 1, 2, 3, 4, 5]  # as deep as the teacher: every layer
    for layers in (0, 7):
        with pytest.raises(ConfigError, match=r"layers must be between 1 and 6 \(the teacher has 6 encoder layers\)"):
            student_layers(6, layers)


@pytest.mark.parametrize("arch,pooling", [("bert", "mean"), ("bert", "cls"), ("distilbert", "mean"), ("distilbert", "cls")])
def test_kept_layers_are_the_teachers(arch, pooling, four_layers):
    spec = ModelSpec(base_model=str(four_layers[arch]), method="full", pooling=pooling, labels=["a", "b"])
    full = build_model(spec)
    student = keep_layers(build_model(spec), [1, 3])
    assert num_layers(student) == 2 and student.config.num_hidden_layers == 2
    assert not any(".layer.2." in name or ".layer.3." in name for name, _ in student.named_parameters())
    for new, old in ((0, 1), (1, 3)):
        prefix = {"bert": "encoder.layer.{}.", "distilbert": "transformer.layer.{}."}[arch]
        theirs = {n.replace(prefix.format(old), prefix.format(new)): p for n, p in full.named_parameters() if prefix.format(old) in n}
        ours = {n: p for n, p in student.named_parameters() if prefix.format(new) in n}
        assert theirs.keys() == ours.keys() and all(torch.equal(ours[n], theirs[n]) for n in ours)
    rebuilt = build_model(dataclasses.replace(spec, layers=[1, 3]))  # the spec field does the same from the base model
    ours, head = student.state_dict(), ("head.", "classifier.", "pre_classifier.")  # heads start random in each build
    assert rebuilt.state_dict().keys() == ours.keys()
    assert all(torch.equal(t, ours[n]) for n, t in rebuilt.state_dict().items() if not n.startswith(head))
    ids = torch.tensor([[101, 2026, 4003, 102]])
    assert student(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.shape == (1, 2)
    with pytest.raises(ModelError, match="expected increasing indices of the model's 4 encoder layers"):
        keep_layers(build_model(spec), [3, 1])


def test_distilled_run_saves_loads_exports_and_answers(teacher, data, tmp_path, caplog):
    unlabelled = tmp_path / "queries.txt"
    trained = set(pd.read_csv(data / "train.csv").text)  # the validation queries are drawn from it
    test_query = next(t for t in pd.read_csv(data / "test.csv").text if t not in trained)  # chat logs may hold test queries
    unlabelled.write_text(f"is my card on its way\n\nwhat rate for pounds\n{test_query.upper()}\nmy top up is stuck\n")
    out = tmp_path / "student"
    metrics = distill(teacher, out, layers=2, unlabelled=unlabelled, epochs=1, batch_size=16, progress=False)
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert metrics["method"] == "distill" and metrics["teacher_layers"] == 4 and metrics["kept_layers"] == [1, 3]
    assert metrics["unlabelled_size"] == 3 and metrics["augmented_size"] > 0  # the blank line is skipped
    assert metrics["unlabelled_left_out"] == {"test": 1} and f"{unlabelled}: 1 test query left out" in caplog.text
    trained = json.loads((teacher / "metrics.json").read_text())
    for key in ("data", "val_size", "test_size", "num_labels", "validation", "shots", "duplicate_rows", "val_warning"):
        assert metrics[key] == trained[key], key  # the same data as the teacher's, said the same way
    assert metrics["distill_queries"] == metrics["train_size"] + metrics["augmented_size"] + 3
    assert metrics["val_accuracy"] is not None and metrics["test_accuracy"] is not None and metrics["epochs_run"] == 1
    teacher_total = json.loads((teacher / "metrics.json").read_text())["total_params"]
    assert metrics["teacher_test_accuracy"] is not None and metrics["total_params"] < teacher_total

    folder = out / "adapter"
    spec = json.loads((folder / "bankintent.json").read_text())
    assert spec["layers"] == [1, 3] and spec["method"] == "distill" and not spec["lora"] and spec["oos_score"]
    model, _ = load_model(folder)
    assert set(load_file(folder / "model.safetensors")) == {name for name, _ in model.named_parameters()}  # every tensor
    card = (folder / "README.md").read_text()  # the student's own model card
    assert "# bankintent distill intent classifier" in card and "a 2-layer student of a 4-layer `linear-probe` teacher" in card
    assert f"{100 * metrics['test_accuracy']:.2f}%" in card
    assert (f"`bankintent distill TEACHER_RUN --output OUT --layers 2 --epochs 1 --temperature 2 --alpha 0.5 --learning-rate 0.0001 "
            f"--batch-size 16 --augment-copies 1 --unlabelled {unlabelled.resolve()} --seed 42`") in card  # every option, to rerun it
    assert "library_name: bankintent" in card and "- lora\n" not in card
    from bankintent.report import collect  # the report's command for it is distill's, with the paths, not its teacher's training

    assert collect([out])[0][0].command == (f"bankintent distill {metrics['teacher']} --output {out} --layers 2 --epochs 1 "
                                            f"--temperature 2 --alpha 0.5 --learning-rate 0.0001 --batch-size 16 "
                                            f"--augment-copies 1 --unlabelled {unlabelled.resolve()} --seed 42")
    predictor = Predictor.load(out)
    answers = predictor.predict(QUERIES)
    assert all(a["oos_score"] is not None and a["oos_threshold"] is not None and a["oos_method"] for a in answers)

    onnx = Predictor.load(export(out, tmp_path / "onnx"))
    np.testing.assert_allclose(onnx.logits(QUERIES), predictor.logits(QUERIES), atol=1e-4)
    assert [a["closest_intent"] for a in onnx.predict(QUERIES)] == [a["closest_intent"] for a in answers]
    assert evaluate_run(out)["queries"] == metrics["test_size"]  # config.yaml leads evaluate to the run's data
    saved = (out / "config.yaml").read_text()  # the teacher's options, said to be the teacher's
    assert saved.startswith(f"# The training options of the teacher, {teacher.resolve()}/adapter") and "method: linear-probe" in saved

    tensors = load_file(folder / "model.safetensors")
    save_file({k: v for k, v in tensors.items() if ".layer.1." not in k}, folder / "model.safetensors")
    with pytest.raises(ModelError, match="no tensor .*layer.1.* stores every weight"):
        load_model(folder)


def test_the_runs_out_of_scope_examples_are_left_out_of_the_unlabelled_queries(tmp_path):
    """They choose the student's out-of-scope score and threshold, and the test file's are scored on."""
    from bankintent.data import load_splits
    from bankintent.distill import held_out_removed

    rows = [(f"card query {i}", "card") for i in range(6)] + [(f"rate query {i}", "rate") for i in range(6)]
    write_csv(tmp_path / "train.csv", rows + [("book me a flight", "out_of_scope")])
    write_csv(tmp_path / "test.csv", [("card query 9", "card"), ("what is the weather on mars", "out_of_scope")])
    splits = load_splits(str(tmp_path))
    texts = ["Book me a flight", "what is the weather on MARS", "card query 9", "is my card on its way"]
    assert held_out_removed(texts, splits, "logs.txt") == (
        ["is my card on its way"], {"test": 1, "out-of-scope example": 1, "test out-of-scope": 1})


def test_a_student_into_a_folder_another_run_is_writing_is_refused(teacher, tmp_path):
    from bankintent.training import output_lock

    with output_lock(tmp_path / "student"):
        with pytest.raises(ConfigError, match="another bankintent train or distill is writing into it now"):
            distill(teacher, tmp_path / "student", layers=2, epochs=0, progress=False)
    assert not (tmp_path / "student").exists()


def test_cls_student_starts_as_the_teachers_layers_and_can_be_distilled_again(cls_teacher, tmp_path):
    distill(cls_teacher, tmp_path / "student", layers=2, epochs=0, progress=False)  # no training: the initialisation
    teacher_model, _ = load_model(cls_teacher / "adapter")
    student, spec = load_model(tmp_path / "student" / "adapter")
    assert spec.layers == [1, 3] and student.config.n_layers == 2
    expected = keep_layers(teacher_model, [1, 3]).state_dict()
    assert all(torch.equal(tensor, expected[name]) for name, tensor in student.state_dict().items())
    assert Predictor.load(tmp_path / "student").predict(QUERIES[:1])[0]["oos_score"] is not None

    metrics = distill(tmp_path / "student" / "adapter", tmp_path / "again", layers=1, epochs=1, batch_size=16, progress=False)
    assert metrics["kept_layers"] == [1] and metrics["base_model_layers"] == [3]  # the base model's layer, through both
    assert Predictor.load(tmp_path / "again").predict(QUERIES[:1])[0]["closest_intent"] in LABELS.values()


def test_an_ensemble_of_teachers_is_distilled_into_one_model_as_deep(teacher, cls_teacher, four_layers, data, tmp_path):
    """``teachers``: the student matches the mean of every teacher's logits. Two copies of one teacher
    are that teacher (the same student, tensor for tensor); another teacher changes it."""
    alone = distill(teacher, tmp_path / "alone", layers=4, epochs=1, batch_size=16, augment_copies=0, progress=False)
    assert alone["kept_layers"] == [0, 1, 2, 3] and alone["ensemble_teachers"] == []
    assert alone["teacher"] == str(teacher.resolve())  # the run folder typed, which the recorded command reruns
    twice = distill(teacher, tmp_path / "twice", layers=4, teachers=[str(teacher)], epochs=1, batch_size=16, augment_copies=0,
                    progress=False)
    assert twice["ensemble_teachers"] == [str(teacher.resolve())]
    one, two = (load_file(tmp_path / name / "adapter" / "model.safetensors") for name in ("alone", "twice"))
    assert one.keys() == two.keys() and all(torch.allclose(one[k], two[k], atol=1e-6) for k in one)

    other = tmp_path / "teacher-2"  # another probe (a weaker C) on the same encoder and data
    train(resolve_config(None, method="linear-probe", **tiny_options(four_layers["bert"], data, other, probe_c=[0.05])))
    pair = distill(teacher, tmp_path / "pair", layers=4, teachers=[str(other)], epochs=1, batch_size=16, augment_copies=0,
                   progress=False)
    three = load_file(tmp_path / "pair" / "adapter" / "model.safetensors")
    assert any(not torch.allclose(one[k], three[k], atol=1e-6) for k in one)
    card = (tmp_path / "pair" / "adapter" / "README.md").read_text()
    assert "a 4-layer student of an ensemble of 2 4-layer teachers" in card and "--teachers RUN2" in card
    assert Predictor.load(tmp_path / "pair").predict(QUERIES[:1])[0]["closest_intent"] in LABELS.values()
    assert pair["test_accuracy"] is not None

    with pytest.raises(ConfigError, match="base model .* differs from the first teacher's") as exc:  # another tokenizer
        distill(teacher, tmp_path / "mixed", layers=4, teachers=[str(cls_teacher)], progress=False)
    one_line(exc)
    assert not (tmp_path / "mixed").exists()


def test_folder_without_layers_loads_as_before(teacher, tmp_path):
    import shutil

    folder = shutil.copytree(teacher / "adapter", tmp_path / "old")
    values = json.loads((folder / "bankintent.json").read_text())
    del values["layers"]
    (folder / "bankintent.json").write_text(json.dumps(values))
    model, spec = load_model(folder)
    assert spec.layers is None and num_layers(model) == 4


def one_line(exc: pytest.ExceptionInfo) -> str:
    assert "\n" not in str(exc.value)
    return str(exc.value)


def test_errors_are_one_line_and_leave_no_output(teacher, tmp_path, caplog):
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO), pytest.raises(ConfigError, match=r"layers must be between 1 and 4 \(the teacher has 4") as exc:
        distill(teacher, out, layers=5)
    one_line(exc)
    assert "queries of" not in caplog.text  # said before the data is read
    with pytest.raises(ConfigError, match="layers must be between 1 and 4"):
        distill(teacher, out, layers=0)
    with pytest.raises(ConfigError, match="alpha must be between 0 and 1"):
        distill(teacher, out, alpha=2)
    with pytest.raises(ConfigError, match="unknown distill option.*lr"):
        distill(teacher, out, lr=0.1)
    with pytest.raises(ModelError, match="model folder not found") as exc:
        distill(tmp_path / "missing", out)
    one_line(exc)
    with pytest.raises(DataError, match="file not found"):
        distill(teacher, out, unlabelled=tmp_path / "missing.txt")
    bad = tmp_path / "bad.csv"
    bad.write_text("query\nhello\n")
    with pytest.raises(DataError, match="missing column 'text'") as exc:
        distill(teacher, out, unlabelled=bad)
    one_line(exc)
    with pytest.raises(DataError, match=r"must be \.txt"):
        distill(teacher, out, unlabelled=tmp_path / "queries.xml")
    with pytest.raises(ConfigError, match="must not hold the teacher"):
        distill(teacher / "adapter", teacher, overwrite=True)
    assert not out.exists()
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"output folder holds files that are not a run's \(notes.txt\); choose another --output") as exc:
        distill(teacher, out)  # --overwrite is not offered: it would be refused
    one_line(exc)
    (out / "checkpoints").mkdir()  # a stopped distillation's
    with pytest.raises(ConfigError, match="output folder is not empty .*--overwrite") as exc:
        distill(teacher, out)
    one_line(exc)
    assert "--resume to continue" in str(exc.value)
    with pytest.raises(ConfigError, match="no student to resume .no checkpoints/distill.pt") as exc:
        distill(teacher, out, resume=True)
    one_line(exc)
    with pytest.raises(ConfigError, match="give one of them"):
        distill(teacher, out, resume=True, overwrite=True)


def test_a_teacher_whose_layers_are_shared_is_refused_before_its_data_is_read(data, tmp_path, caplog):
    """ALBERT's encoder is one layer's weights applied again and again: no layer to keep apart. The refusal
    once came after the data was read and the teacher's logits computed."""
    from transformers import AlbertConfig, AlbertModel

    torch.manual_seed(0)
    base = _save_tiny(AlbertModel(AlbertConfig(vocab_size=30522, embedding_size=16, hidden_size=32, num_hidden_layers=2,
                                               num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)),
                      tmp_path / "albert")
    run = tmp_path / "run"
    train(resolve_config(None, method="linear-probe", **tiny_options(base, data, run)))
    caplog.clear()
    with caplog.at_level(logging.INFO), pytest.raises(ModelError, match="'albert': no list of encoder layers .*share one set") as exc:
        distill(run, tmp_path / "student", layers=1)
    one_line(exc)
    assert "queries of" not in caplog.text and not (tmp_path / "student").exists()


def test_a_stopped_student_resumes_to_the_student_of_a_run_never_stopped(teacher, tmp_path, monkeypatch):
    """Ctrl-C in the middle of a step: the step is finished and saved with the optimizer, schedule,
    random states and teacher logits; --resume ends with the very weights of a run never stopped."""
    import os
    import signal

    from bankintent import distill as module
    from bankintent.errors import TrainingInterrupted

    options = dict(layers=2, epochs=2, batch_size=16, progress=False)
    whole = distill(teacher, tmp_path / "whole", **options)
    real, calls = module.distillation_loss, []

    def stop_in_the_third_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "distillation_loss", stop_in_the_third_step)
    out = tmp_path / "stopped"
    with pytest.raises(TrainingInterrupted, match=r"^interrupted at step 3 of \d+: checkpoint saved in .*distill.pt; continue with the "
                                                  r"same command and --resume \(in Python: distill\(..., resume=True\)\)$"):
        distill(teacher, out, **options)
    assert len(calls) == 3 and not (out / "metrics.json").exists()
    with pytest.raises(ConfigError, match=r"options differ from it \(epochs 2 -> 3\)"):
        distill(teacher, out, resume=True, **{**options, "epochs": 3})
    monkeypatch.setattr(module, "distillation_loss", real)
    resumed = distill(teacher, out, resume=True, **options)
    for key in ("val_accuracy", "test_accuracy", "best_epoch", "optimizer_steps"):
        assert resumed[key] == whole[key], key
    expected = load_file(tmp_path / "whole" / "adapter" / "model.safetensors")
    got = load_file(out / "adapter" / "model.safetensors")
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
    assert not (out / "checkpoints").exists()  # removed once the student is saved
    assert distill(teacher, out, resume=True, **options) == resumed  # a finished student is left as it is


def test_the_distill_command_trains_a_student_from_its_flags(teacher, tmp_path, capsys):
    from bankintent import cli

    out = tmp_path / "student"
    cli.main(["distill", str(teacher), "--output", str(out), "--layers", "2", "--epochs", "1", "--augment-copies", "0"])
    printed = capsys.readouterr().out
    assert printed.startswith("student: 2 of 4 layers") and str(out) in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["layers"] == 2 and metrics["epochs_run"] == 1 and metrics["augmented_size"] == 0
    assert read_spec_layers(out) == [1, 3]
    with pytest.raises(SystemExit):
        cli.main(["distill", str(teacher), "--output", str(out), "--alpha", "2"])
    assert capsys.readouterr().err.strip() == "error: alpha must be between 0 and 1, got 2.0"


def read_spec_layers(run: Path) -> list[int]:
    return json.loads((run / "adapter" / "bankintent.json").read_text())["layers"]
