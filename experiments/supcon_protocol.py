"""The held-out-intents protocol (``benchmarks/out_of_scope.py``) with a supervised contrastive term
(SupCon, Khosla et al., 2020) added to the training's cross-entropy: each batch's normalised embeddings
of one intent pulled together, those of other intents pushed apart. Not a training option: it was
measured and not kept (docs/results/out_of_scope, "A supervised contrastive term").

    SUPCON=0.5 TAU=0.1 python experiments/supcon_protocol.py --output OUT --seeds 43 --workdir WORKDIR --no-frozen-base --arms none label

Every argument goes to the protocol; ``SUPCON`` is the term's weight, ``TAU`` its temperature. It swaps
the ``Trainer`` that ``bankintent.training`` builds for one whose loss adds the term."""
import os
import runpy
import sys
from pathlib import Path

import torch
from torch import nn
from transformers import Trainer
from transformers.modeling_outputs import SequenceClassifierOutput

import bankintent.training as T

W, TAU = float(os.environ["SUPCON"]), float(os.environ.get("TAU", "0.1"))


def supcon(features, labels, temperature):
    """SupCon's L_out: for each query with another of its intent in the batch, the mean over those of
    -log softmax(similarity / temperature) over the rest of the batch; averaged over such queries."""
    sim = features @ features.T / temperature
    eye = torch.eye(len(labels), dtype=torch.bool, device=features.device)
    sim = sim.masked_fill(eye, float("-inf"))
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    pos = (labels[:, None] == labels[None, :]) & ~eye
    has = pos.any(1)
    if not has.any():
        return features.sum() * 0
    per = log_prob.masked_fill(~pos, 0).sum(1)[has] / pos.sum(1)[has]
    return -per.mean()


class SupConTrainer(Trainer):
    """The Trainer whose training loss is the cross-entropy plus ``W`` times ``supcon`` of the head's input."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not model.training:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        labels = inputs["labels"]
        feats = inner.embed(inputs["input_ids"], inputs["attention_mask"])
        logits = inner.head(feats)
        if inner.scale != 1.0:
            logits = logits * inner.scale
        loss = nn.functional.cross_entropy(logits, labels) + W * supcon(feats, labels, TAU)
        return (loss, SequenceClassifierOutput(loss=loss, logits=logits)) if return_outputs else loss


T.Trainer = SupConTrainer
script = Path(__file__).resolve().parent.parent / "benchmarks" / "out_of_scope.py"
sys.argv = [str(script), *sys.argv[1:]]
runpy.run_path(str(script), run_name="__main__")
