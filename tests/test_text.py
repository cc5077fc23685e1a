"""Entity normalisation on a table of example queries, its idempotence, and deterministic augmentation."""

import json
import random

import pytest
from hypothesis import given, settings, strategies as st

from bankintent import resolve_config
from bankintent.data import load_splits
from bankintent.errors import ConfigError
from bankintent.text import augment, blank, intent_name_examples, intent_name_text, normalize_entities, perturb, preprocess
from bankintent.training import prepare_splits
from conftest import tiny_options

EXAMPLES = [
    ("I was charged £50 twice", "I was charged <CURRENCY> <AMOUNT> twice"),
    ("why is there a $1.50 fee?", "why is there a <CURRENCY> <AMOUNT> fee?"),
    ("Can I top up by 50€?", "Can I top up by <AMOUNT> <CURRENCY>?"),
    ("I sent 100 euros on 12/03/2020", "I sent <AMOUNT> <CURRENCY> on <DATE>"),
    ("paid 20 gbp on 3rd of june 2021", "paid <AMOUNT> <CURRENCY> on <DATE>"),
    ("the payment from 2021-01-05 is still pending", "the payment from <DATE> is still pending"),
    ("transfer to account 12345678 on March 3rd", "transfer to account <NUMBER> on <DATE>"),
    ("my card number is 4111 1111 1111 1111", "my card number is <NUMBER>"),
    ("card 4111-1111-1111-1111 was declined", "card <NUMBER> was declined"),
    ("exchange rate for USD to GBP", "exchange rate for <CURRENCY> to <CURRENCY>"),
    ("how many dollars can I get for 1,250.00 pounds", "how many <CURRENCY> can I get for <AMOUNT> <CURRENCY>"),
    ("The fee was 12.50 and it took 3 days", "The fee was <AMOUNT> and it took 3 days"),
    # what is not an entity stays: small counts, the PIN's length, the word "currency", "may" as a verb
    ("I have been waiting 5 days for my card", "I have been waiting 5 days for my card"),
    ("can I choose a 4 digit PIN", "can I choose a 4 digit PIN"),
    ("which currency may I hold", "which currency may I hold"),
]


@pytest.mark.parametrize("query, expected", EXAMPLES)
def test_normalize_entities(query, expected):
    assert normalize_entities(query) == expected
    assert normalize_entities(expected) == expected  # placeholders are left alone


def test_preprocess_applies_only_the_models_options():
    assert preprocess("paid £5", {}) == "paid £5"
    assert preprocess("paid £5", {"normalize_entities": False}) == "paid £5"
    assert preprocess("paid £5", {"normalize_entities": True}) == "paid <CURRENCY> <AMOUNT>"


ENTITY_TEXT = st.lists(
    st.one_of(st.sampled_from(["£", "$", "€", "usd", "euros", "March", "3rd", "of", "12/03/2020", "1,000.00", "4111",
                               "12.50", "-", " ", ",", "?", "<AMOUNT>", "pounds"]),
              st.text(alphabet="0123456789 .,-/abc$£", max_size=8)),
    max_size=12,
).map("".join)


@settings(max_examples=300, deadline=None)
@given(ENTITY_TEXT)
def test_normalisation_is_idempotent(text):
    once = normalize_entities(text)
    assert normalize_entities(once) == once


QUERIES = ["i lost my card yesterday", "where is my new card", "my top up failed again", "hi"]


def test_augmentation_is_deterministic_for_a_seed():
    labels = ["lost", "arrival", "top_up", "arrival"]
    first = augment(QUERIES, labels, {"lost", "arrival"}, seed=7)
    assert first == augment(QUERIES, labels, {"lost", "arrival"}, seed=7)
    assert first != augment(QUERIES, labels, {"lost", "arrival"}, seed=8)
    texts, new_labels = first
    assert set(new_labels) <= {"lost", "arrival"} and "top_up" not in new_labels
    assert not set(texts) & set(QUERIES)  # copies, never the originals again
    assert all(len(t.split()) >= len(q.split()) - 1 for t, q in zip(texts, QUERIES))


def test_each_perturbation_changes_a_query_a_little():
    rng = random.Random(0)
    words = "please tell me why my transfer failed".split()
    for _ in range(50):
        out = perturb(" ".join(words), rng).split()
        dropped = len(out) == len(words) - 1 and all(w in words for w in out)
        swapped = sorted(out) == sorted(words) and sum(a != b for a, b in zip(out, words)) == 2
        typo = len(out) == len(words) and sum(a != b for a, b in zip(out, words)) == 1
        assert dropped or swapped or typo or out == words  # a swap of two equal words is a no-op


def test_confused_pairs_augmentation_adds_copies_of_confused_intents(tiny_bert, tiny_data, tmp_path):
    cfg = resolve_config(None, augment="confused-pairs", intent_names="off", **tiny_options(tiny_bert, tiny_data, tmp_path))
    splits = load_splits(cfg.data, val_fraction=cfg.val_fraction, split_seed=cfg.split_seed)
    originals = len(splits.train)
    prepared = prepare_splits(splits, cfg, {})
    record = json.loads((tmp_path / "augmentation.json").read_text())
    confused = {p["intent_a"] for p in record["confused_pairs"]} | {p["intent_b"] for p in record["confused_pairs"]}
    assert record["added"] == len(prepared.train) - originals > 0
    assert set(prepared.train.labels[originals:]) <= confused
    # another process of a distributed run: the same copies, and no file written into a run folder that
    # the main process may not have made yet (it stopped with FileNotFoundError)
    other = tmp_path / "not_made_yet"
    again = prepare_splits(load_splits(cfg.data, val_fraction=cfg.val_fraction, split_seed=cfg.split_seed),
                           resolve_config(None, augment="confused-pairs", intent_names="off", **tiny_options(tiny_bert, tiny_data, other)),
                           {}, main=False)
    assert again.train.texts == prepared.train.texts and not other.exists()


def test_unknown_augmentation_is_a_config_error(tiny_bert, tiny_data, tmp_path):
    with pytest.raises(ConfigError, match="unknown augment 'back-translation'; choose one of confused-pairs"):
        resolve_config(None, augment="back-translation", **tiny_options(tiny_bert, tiny_data, tmp_path))


def test_a_model_trained_with_normalisation_normalises_at_prediction(tiny_bert, tiny_data, tmp_path):
    import numpy as np

    from bankintent import Predictor, train

    train(resolve_config(None, method="linear-probe", normalize_entities=True, **tiny_options(tiny_bert, tiny_data, tmp_path)))
    assert json.loads((tmp_path / "adapter" / "bankintent.json").read_text())["preprocessing"] == {"normalize_entities": True}
    predictor = Predictor.load(tmp_path)
    raw, placeholders, other = predictor.logits(["top up of £25 on 3rd of May failed", "top up of <CURRENCY> <AMOUNT> on <DATE> failed",
                                                 "top up of failed"])
    np.testing.assert_allclose(raw, placeholders, rtol=1e-5)
    assert not np.allclose(raw, other)


@pytest.mark.parametrize("name, words", [("card_arrival", "card arrival"), ("CardArrival", "card arrival"),
                                         ("top-up.failed", "top up failed"), ("Refund_not_showing_up", "refund not showing up"),
                                         ("apple_pay_or_google_pay", "apple pay or google pay"), ("get_PIN", "get pin"),
                                         ("ATMSupport", "atm support"), ("Überweisung_Status", "überweisung status"),
                                         ("查询余额", "查询余额")])
def test_an_intent_name_as_words(name, words):
    assert intent_name_text(name) == words
    assert intent_name_examples([name, "exchange_rate"]) == ([words, "exchange rate"], None)


@pytest.mark.parametrize("labels, why", [(["intent_1", "intent_2"], "intent names such as 'intent_1' read the same as another's once written as words (they differ only in digits, case or punctuation)"),
                                         (["card_arrival", "7"], "intent '7' has no word in its name"),
                                         (["A1", "B2"], "intent 'A1' has no word in its name")])
def test_intent_names_that_are_codes_are_not_examples(labels, why):
    assert intent_name_examples(labels) == ([], why)


def test_a_text_of_invisible_characters_is_blank():
    for text in ("", "  \n", "\u00a0", "\u200b", "\ufeff", "\x00", "\u200d \t"):
        assert blank(text), repr(text)
    for text in ("a", " hi ", "\u200bhi", "é", "日本", "hi\x00", "?"):
        assert not blank(text), repr(text)
