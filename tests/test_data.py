from collections import Counter

import pytest

from bankintent.data import iter_queries, load_splits, read_examples
from bankintent.errors import DataError
from conftest import BANKING77, write_csv


@pytest.mark.skipif(not (BANKING77 / "train.csv").is_file(), reason="Banking77 not beside the repository")
def test_banking77_split_is_stratified_and_reproducible():
    splits = load_splits(str(BANKING77))
    assert (len(splits.train), len(splits.validation), len(splits.test), len(splits.labels)) == (9002, 1001, 3080, 77)
    val_counts, all_counts = Counter(splits.validation.labels), Counter(splits.validation.labels + splits.train.labels)
    assert set(val_counts) == set(splits.labels)  # every intent is in validation
    for intent, n in all_counts.items():  # stratified: each intent keeps its 10% share
        assert abs(val_counts[intent] - n / 10) <= 1, intent
    again = load_splits(str(BANKING77))
    assert again.validation.texts == splits.validation.texts
    assert not set(splits.validation.texts) & set(splits.train.texts) - {t for t, n in Counter(splits.train.texts).items() if n > 1}


def test_max_train_samples_keeps_every_intent(tiny_data):
    splits = load_splits(str(tiny_data), max_train_samples=40)
    assert len(splits.train) == 40 and set(splits.train.labels) == set(splits.labels)


def test_jsonl_and_custom_columns(tmp_path):
    lines = [f'{{"utterance": "query number {i}", "intent": "{"a" if i % 2 else "b"}"}}' for i in range(20)]
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    splits = load_splits(str(tmp_path), text_column="utterance", label_column="intent")
    assert splits.labels == ["a", "b"] and len(splits.train) + len(splits.validation) == 20 and splits.test is None


def _folder(tmp_path, train_rows, test_rows=None, header=("text", "category")):
    write_csv(tmp_path / "train.csv", train_rows, header)
    if test_rows is not None:
        write_csv(tmp_path / "test.csv", test_rows)
    return str(tmp_path)


GOOD = [(f"query {i}", "a" if i % 2 else "b") for i in range(40)]


def test_missing_folder_and_file(tmp_path):
    with pytest.raises(DataError, match="data folder not found"):
        load_splits(str(tmp_path / "nope"))
    with pytest.raises(DataError, match="no train.csv or train.jsonl"):
        load_splits(str(tmp_path))
    with pytest.raises(DataError, match="file not found"):
        read_examples(tmp_path / "x.csv")


def test_missing_column(tmp_path):
    with pytest.raises(DataError, match=r"train.csv: row 1: missing column 'category' \(columns: text, label\)"):
        load_splits(_folder(tmp_path, GOOD, header=("text", "label")))


def test_empty_text_names_the_row(tmp_path):
    rows = GOOD[:3] + [("   ", "a")] + GOOD[3:]
    with pytest.raises(DataError, match=r"train.csv: row 5: empty text in column 'text'"):
        load_splits(_folder(tmp_path, rows))


def test_non_utf8(tmp_path):
    (tmp_path / "train.csv").write_bytes(b"text,category\nfine,a\ncaf\xe9 card,b\n")
    with pytest.raises(DataError, match=r"train.csv: row 3: not valid UTF-8"):
        load_splits(str(tmp_path))


def test_header_only_and_empty(tmp_path):
    (tmp_path / "train.csv").write_text("text,category\n")
    with pytest.raises(DataError, match="no rows after the header"):
        load_splits(str(tmp_path))
    (tmp_path / "train.csv").write_text("")
    with pytest.raises(DataError, match="empty file"):
        load_splits(str(tmp_path))


def test_unseen_test_label(tmp_path):
    with pytest.raises(DataError, match=r"test.csv: row 3: label 'c' never seen in training"):
        load_splits(_folder(tmp_path, GOOD, [("x", "a"), ("y", "c")]))


def test_label_too_rare_to_stratify(tmp_path):
    with pytest.raises(DataError, match=r"label 'lonely' has 1 example\(s\)"):
        load_splits(_folder(tmp_path, GOOD + [("only one", "lonely")]))


def test_too_few_rows_to_split(tmp_path):
    with pytest.raises(DataError, match="6 rows are too few for a stratified 10% validation split over 2 labels"):
        load_splits(_folder(tmp_path, GOOD[:6]))


def test_duplicates_are_counted_and_kept(tmp_path, caplog):
    examples = read_examples(write_csv(tmp_path / "d.csv", GOOD + GOOD[:3]))
    assert len(examples) == 43
    assert "3 duplicated row(s) kept" in caplog.text


def test_iter_queries(tmp_path):
    (tmp_path / "q.txt").write_text("I lost my card\nwhat is the rate\n")
    assert list(iter_queries(tmp_path / "q.txt")) == [(1, "I lost my card"), (2, "what is the rate")]
    (tmp_path / "q.txt").write_text("one\n\nthree\n")
    with pytest.raises(DataError, match=r"q.txt: row 2: empty text"):
        list(iter_queries(tmp_path / "q.txt"))
    (tmp_path / "q.jsonl").write_text('{"text": "a"}\n{"query": "b"}\n')
    with pytest.raises(DataError, match=r"q.jsonl: row 2: missing column 'text'"):
        list(iter_queries(tmp_path / "q.jsonl"))
    (tmp_path / "q.csv").write_text("id,query\n1,hello\n")
    assert list(iter_queries(tmp_path / "q.csv", text_column="query")) == [(2, "hello")]


def test_ragged_csv_row(tmp_path):
    (tmp_path / "train.csv").write_text("text,category\nhello,a\nonly text\n")
    with pytest.raises(DataError, match=r"train.csv: row 3: expected 2 fields"):
        load_splits(str(tmp_path))
