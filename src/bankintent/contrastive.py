"""Few-shot training (method ``contrastive``): the sentence encoder fine-tuned contrastively on pairs of
queries of the same intent, then the linear probe on its embeddings.

Why: with a few examples per intent a classifier head has little to learn from, but every pair of
examples says something about the embedding space: two queries of one intent should lie close, two of
different intents apart. The strongest published few-shot intent detectors (SetFit, Tunstall et al.
2022; ConvFiT, Vulić et al. 2021; CPFT, Zhang et al. 2021) first fine-tune the encoder on such pairs,
then fit the head. Here sentence-transformers does the pair training: each training query is paired
with ``pairs_per_example`` other queries of its intent (drawn with the run's seed; by default as many
as bring the pairs to about ``PAIR_BUDGET`` in all, ``pairs_per_query``), and
``MultipleNegativesRankingLoss`` pulls each pair together while pushing it from the other pairs of
its batch (in-batch negatives, no negative pairs to sample); the batch sampler keeps a query from
appearing twice in a batch. ``epochs``, ``lr`` and ``batch_size`` are the pair training's.

The fine-tuned encoder's weights are then loaded into the project's ``MeanPoolClassifier`` (the
encoder of a sentence-transformers model with mean pooling, as all-MiniLM-L6-v2 is, maps one to one),
whose head is the linear probe fitted on the new embeddings. The model folder holds the encoder's and
the head's weights (``model.safetensors``), like ``full``'s, so prediction, evaluation, export and the
service use it as any other.
"""

from __future__ import annotations

import logging
import random
import warnings
from pathlib import Path

import torch

from bankintent.data import Splits
from bankintent.modeling import MeanPoolClassifier, no_loading_bar, resolve_base_model

log = logging.getLogger(__name__)

# Pairs trained on by default: one epoch over about this many, so that training time stops growing with
# the data: more pairs scored no better, and fewer a little less (docs/results/fewshot, "About 2,000
# pairs in all"). A query gets 1 to MAX_PAIRS_PER_QUERY of them.
PAIR_BUDGET = 2000
MAX_PAIRS_PER_QUERY = 4


def pairs_per_query(queries: int) -> int:
    """Pairs drawn per training query when ``pairs_per_example`` is not given: ``PAIR_BUDGET`` shared
    out, so that training time stops growing with the data, within 1 and ``MAX_PAIRS_PER_QUERY``."""
    return max(1, min(MAX_PAIRS_PER_QUERY, round(PAIR_BUDGET / max(queries, 1))))


def pairs(texts: list[str], labels: list[str], per_example: int, seed: int) -> tuple[list[str], list[str]]:
    """(anchors, positives): each query paired with ``per_example`` other queries of its intent, drawn
    without replacement while they last (then again), seeded. An intent with one query has no pair."""
    rng = random.Random(seed)
    by_label: dict[str, list[str]] = {}
    for text, label in zip(texts, labels):
        by_label.setdefault(label, []).append(text)
    anchors, positives = [], []
    for text, label in zip(texts, labels):
        others = [t for t in by_label[label] if t != text]
        if not others:
            continue
        drawn: list[str] = []
        while len(drawn) < per_example:
            drawn.extend(rng.sample(others, min(len(others), per_example - len(drawn))))
        anchors.extend([text] * len(drawn))
        positives.extend(drawn)
    order = list(range(len(anchors)))
    rng.shuffle(order)
    return [anchors[i] for i in order], [positives[i] for i in order]


def fine_tune(model: MeanPoolClassifier, splits: Splits, cfg, work_dir: Path, progress: bool = True) -> dict:
    """Fine-tune ``model.encoder`` in place on pairs of the training split's queries; returns metrics."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.losses import MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.training_args import BatchSamplers

    from bankintent.training import use_training_bar  # imported here: training imports this module

    class _PairTrainer(SentenceTransformerTrainer):
        def add_model_card_callback(self, default_args_dict):
            """No model card: this encoder is never saved as a sentence-transformers model (its weights
            go into the project's model), and drafting the card showed a bar of its own."""

    per_query = cfg.pairs_per_example or pairs_per_query(len(splits.train))
    anchors, positives = pairs(splits.train.texts, splits.train.labels, per_query, cfg.seed)
    if not anchors:
        log.warning("contrastive: no intent has two training queries, so there is no pair to train on; the linear probe only")
        return {"contrastive_pairs": 0}
    cuda = torch.cuda.is_available()
    with no_loading_bar():
        encoder = SentenceTransformer(resolve_base_model(cfg.base_model), device="cuda" if cuda else "cpu",
                                      model_kwargs={"dtype": torch.float32, "use_safetensors": None if cfg.allow_pickle else True})
    encoder.max_seq_length = cfg.max_length
    args = SentenceTransformerTrainingArguments(
        output_dir=str(work_dir),
        num_train_epochs=cfg.epochs,
        learning_rate=cfg.lr,
        per_device_train_batch_size=cfg.batch_size,
        weight_decay=cfg.weight_decay,
        warmup_steps=cfg.warmup_ratio,  # a float below 1 is a ratio of the total steps
        batch_sampler=BatchSamplers.NO_DUPLICATES,
        save_strategy="no",
        eval_strategy="no",
        logging_steps=max(1, len(anchors) // cfg.batch_size // 5),
        seed=cfg.seed,
        bf16=cuda and torch.cuda.is_bf16_supported(),
        report_to="none",
        use_cpu=not cuda,
        disable_tqdm=not progress,
    )
    trainer = _PairTrainer(
        model=encoder,
        args=args,
        train_dataset=Dataset.from_dict({"anchor": anchors, "positive": positives}),
        loss=MultipleNegativesRankingLoss(encoder),
    )
    use_training_bar(trainer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        trainer.train()
    trained = encoder[0].auto_model.state_dict()
    own = model.encoder.state_dict()
    missing = [name for name in own if name not in trained]
    if missing:
        raise RuntimeError(f"contrastive: the fine-tuned encoder lacks {missing[0]!r}")  # a programming error, not bad input
    model.encoder.load_state_dict({name: trained[name] for name in own})
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    log.info("contrastive: %d pairs (%d a query), %d steps, final loss %.4f", len(anchors), per_query, trainer.state.max_steps,
             losses[-1] if losses else float("nan"))
    return {"contrastive_pairs": len(anchors), "contrastive_pairs_per_query": per_query, "contrastive_steps": trainer.state.max_steps,
            "contrastive_loss_first": losses[0] if losses else None, "contrastive_loss_last": losses[-1] if losses else None}
