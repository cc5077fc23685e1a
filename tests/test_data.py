import csv
import logging
import re
from collections import Counter

import pytest
from sklearn.model_selection import train_test_split

from bankintent.data import (SMALL_DATA_PER_INTENT, data_files, iter_queries, load_splits, query_key, read_examples, read_out_of_scope_file,
                             read_queries, thin_validation)
from bankintent.errors import DataError
from conftest import BANKING77, write_csv


def test_a_banking77_folder_named_in_the_environment_is_the_one_read(tmp_path, monkeypatch):
    """BANKINTENT_DATA_DIR names the copy to read: one without train.csv is an error, where it was passed
    over for the copy beside the project (a typo trained on other data than meant, without a word)."""
    monkeypatch.setenv("BANKINTENT_DATA_DIR", str(tmp_path / "typo"))
    with pytest.raises(DataError, match=rf"BANKINTENT_DATA_DIR={tmp_path / 'typo'}: no train.csv there"):
        data_files("banking77")
    (tmp_path / "copy").mkdir()
    write_csv(tmp_path / "copy" / "train.csv", GOOD)
    monkeypatch.setenv("BANKINTENT_DATA_DIR", str(tmp_path / "copy"))
    assert data_files("banking77").train == tmp_path / "copy" / "train.csv"


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


def test_max_train_samples_that_leaves_small_data_an_intent_of_one_example_is_refused(tmp_path):
    """Small data has no validation split: its choices are cross-validated over two halves of each intent,
    and training failed after it had trained, with a scikit-learn traceback."""
    from conftest import write_tiny_data

    data = write_tiny_data(tmp_path, 10)
    assert not len(load_splits(str(data), max_train_samples=8).validation)  # two of each of the 4 intents
    with pytest.raises(DataError, match=r"train.csv: max_train_samples=6 leaves 2 intent\(s\) with one example \('.*', '.*'\); "
                                        r"with no validation split every intent needs 2"):
        load_splits(str(data), max_train_samples=6)


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
    with pytest.raises(DataError, match=r"nope: no such data folder or file \(expected a folder holding train.csv, or a .csv, "
                                        r".tsv, .jsonl or .parquet file\)$"):
        load_splits(str(tmp_path / "nope"))
    with pytest.raises(DataError, match=r"PolyAI/banking77: no such .* file\) \(if it names a Hugging Face dataset: one is not read by name; save"):
        load_splits("PolyAI/banking77")
    with pytest.raises(DataError, match=r"no such data folder or file \(expected .* file\)$"):  # a local path mistyped: no hub hint
        load_splits("my_intents/train.csv")
    (tmp_path / "array").mkdir()
    (tmp_path / "array" / "rows.jsonl").write_text('[{"text": "hi", "category": "a"}]\n')  # a .json file renamed
    with pytest.raises(DataError, match=r"rows.jsonl: line 1: a JSON array, where JSON lines \(one object a line\) are read; write"):
        read_examples(tmp_path / "array" / "rows.jsonl")
    with pytest.raises(DataError, match=r"no training file \(train.csv, train.tsv, train.jsonl or train.parquet\) in the folder, which holds nothing"):
        load_splits(str(tmp_path))
    (tmp_path / "training_data.csv").write_text("text,category\n")
    with pytest.raises(DataError, match=r"no training file .* in the folder, which holds training_data.csv$"):
        load_splits(str(tmp_path))  # the files it does hold are named: the one to rename shows
    with pytest.raises(DataError, match="file not found"):
        read_examples(tmp_path / "x.csv")


def test_missing_column(tmp_path):
    with pytest.raises(DataError, match=r"train.csv: line 1: missing column 'category' \(columns: 'text', 'label'\); name the columns to read with --text-column"):
        load_splits(_folder(tmp_path, GOOD, header=("text", "label")))
    with pytest.raises(DataError, match=r"missing column 'category' \(columns: 'Text', 'Intent'\)"):  # the header as written
        load_splits(_folder(tmp_path, GOOD, header=("Text", "Intent")))
    (tmp_path / "pipe").mkdir()
    (tmp_path / "pipe" / "train.csv").write_text("text|category\nhello|a\n")
    with pytest.raises(DataError, match=r"missing column 'text' \(columns: 'text\|category'\); the file looks '\|'-separated"):
        read_examples(tmp_path / "pipe" / "train.csv")


@pytest.mark.parametrize("separator", [";", "\t"])
def test_a_semicolon_or_tab_separated_csv_is_read_as_such(tmp_path, separator, caplog):
    """Excel writes ';' where the comma is the decimal mark; a header line with no comma tells. Texts
    holding commas, a byte order mark and quoted separators read as in a comma-separated file."""
    caplog.set_level(logging.INFO, logger="bankintent")
    rows = [("hello, I lost my card", "lost_card"), (f'it says "declined{separator} try later"', "declined"), ("café 5,00 €", "fees")]
    path = tmp_path / "train.csv"
    with open(path, "w", newline="", encoding="utf-8-sig") as handle:
        csv.writer(handle, delimiter=separator).writerows([("Text", "category"), *rows])
    examples = read_examples(path)
    assert list(zip(examples.texts, examples.labels)) == rows
    assert f"read as {'semicolon' if separator == ';' else 'tab'}-separated" in caplog.text
    path.write_text(f"text{separator}category\nfine{separator}a\ntoo{separator}many{separator}b\n")
    with pytest.raises(DataError, match=rf"line 3: expected 2 fields, found 3 \(a {re.escape(repr(separator))} in a text needs"):
        read_examples(path)
    # Excel's hint line "sep=;" before the header names the separator (it was read as the header)
    path.write_bytes(f'"sep={separator}"\r\nText{separator}category\r\nfine{separator}a\r\n{rows[2][0]}{separator}b\r\n'
                     f'too{separator}many{separator}c\r\n'.encode("cp1252"))
    with pytest.raises(DataError, match=r"line 5: expected 2 fields, found 3"):  # lines counted from the file's first
        read_examples(path)
    assert "(its first line names it)" in caplog.text
    path.write_text(f"SEP={separator}\nText{separator}category\nfine{separator}a\n{rows[2][0]}{separator}b\n")
    examples = read_examples(path)
    assert list(zip(examples.rows, examples.texts, examples.labels)) == [(3, "fine", "a"), (4, rows[2][0], "b")]


def test_empty_rows_are_skipped_and_counted_unless_strict(tmp_path, caplog):
    rows = GOOD[:3] + [("   ", "a")] + GOOD[3:] + [("\u200b", "b")]  # a zero-width space is no text either
    splits = load_splits(_folder(tmp_path, rows))
    assert len(splits.train) + len(splits.validation) == len(GOOD)
    assert all(t.strip() for t in splits.train.texts + splits.validation.texts)
    assert "2 row(s) with an empty text skipped (lines 5, 43; strict_data" in caplog.text  # where, as for unlabelled rows
    assert splits.notes["empty_rows_skipped"] == 2 and splits.notes["empty_rows_skipped_by_file"] == {"train.csv": 2}
    with pytest.raises(DataError, match=r"train.csv: line 5: empty text in column 'text' \(strict_data"):
        load_splits(str(tmp_path), strict_data=True)
    (tmp_path / "train.csv").write_text("text,category\n ,a\n,b\nno label,\n")
    with pytest.raises(DataError, match=r"no labelled rows \(2 row\(s\) with an empty text, 1 with no label skipped\)"):
        load_splits(str(tmp_path))


def test_unlabelled_rows_are_skipped_and_named_unless_strict(tmp_path, caplog):
    """A sheet with a row or two still to label trains on the labelled rows, and says which were left out."""
    path = write_csv(tmp_path / "train.csv", GOOD[:3] + [("where is my card", "  ")] + GOOD[3:] + [("rate please", "")])
    examples = read_examples(path)
    assert len(examples) == len(GOOD) and examples.empty_skipped == 2 and "where is my card" not in examples.texts
    assert "train.csv: 2 row(s) with no label in column 'category' skipped (lines 5, 43); label them to use them" in caplog.text
    with pytest.raises(DataError, match=r"train.csv: line 5: empty label in column 'category' \(strict_data refuses unlabelled rows\)"):
        read_examples(path, strict=True)


def test_a_query_labelled_two_ways_is_named(tmp_path, caplog):
    path = write_csv(tmp_path / "train.csv", GOOD + [("Query 1", "b"), ("query  2", "b"),  # 'query 1' is an 'a'; 'query 2' a 'b'
                                                    ("Where IS my PIN?", "a"), ("where is my pin?", "b")])
    read_examples(path)
    assert ("train.csv: 2 query(ies) labelled more than one way: 'query 1' as 'a' (line 3) and 'b' (line 42); "
            "'Where IS my PIN?' as 'a' (line 44) and 'b' (line 45); the model is taught every label") in caplog.text  # as written


def test_one_intent_is_refused_in_one_line_out_of_scope_rows_or_not(tmp_path):
    """With out-of-scope rows beside it, one intent reached scikit-learn's 'needs samples of at least 2 classes'."""
    rows = [(f"what is my balance {i}", "check_balance") for i in range(3)] + [("tell me a joke", "out_of_scope"), ("sing", "out_of_scope")]
    with pytest.raises(DataError, match=r"train.csv: one intent, 'check_balance' \(its 2 rows labelled 'out_of_scope' are "
                                        r"out-of-scope examples, not an intent\); a classifier needs at least 2 intents"):
        load_splits(_folder(tmp_path, rows))
    with pytest.raises(DataError, match=r"train.csv: one intent, 'check_balance'; a classifier needs at least 2 intents"):
        load_splits(_folder(tmp_path, rows[:3]))


def test_the_out_of_scope_label_written_otherwise_stops_training_data(tmp_path):
    rows = GOOD + [("what is the weather", "Out of scope"), ("tell me a joke", "Out of scope")]
    with pytest.raises(DataError, match=r"train.csv: label 'Out of scope' is the out-of-scope label 'out_of_scope' written "
                                        r"otherwise.*--oos-label 'Out of scope'"):
        load_splits(_folder(tmp_path, rows))
    assert load_splits(str(tmp_path), oos_label="Out of scope").out_of_scope.texts == ["what is the weather", "tell me a joke"]


def test_a_sheet_written_spreadsheet_safe_reads_back_as_it_was(tmp_path):
    """Texts a spreadsheet would run as formulas are written after an apostrophe, numbers and plain
    texts as they are; a .csv read back (training data, queries) gives every text as it was, apostrophes
    of the texts' own included. A .jsonl is no sheet: its texts are read as written."""
    import pandas as pd

    from bankintent.data import write_sheet

    texts = ['=HYPERLINK("http://evil.example","card")', "+44 7700 900123 is my number", "-5", "@SUM(A1)", "'=already quoted",
             "'sup, my card is gone", "- my top up failed", "plain query", "'-12.5"]
    labels = ["card_arrival"] * (len(texts) - 1) + ["-fees"]  # an intent name a spreadsheet would run, copied from a sheet
    write_sheet(pd.DataFrame({"text": texts, "category": labels, "count": range(len(texts))}), tmp_path / "sheet.csv")
    with open(tmp_path / "sheet.csv", newline="", encoding="utf-8") as handle:
        written = [row["text"] for row in csv.DictReader(handle)]
    assert written == ["'" + texts[0], "'" + texts[1], "-5", "'@SUM(A1)", "''=already quoted", "'sup, my card is gone",
                       "'- my top up failed", "plain query", "''-12.5"]
    assert read_examples(tmp_path / "sheet.csv").texts == texts and read_examples(tmp_path / "sheet.csv").labels == labels
    assert [text for _, text in iter_queries(tmp_path / "sheet.csv")] == texts
    (tmp_path / "q.jsonl").write_text('{"text": "\'=x"}\n')
    assert [text for _, text in iter_queries(tmp_path / "q.jsonl")] == ["'=x"]


def test_a_file_saved_by_excel_as_plain_csv_reads_as_windows_1252_with_a_warning(tmp_path, caplog):
    path = tmp_path / "train.csv"
    path.write_bytes(b"text,category\nfine,a\ncaf\xe9 card \x80 \xa3 \x93quoted\x94,b\n")
    assert read_examples(path).texts == ["fine", "caf\u00e9 card \u20ac \u00a3 \u201cquoted\u201d"]
    assert "train.csv: not UTF-8 (line 3, byte 0xe9): read as Windows-1252" in caplog.text
    path.write_bytes(b"text,category\nfine,a\nbad \x81 byte,b\n")  # 0x81 is no Windows-1252 character: not that either
    with pytest.raises(DataError, match=r"train.csv: line 3: not valid UTF-8 text \(byte 0x81\); save the file as UTF-8"):
        read_examples(path)


def test_utf16_with_its_mark_reads(tmp_path):
    path = tmp_path / "train.csv"  # Excel's "Unicode text"
    path.write_bytes(b"\xff\xfe" + "text,category\nth\u00e9 card,a\n".encode("utf-16-le"))
    assert read_examples(path).texts == ["th\u00e9 card"]


def test_utf16_without_its_mark_nul_bytes_and_unreadable_files_are_one_line(tmp_path, monkeypatch):
    path = tmp_path / "train.csv"  # UTF-16 is valid UTF-8 byte for byte: it was read as texts of "t\x00h\x00..."
    path.write_bytes("text,category\nthe card,a\n".encode("utf-16-le"))
    with pytest.raises(DataError, match=r"train.csv: line 1: not text: it holds UTF-16 \(little-endian\) without the byte-order mark"):
        read_examples(path)
    path.write_bytes("text\nthe card\n".encode("utf-16-be"))
    with pytest.raises(DataError, match=r"UTF-16 \(big-endian\) without"):
        read_queries(path)
    path.write_bytes("text,category\n\u043c\u043e\u044f \u043a\u0430\u0440\u0442\u0430,a\n".encode("utf-16-le"))
    with pytest.raises(DataError, match=r"UTF-16 \(little-endian\) without"):  # Cyrillic queries: told by the header, not the whole
        read_examples(path)
    path.write_bytes(b"text,category\nthe card,a\nthe\x00card,b\n")
    with pytest.raises(DataError, match=r"train.csv: line 3: not text: it holds NUL bytes"):
        read_examples(path)
    path.write_text("text,category,text\nthe card,a,my note\n")
    with pytest.raises(DataError, match=r"train.csv: line 1: 2 columns named 'text' \(columns: 'text', 'category', 'text'\); rename all but"):
        read_examples(path)  # the note was read as the query
    path.write_text("id,text,id,id.1\n1,the card,2,3\n")  # another column named twice: kept as pandas names it, not replaced
    assert [extra for _, _, extra in iter_queries(path, columns=True)] == [{"id": "1", "id.2": "2", "id.1": "3"}]
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = pa.array([b"the card \xff", b"ok"], type=pa.binary()).view(pa.string())  # a writer that wrote other bytes as text
    pq.write_table(pa.table({"text": texts, "category": ["a", "b"]}), tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=r"bad.parquet: a text column holds bytes that are not UTF-8; write the file's texts as UTF-8$"):
        read_examples(tmp_path / "bad.parquet")  # not "line 1 ... (in Excel: CSV UTF-8)"
    (tmp_path / "folder.csv").mkdir()
    with pytest.raises(DataError, match=r"folder.csv: a folder, not a file$"):
        read_queries(tmp_path / "folder.csv")
    path.write_text("text,category\nthe card,a\n")

    def denied(*args, **kwargs):  # a file this user may not read (the tests may run as root, who may)
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("builtins.open", denied)
    with pytest.raises(DataError, match=r"train.csv: cannot be read \(Permission denied\)$"):
        read_examples(path)


def test_suffixes_in_any_case_tab_separated_files_and_workbooks(tmp_path):
    rows = "text,category\nwhere is my card,card\nrate for euros,rate\n"
    (tmp_path / "TRAIN.CSV").write_text(rows)
    (tmp_path / "test.tsv").write_text(rows.replace(",", "\t"))
    files = data_files(str(tmp_path))
    assert (files.train.name, files.test.name) == ("TRAIN.CSV", "test.tsv")
    assert read_examples(files.test).labels == ["card", "rate"]
    (tmp_path / "queries.log").write_text("id,text\n1,where is my card\n")
    with pytest.raises(DataError, match=r"queries.log: a file of queries must be .txt, .csv, .jsonl or .parquet \(.txt: one query a line\), not '.log'$"):
        read_queries(tmp_path / "queries.log")  # was read as .txt: its header and ids taken for queries
    (tmp_path / "book.xlsx").write_bytes(b"PK\x03\x04")
    with pytest.raises(DataError, match=r"book.xlsx: a spreadsheet workbook is not read; save the sheet as CSV UTF-8"):
        read_examples(tmp_path / "book.xlsx")
    for workbook in (b"PK\x03\x04\x14\x00\x06\x00", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1\x00"):  # .xlsx, .xls renamed to .csv
        (tmp_path / "book.csv").write_bytes(workbook + b"\x00\x9d\xff" * 50)
        with pytest.raises(DataError, match=r"book.csv: a workbook or zip archive by its bytes, not text, whatever its name says; save"):
            read_examples(tmp_path / "book.csv")


def test_header_only_and_empty(tmp_path):
    (tmp_path / "train.csv").write_text("text,category\n")
    with pytest.raises(DataError, match="no rows after the header"):
        load_splits(str(tmp_path))
    (tmp_path / "train.csv").write_text("")
    with pytest.raises(DataError, match="empty file"):
        load_splits(str(tmp_path))


def test_unseen_test_label(tmp_path):
    with pytest.raises(DataError, match=r"test.csv: line 3: label 'c' never seen in training \(label the rows of intents training has "
                                        r"none of 'out_of_scope' to test the fallback on them\)$"):
        load_splits(_folder(tmp_path, GOOD, [("x", "a"), ("y", "c")]))
    with pytest.raises(DataError, match=r"label 'close_account' never seen in training \(a typo for 'open_account'\? If not, label the "
                                        r"rows of intents training has none of 'out_of_scope'"):  # the guess may be wrong: both said
        load_splits(_folder(tmp_path, [(t, "open_account" if l == "a" else l) for t, l in GOOD], [("close it", "close_account")]))
    with pytest.raises(DataError, match=r"line 3: label 'OOS' never seen in training \(out-of-scope rows are read under the label 'out_of_scope'; "):
        load_splits(_folder(tmp_path, GOOD, [("x", "a"), ("tell me a joke", "OOS")]))
    with pytest.raises(DataError, match=r"line 3: label 'out_of_scop' never seen in training \(a typo for 'out_of_scope'\?\)$"):
        load_splits(_folder(tmp_path, GOOD, [("x", "a"), ("tell me a joke", "out_of_scop")]))
    with pytest.raises(DataError, match=r"line 2: label 'C' never seen in training, nor on 2 more row\(s\) labelled so \(label the rows"):
        load_splits(_folder(tmp_path, GOOD, [("x", "C"), ("y", "a"), ("z", "C"), ("w", "C")]))  # fixed one row at a time, once
    with pytest.raises(DataError, match=r"line 2: label 'c' never seen in training, nor 2 other label\(s\) of the file \('d', 'e'\) \("):
        load_splits(_folder(tmp_path, GOOD, [("x", "c"), ("y", "d"), ("z", "a"), ("w", "e")]))  # each named at once
    with pytest.raises(DataError, match=r"line 2: label '1' never seen in training, nor 1 other label\(s\) of the file \('0'\) \(this file's labels are numbers, the model's "
                                        r"intents names: write the names in the file, docs/training.md\)$"):
        load_splits(_folder(tmp_path, GOOD, [("x", "1"), ("y", "0")]))


def test_label_with_one_example_stops_with_one_line_saying_why(tmp_path, caplog):
    line = len(GOOD) + 2  # the header, then GOOD's rows
    with pytest.raises(DataError, match=rf"train.csv: line {line}: label 'lonely' has 1 example; every intent needs at least 2 "
                                        r"\(one to learn from, one to check the choices on by cross-validation\)"):
        load_splits(_folder(tmp_path, GOOD + [("only one", "lonely")]))
    typo = GOOD[0][1][:-1] + GOOD[0][1][-1] * 2  # the first intent's name with its last letter doubled
    (tmp_path / "typo").mkdir()
    with pytest.raises(DataError, match=rf"line {line}: label '{typo}' has 1 example \(a typo for '{GOOD[0][1]}'\?\)"):
        load_splits(_folder(tmp_path / "typo", GOOD + [("only one", typo)]))
    (tmp_path / "sheet").mkdir()  # a label mistyped in a labelling sheet merged back: the warning said it "trains as an intent of its own"
    rows = [(f"travel {i}", "travel_notice") for i in range(6)] + [(f"query {i}", "b") for i in range(6)] + [("abroad", "travel_notcie")]
    with pytest.raises(DataError, match=r"label 'travel_notcie' has 1 example \(a typo for 'travel_notice'\?\)"):
        load_splits(_folder(tmp_path / "sheet", rows))
    assert "spelt almost as" not in caplog.text  # before the error that it does not train
    (tmp_path / "three").mkdir()  # three at once: each named, with its line and the label it may mean (they came one a run)
    with pytest.raises(DataError, match=rf"line {line}: label '{typo}' \(and 2 other label\(s\) with one: 'lonely' \(line {line + 1}\), "
                                        rf"'zz_new' \(line {line + 2}\)\) has 1 example \(a typo for '{GOOD[0][1]}'\?\)"):
        load_splits(_folder(tmp_path / "three", GOOD + [("only one", typo), ("alone", "lonely"), ("new", "zz_new")]))


def test_a_label_whose_rows_repeat_one_query_stops_too(tmp_path):
    with pytest.raises(DataError, match=r"label 'echo' has 1 distinct example \(its other 1 row\(s\) repeat it, case and spaces "
                                        r"aside\); every intent needs"):
        load_splits(_folder(tmp_path, GOOD + [("same query", "echo"), ("Same  Query ", "echo")]))


def test_repeated_rows_stay_out_of_validation(tmp_path):
    """A query given several times (chat exports repeat "hi" and "balance") must not be scored on
    validation while a copy of it trains: validation would reward memorising it."""
    rows = [(f"query {i}", "a" if i % 2 else "b") for i in range(60)] + [(f"query {i}", "a" if i % 2 else "b") for i in range(12)] * 2 \
        + [(f"QUERY  {i} ", "a" if i % 2 else "b") for i in range(12)]  # a copy but for case and spaces, which the model does not see
    splits = load_splits(_folder(tmp_path, rows))
    plain = train_test_split(range(len(rows)), test_size=0.1, stratify=[label for _, label in rows], random_state=42)
    assert {(query_key(rows[i][0]), rows[i][1]) for i in plain[1]} & {(query_key(rows[i][0]), rows[i][1]) for i in plain[0]}, \
        "the plain split would have leaked: the test needs it to"
    train = {(query_key(t), label) for t, label in zip(splits.train.texts, splits.train.labels)}
    validation = [(query_key(t), label) for t, label in zip(splits.validation.texts, splits.validation.labels)]
    assert not train & set(validation)
    assert (len(splits.train), len(validation)) == (len(plain[0]), len(plain[1]))  # the sizes and strata of the plain split
    assert Counter(label for _, label in validation) == Counter(rows[i][1] for i in plain[1])


def test_test_and_validation_queries_seen_in_training_are_counted(tmp_path, caplog):
    write_csv(tmp_path / "valid.csv", [("query 1", "a"), ("a new query", "b")])
    test = [(f"query {i}", "a" if i % 2 else "b") for i in range(40)] + [(f"unseen {i}", "a") for i in range(260)]
    splits = load_splits(_folder(tmp_path, GOOD, test))
    assert splits.notes["queries_also_in_training"] == {"validation": 1, "test": 40}
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert f"{tmp_path / 'test.csv'}: 40 of its 300 queries are also in train.csv (scored as if unseen)" in warnings
    assert f"{tmp_path / 'valid.csv'}: 1 of its 2 queries are also in train.csv (scored as if unseen)" in warnings


def test_one_example_trains_beside_a_validation_file(tmp_path):
    write_csv(tmp_path / "valid.csv", [("query 1", "a"), ("query 2", "b"), ("only one", "lonely")])
    splits = load_splits(_folder(tmp_path, GOOD + [("only one", "lonely")]))
    assert Counter(splits.train.labels)["lonely"] == 1 and len(splits.validation) == 3


def test_small_data_is_not_split(tmp_path, caplog):
    """Below SMALL_DATA_PER_INTENT examples per intent (median) and without a validation file, every row
    trains and the validation split is empty; the old code refused 6 rows over 2 labels."""
    splits = load_splits(_folder(tmp_path, GOOD[:6]))
    assert len(splits.train) == 6 and len(splits.validation) == 0 and splits.small_data
    assert splits.notes["validation"].startswith("none: small data (median 3 examples per intent")
    assert splits.notes["validation_from_file"] is False
    assert "none: small data" in caplog.text


def test_large_enough_data_is_still_split(tmp_path):
    rows = [(f"query {i}", "a" if i % 2 else "b") for i in range(SMALL_DATA_PER_INTENT * 2)]  # median exactly the limit
    splits = load_splits(_folder(tmp_path, rows))
    assert not splits.small_data and len(splits.validation) == 4 and len(splits.train) == len(rows) - 4


def test_too_few_rows_to_split(tmp_path):
    rows = [(f"query {i}", f"intent {i % 30}") for i in range(30 * SMALL_DATA_PER_INTENT)] + [(f"x {i}", "big") for i in range(5)]
    with pytest.raises(DataError, match="605 rows are too few for a stratified 1% validation split over 31 labels"):
        load_splits(_folder(tmp_path, rows), val_fraction=0.01)


def test_shots_are_stratified_deterministic_and_seeded(tmp_path):
    rows = [(f"{label} query {i}", label) for label in ("a", "b", "c") for i in range(30)] + [("rare 1", "d"), ("rare 2", "d")]
    folder = _folder(tmp_path, rows)
    first = load_splits(folder, shots=5, shots_seed=1)
    assert Counter(first.train.labels) == {"a": 5, "b": 5, "c": 5, "d": 2}  # an intent with fewer keeps all
    assert first.small_data and first.notes["shots"] == {"per_intent": 5, "seed": 1, "rows": 17, "of_rows": 92}
    assert load_splits(folder, shots=5, shots_seed=1).train.texts == first.train.texts
    other = load_splits(folder, shots=5, shots_seed=2)
    assert other.train.texts != first.train.texts and Counter(other.train.labels) == Counter(first.train.labels)
    assert set(first.train.texts) <= {text for text, _ in rows}
    # each intent's draw is its own: the same seed draws the same 'a' rows whatever the other intents hold
    (tmp_path / "alone").mkdir()
    alone = load_splits(_folder(tmp_path / "alone", [r for r in rows if r[1] == "a"] + rows[-2:]), shots=5, shots_seed=1)
    assert [t for t in alone.train.texts if t.startswith("a ")] == [t for t in first.train.texts if t.startswith("a ")]
    with pytest.raises(DataError, match="shots must be at least 1"):
        load_splits(folder, shots=0)


def test_shots_keep_a_validation_file_whole(tmp_path):
    rows = [(f"{label} query {i}", label) for label in ("a", "b") for i in range(30)]
    write_csv(tmp_path / "valid.csv", rows[:25])
    splits = load_splits(_folder(tmp_path, rows), shots=3)
    assert len(splits.train) == 6 and len(splits.validation) == 25 and not splits.small_data


def test_duplicates_are_counted_and_kept(tmp_path, caplog):
    examples = read_examples(write_csv(tmp_path / "d.csv", GOOD + GOOD[:3]))
    assert len(examples) == 43
    assert "d.csv: 3 duplicated row(s) kept (lines 42, 43, 44, each the same text and label as a row above)" in caplog.text


def test_iter_queries(tmp_path):
    (tmp_path / "q.txt").write_text("I lost my card\nwhat is the rate\n")
    assert list(iter_queries(tmp_path / "q.txt")) == [(1, "I lost my card"), (2, "what is the rate")]
    (tmp_path / "q.txt").write_text("one\n\nthree\n")
    assert list(iter_queries(tmp_path / "q.txt")) == [(1, "one"), (3, "three")]  # blank lines skipped (issue 12)
    (tmp_path / "q.jsonl").write_text('{"text": "a"}\n{"query": "b"}\n')
    with pytest.raises(DataError, match=r"q.jsonl: line 2: missing column 'text'"):
        list(iter_queries(tmp_path / "q.jsonl"))
    (tmp_path / "q.jsonl").write_text('{"text": "a"}\n{"id": 1, "text": "b", "text": "c"}\n')
    with pytest.raises(DataError, match=r"q.jsonl: line 2: key 'text' given twice in one object; keep one$"):  # not 'c' read for 'b'
        list(iter_queries(tmp_path / "q.jsonl"))
    (tmp_path / "q.jsonl").write_text('{"text": "a"}\n{"text": "tab\there"}\n')  # where on the line the JSON breaks
    with pytest.raises(DataError, match=r"q.jsonl: line 2: not valid JSON \(Invalid control character at column 14\)$"):
        list(iter_queries(tmp_path / "q.jsonl"))
    (tmp_path / "q.csv").write_text("id,query\n1,hello\n")
    assert list(iter_queries(tmp_path / "q.csv", text_column="query")) == [(1, "hello")]  # row n: the n-th data row


def test_ragged_csv_row(tmp_path):
    (tmp_path / "train.csv").write_text("text,category\nhello,a\nonly text\n")
    with pytest.raises(DataError, match=r"train.csv: line 3: expected 2 fields, found 1$"):
        load_splits(str(tmp_path))
    (tmp_path / "train.csv").write_text("text,category\nhello,a\nmy card, it is lost,b\n")  # a text's comma, a space after it
    with pytest.raises(DataError, match=r"train.csv: line 3: expected 2 fields, found 3 \(a comma in a text needs the text in double quotes\)$"):
        load_splits(str(tmp_path))
    (tmp_path / "train.csv").write_text("text,category\nhello,a\nmy card is lost,bwhere is my card,b\n")
    with pytest.raises(DataError, match=r"train.csv: line 3: expected 2 fields, found 3 \(a comma in a text needs the text in double quotes; "
                                        r"or two rows run together, as when rows are added to a file that did not end with a line break\)$"):
        load_splits(str(tmp_path))
    (tmp_path / "train.csv").write_text("id,text,category\n1,hello,a\n2,my card, it is lost,b\n")  # 4 of 3: a comma only
    with pytest.raises(DataError, match=r"line 3: expected 3 fields, found 4 \(a comma in a text needs the text in double quotes\)$"):
        load_splits(str(tmp_path), text_column="text")
    # a stray quote swallows the rest of the file into one record: the error says where it opened, also
    # where that record has the fields a row needs (a file of queries with an id column, say)
    (tmp_path / "train.csv").write_text('text,category\nhello,a\n"where is my card,b\nagain,b\nmore,a\n')
    with pytest.raises(DataError, match=r"train.csv: line 3: a double quote opens a text that is never closed"):
        load_splits(str(tmp_path))
    (tmp_path / "queries.csv").write_text('id,text\n1,hello\n2,"where is my card\n3,again\n')
    with pytest.raises(DataError, match=r"queries.csv: line 3: a double quote opens a text that is never closed"):
        read_queries(tmp_path / "queries.csv")
    # a quoted line break is one good record, blank lines are skipped: the rows after keep their own line numbers
    (tmp_path / "train.csv").write_text('text,category\n"two\nlines",a\n\nonly text\n')
    with pytest.raises(DataError, match=r"train.csv: line 5: expected 2 fields"):
        load_splits(str(tmp_path))
    # an open quote that swallows more than the csv module's field limit
    (tmp_path / "train.csv").write_text('text,category\nhello,a\n"open,b\n' + "more text,a\n" * 20000)
    with pytest.raises(DataError, match=r"train.csv: lines 3-\d+, one record \(is a quote on line 3 left open\?\): a field of over "
                                        r"131,072 characters \(no query is that long: a double quote left open, or a document pasted"):
        load_splits(str(tmp_path))  # was "malformed CSV (field larger than field limit (131072))"


def test_a_user_validation_file_is_the_validation_split(tmp_path, caplog):
    write_csv(tmp_path / "train.csv", GOOD)
    own = [("my own check a", "a"), ("my own check b", "b")]
    for name in ("valid.csv", "dev.jsonl"):
        write_csv(tmp_path / "valid.csv", own) if name == "valid.csv" else (tmp_path / name).write_text('{"text": "x", "category": "a"}\n')
    splits = load_splits(str(tmp_path))
    assert splits.validation.texts == [t for t, _ in own] and splits.train.texts == [t for t, _ in GOOD]  # nothing carved from train
    assert splits.notes["validation"] == str(tmp_path / "valid.csv") and splits.notes["validation_from_file"] is True
    assert "validation files valid.csv, dev.jsonl: using valid.csv, not dev.jsonl" in caplog.text
    assert thin_validation(splits).endswith("rest on little; add validation queries to valid.csv")  # val_fraction carves nothing here
    write_csv(tmp_path / "valid.csv", own + [("new", "zzz")])
    with pytest.raises(DataError, match=r"valid.csv: line 4: label 'zzz' never seen in training"):
        load_splits(str(tmp_path))


def test_validation_csv_and_jsonl_names(tmp_path):
    write_csv(tmp_path / "train.csv", GOOD)
    (tmp_path / "validation.jsonl").write_text('{"text": "held out", "category": "a"}\n')
    assert load_splits(str(tmp_path)).validation.texts == ["held out"]


def test_train_csv_beside_train_jsonl_says_which_is_used(tmp_path, caplog):
    write_csv(tmp_path / "train.csv", GOOD)
    (tmp_path / "train.jsonl").write_text('{"text": "other", "category": "a"}\n')
    (tmp_path / "extra.csv").write_text("text,category\nx,a\n")
    splits = load_splits(str(tmp_path))
    assert len(splits.train) + len(splits.validation) == len(GOOD)
    assert "training files train.csv, train.jsonl: using train.csv, not train.jsonl" in caplog.text
    assert "not read: extra.csv" in caplog.text


def test_data_can_be_a_file(tmp_path, caplog):
    write_csv(tmp_path / "train.csv", GOOD)
    write_csv(tmp_path / "test.csv", GOOD[:4])
    splits = load_splits(str(tmp_path / "train.csv"))
    assert "data folder not found" not in caplog.text
    assert len(splits.train) + len(splits.validation) == len(GOOD) and splits.test is None
    assert splits.source == str((tmp_path / "train.csv").resolve())
    assert f"the files beside it (test.csv) are not used (the validation split, if the data has one, is carved from train.csv; there is no test set); " \
           f"give --data {tmp_path.resolve()} to use them" in caplog.text
    caplog.clear()  # another version of the training file beside train.csv: the advice keeps it the training file
    write_csv(tmp_path / "train_v2.csv", GOOD)
    load_splits(str(tmp_path / "train_v2.csv"))
    assert "the files beside it (test.csv) are not used (the validation split, if the data has one, is carved from train_v2.csv; there is no test set); " \
           "to use them, give --data a folder holding them and this file as train.csv" in caplog.text
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match=r"notes.txt: a data file \(or the folder holding train.csv\) must be .csv, .jsonl or .parquet, not '.txt' \(a tab-separated .txt, as Excel saves Unicode text: rename it .tsv\)$"):
        load_splits(str(tmp_path / "notes.txt"))


def test_out_of_scope_rows_and_file_are_set_apart(tmp_path):
    rows = GOOD + [("what is the weather", "out_of_scope"), ("tell me a joke", "out_of_scope")]
    write_csv(tmp_path / "train.csv", rows)
    write_csv(tmp_path / "valid.csv", [("a check", "a"), ("b check", "b"), ("sing a song", "out_of_scope")])
    write_csv(tmp_path / "test.csv", [("x", "a"), ("who won the match", "out_of_scope")])
    (tmp_path / "more_oos.txt").write_text("# comment\nbook a flight\n\nfind a restaurant\n")
    splits = load_splits(str(tmp_path), oos_file=str(tmp_path / "more_oos.txt"))
    assert splits.labels == ["a", "b"]  # out_of_scope is not an intent
    assert "out_of_scope" not in splits.train.labels + splits.validation.labels + splits.test.labels
    assert splits.out_of_scope.texts == ["what is the weather", "tell me a joke", "sing a song", "book a flight", "find a restaurant"]
    assert splits.out_of_scope.describe() == ("train.csv: 2 rows labelled 'out_of_scope'; valid.csv: 1 row labelled 'out_of_scope'; "
                                               "more_oos.txt: 2 queries")
    assert splits.out_of_scope.files == ["train.csv", "valid.csv", "more_oos.txt"]  # each row's file and line, to find it by
    assert splits.out_of_scope.lines == [len(GOOD) + 2, len(GOOD) + 3, 4, 2, 4]
    from bankintent.data import test_digest  # the test queries themselves, wherever their folder: what the report compares runs by

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for name in ("train.csv", "valid.csv", "test.csv"):
        (elsewhere / name).write_bytes((tmp_path / name).read_bytes())
    assert test_digest(load_splits(str(elsewhere))) == test_digest(splits) is not None
    write_csv(elsewhere / "test.csv", [("x", "a"), ("who won the cup", "out_of_scope")])
    assert test_digest(load_splits(str(elsewhere))) != test_digest(splits)
    assert splits.test_out_of_scope.texts == ["who won the match"] and splits.test.texts == ["x"]
    other = load_splits(str(tmp_path), oos_label="none")  # another name: out_of_scope is then an intent
    assert "out_of_scope" in other.labels and not other.out_of_scope.texts
    (tmp_path / "oos.csv").write_text("query\nbook a taxi\n")
    with pytest.raises(DataError, match=r"oos.csv: missing column 'text' \(columns: 'query'\); an out-of-scope file's queries are read "
                                        r"from the data's text column or from one named 'text': rename its column$"):
        load_splits(str(tmp_path), oos_file=str(tmp_path / "oos.csv"))  # it said --text-column, which renames the data's column too
    (tmp_path / "oos.csv").write_text("category,text\nout_of_scope\nout_of_scope,hello there\n")  # the column is there: the row's fault
    with pytest.raises(DataError, match=r"oos.csv: line 2: expected 2 fields, found 1$"):  # it said: missing column 'text'
        load_splits(str(tmp_path), oos_file=str(tmp_path / "oos.csv"))
    (tmp_path / "header.txt").write_text("text\nbook a flight\n")  # a column's name atop a .txt: it was read as a query
    assert load_splits(str(tmp_path), oos_file=str(tmp_path / "header.txt")).out_of_scope.texts[3:] == ["book a flight"]


def test_thin_validation_is_flagged():
    from bankintent.data import Examples, Splits, thin_validation

    def splits(per_intent):
        labels = [label for label in ("a", "b") for _ in range(per_intent)]
        return Splits(Examples(["t"] * 20, ["a", "b"] * 10), Examples(["v"] * len(labels), labels), None, ["a", "b"], "x")

    assert thin_validation(splits(5)) is None
    warning = thin_validation(splits(2))
    assert "2 of 2 intents have fewer than 5 validation queries ('a': 2; 4 queries in all)" in warning
    # 2 thin intents of 77 (Banking77's stratified 10%): nothing the user could do about, and no warning; 8 of 77 are
    many = [f"i{n}" for n in range(77)]
    for thin, warned in ((2, False), (7, False), (8, True)):
        labels = [label for n, label in enumerate(many) for _ in range(3 if n < thin else 10)]
        split = Splits(Examples(["t"] * 77, many), Examples(["v"] * len(labels), labels), None, many, "x")
        assert (thin_validation(split) is not None) == warned


def test_intents_with_far_fewer_training_queries_than_the_median_are_thin():
    """A new intent of 10 examples among intents of 40 is thin; Banking77's fewest (35 against a median
    of 127) and a file of 5 examples for every intent are not."""
    from bankintent.data import Examples, Splits, thin_intents, thin_intents_warning

    def splits(counts: dict[str, int]) -> Splits:
        labels = [label for label, count in counts.items() for _ in range(count)]
        return Splits(Examples(["t"] * len(labels), labels), Examples(["v"] * len(counts), list(counts)), None, list(counts), "x")

    new_intent = splits({"a": 40, "b": 40, "c": 45, "crypto": 10, "d": 19})
    assert thin_intents(new_intent) == {"crypto": 10, "d": 19}
    assert thin_intents_warning(new_intent).startswith(
        "2 intent(s) have far fewer training queries than the median intent (40): 'crypto': 10 (+1 held out for validation), "
        "'d': 19 (+1 held out for validation); the model recognises them less often")  # the file's count, not one less
    assert thin_intents(splits({"a": 127, "b": 130, "c": 35})) == {}  # not few: 20 or more
    assert thin_intents(splits({"a": 5, "b": 5, "c": 3})) == {}  # few everywhere: not half the median
    assert thin_intents_warning(splits({"a": 5, "b": 5})) is None


def test_thin_intents_training_queries_are_repeated_toward_the_median():
    """Up to ``thin_repeats`` copies in all, no more than the median's count allows; the notes keep the
    thin intents as the data had them. 1: nothing repeated."""
    from bankintent.data import Examples, Splits
    from bankintent.training import repeat_thin_intents

    def splits(counts: dict[str, int]) -> Splits:
        texts = [f"{label} {i}" for label, count in counts.items() for i in range(count)]
        labels = [label for label, count in counts.items() for _ in range(count)]
        return Splits(Examples(texts, labels), Examples(["v"] * len(counts), list(counts)), None, list(counts), "x")

    data = splits({"a": 40, "b": 40, "c": 45, "crypto": 9, "d": 19})
    repeat_thin_intents(data, 4)
    assert Counter(data.train.labels) == {"a": 40, "b": 40, "c": 45, "crypto": 36, "d": 38}  # x4, and x2 (40 // 19)
    assert data.notes["thin_intents"] == {"crypto": 9, "d": 19} and data.notes["thin_intents_repeated"] == {"crypto": 4, "d": 2}
    assert Counter(data.train.texts)["crypto 0"] == 4 and Counter(data.train.texts)["a 0"] == 1
    same = splits({"a": 40, "b": 40, "c": 45, "crypto": 9})
    repeat_thin_intents(same, 1)
    assert Counter(same.train.labels)["crypto"] == 9 and "thin_intents_repeated" not in same.notes


def test_labels_that_differ_only_in_case_or_separators_are_warned_about(tmp_path, caplog):
    rows = [(f"where is my card {i}", "card_arrival") for i in range(3)] + [(f"card still not here {i}", "CARD_ARRIVAL") for i in range(3)] \
        + [("hello", "out_of_scope")] \
        + [(f"my pin is blocked {i}", "pin_blocked") for i in range(3)] + [(f"tell me a joke {i}", "OOS") for i in range(2)]
    write_csv(tmp_path / "train.csv", rows)
    splits = load_splits(tmp_path)
    assert sorted(splits.labels) == ["CARD_ARRIVAL", "OOS", "card_arrival", "pin_blocked"]  # trained as given
    assert "labels 'CARD_ARRIVAL', 'card_arrival' differ only in case, accents or separators and train as 2 intents" in caplog.text
    assert ("label 'OOS' trains as an intent; rows of out-of-scope examples are labelled 'out_of_scope' "
            "(--oos-label OOS if these rows are out of scope)") in caplog.text
    from bankintent.data import label_warnings  # a label with a space is quoted, for the shell

    assert "(--oos-label 'Out of scope' if these rows are out of scope)" in label_warnings(["a", "Out of scope"], "out_of_scope")[0]
    spanish = label_warnings(["prestamo_solicitud", "préstamo_solicitud", "fuera_de_alcance"], "out_of_scope")
    assert spanish[0].startswith("labels 'prestamo_solicitud', 'préstamo_solicitud' differ only in case, accents or separators")
    assert spanish[1].startswith("label 'fuera_de_alcance' trains as an intent; rows of out-of-scope examples are labelled")
    with pytest.raises(DataError, match=r"train.csv: labels 'CARD_ARRIVAL', 'card_arrival' differ only in case.* \(strict_data refuses"):
        load_splits(tmp_path, strict_data=True)  # what --strict-data is for
    caplog.clear()
    (tmp_path / "good").mkdir()
    load_splits(_folder(tmp_path / "good", GOOD))
    assert "differ only in case" not in caplog.text and "spelt almost" not in caplog.text


def test_a_label_written_with_a_combining_accent_is_the_same_intent(tmp_path, caplog):
    """"virement_échoué" with é as one character (NFC) or as e and a combining accent (NFD, as some Mac and
    Excel tools write it) prints alike: it trained as two intents, and a test file in the other form
    stopped with "never seen in training (a typo for 'virement_échoué'?)"."""
    composed, decomposed = "virement_\u00e9chou\u00e9", "virement_e\u0301choue\u0301"
    rows = [(f"mon virement a échoué {i}", composed if i % 2 else decomposed) for i in range(6)] \
        + [(f"ma carte est bloquée {i}", "carte_bloquée") for i in range(6)]
    write_csv(tmp_path / "train.csv", rows)
    write_csv(tmp_path / "test.csv", [("le virement n'est pas passé", decomposed), ("carte bloquée", "carte_bloquée")])
    splits = load_splits(tmp_path)
    assert sorted(splits.labels) == ["carte_bloquée", composed] and splits.test.labels[0] == composed
    assert splits.train.labels.count(composed) + splits.validation.labels.count(composed) == 6
    assert "only in case" not in caplog.text


def test_intent_ids_written_as_floats_are_the_same_intents_and_numbers_are_warned_about(tmp_path, caplog):
    """Two exports of a Hugging Face dataset's ids, one with a missing value (pandas then writes 5.0):
    "5" and "5.0" trained as two intents, and a test file of ints stopped at "label '5' never seen"."""
    rows = [(f"auto top up {i}", "5" if i % 2 else "5.0") for i in range(6)] + [(f"card stolen {i}", "12.00") for i in range(6)]
    write_csv(tmp_path / "train.csv", rows)
    write_csv(tmp_path / "test.csv", [("top me up", "5"), ("stolen card", "12")])
    splits = load_splits(tmp_path)
    assert splits.labels == ["12", "5"] and splits.test.labels == ["5", "12"]
    assert "the intents are numbers (5, 12): answers, reports and the service give these numbers" in caplog.text
    assert read_examples(_written(tmp_path / "v.csv", [("a", "1.5"), ("b", "v2.0"), ("c", "-3.0")])).labels == ["1.5", "v2.0", "-3"]
    from bankintent.data import set_apart  # the out-of-scope label given is read as the file's labels are

    assert set_apart(read_examples(tmp_path / "train.csv"), "12.0")[1].texts[:1] == ["card stolen 0"]
    import pandas as pd  # an out-of-scope file's ids (a Parquet or JSONL file's numbers) are labels too: an intent's rows refused

    pd.DataFrame({"text": ["hello"], "category": [5]}).to_parquet(tmp_path / "oos.parquet")
    with pytest.raises(DataError, match=r"oos.parquet: row 1: labelled '5'; every row of an out-of-scope file is out of scope"):
        read_out_of_scope_file(tmp_path / "oos.parquet")
    caplog.clear()
    (tmp_path / "named").mkdir()
    load_splits(_folder(tmp_path / "named", GOOD))
    assert "are numbers" not in caplog.text


def test_a_folder_of_parquet_files_is_data_as_csv_files_are(tmp_path):
    """A Hugging Face dataset's or a data lake's Parquet files: ids as integers, a missing label as null."""
    import pandas as pd

    ids = [i % 2 for i in range(40)]
    pd.DataFrame({"text": [f"query {i}" for i in range(40)], "label": ids}).to_parquet(tmp_path / "train.parquet")
    pd.DataFrame({"text": ["one", "two", "three"], "label": [0.0, 1.0, None]}).to_parquet(tmp_path / "test.parquet")
    splits = load_splits(str(tmp_path), label_column="label")
    assert splits.labels == ["0", "1"] and len(splits.train) + len(splits.validation) == 40
    assert splits.test.texts == ["one", "two"] and splits.test.labels == ["0", "1"]  # null: skipped and counted
    assert splits.notes["test_file"].endswith("test.parquet")


def _written(path, rows):
    write_csv(path, rows)
    return path


def test_a_rare_label_spelt_almost_as_a_common_one_is_warned_about():
    """Two rows of a typo train an eleventh intent: one row alone stops training with a hint; more than one
    is named too. Intents named alike that are each common (Banking77's closest pair) are not."""
    from bankintent.data import label_warnings

    labels = ["policy_renewal"] * 16 + ["polcy_renewal"] * 2 + ["claim_status"] * 12 + ["out_of_scope"] * 30 + ["out_of_scop"] * 2
    assert label_warnings(labels, "out_of_scope") == [
        "label 'out_of_scop' (2 rows) is spelt almost as 'out_of_scope' (30 rows) and trains as an intent of its own; "
        "relabel its rows 'out_of_scope' if it is a typo",
        "label 'polcy_renewal' (2 rows) is spelt almost as 'policy_renewal' (16 rows) and trains as an intent of its own; "
        "relabel its rows 'policy_renewal' if it is a typo"]
    assert label_warnings(["get_physical_card"] * 20 + ["order_physical_card"] * 20 + ["lost_card"] * 12, None) == []
    # two letters swapped in a short label: difflib's ratio (0.89) is below the cutoff, and it trained silently beside a valid.csv
    assert label_warnings(["lost_card"] * 8 + ["lost_crad"] + ["open_isa"] * 8, None) == [
        "label 'lost_crad' (1 row) is spelt almost as 'lost_card' (8 rows) and trains as an intent of its own; relabel its rows "
        "'lost_card' if it is a typo"]
    # a new intent written two ways over its few rows: neither is four times the other, both are thin (it was silent)
    assert label_warnings(["get_physical_card"] * 20 + ["order_physical_card"] * 20 + ["lost_card"] * 2 + ["lost_cards"] * 3, None) == [
        "labels 'lost_card' (2 rows) and 'lost_cards' (3 rows) are spelt almost alike, both thin, and train as 2 intents; write them "
        "alike if they are one"]


def test_shots_say_which_intents_have_fewer_examples_than_asked(tmp_path, caplog):
    write_csv(tmp_path / "train.csv", [(f"card query {i}", "card") for i in range(8)] + [(f"pin query {i}", "pin") for i in range(3)])
    splits = load_splits(tmp_path, shots=5)
    assert Counter(splits.train.labels + splits.validation.labels) == {"card": 5, "pin": 3}
    assert "shots: 1 intent(s) have fewer than 5 examples and keep all they have ('pin': 3)" in caplog.text


def test_a_header_written_otherwise_but_for_case_and_spaces_is_read(tmp_path):
    folder = tmp_path / "sheet"
    folder.mkdir()
    rows = "".join(f"{text},{label},\r\n" for text, label in GOOD)
    (folder / "train.csv").write_text("\ufeffText, Category ,\r\n" + rows, newline="")  # as a spreadsheet saves it
    splits = load_splits(str(folder))
    assert sorted(splits.labels) == sorted({label for _, label in GOOD}) and len(splits.train) + len(splits.validation) == len(GOOD)
    (folder / "train.csv").write_text("text,Text,label\nhello,hi,a\n")  # two candidates, no category: nothing is guessed
    with pytest.raises(DataError, match=r"missing column 'category' \(columns: 'text', 'Text', 'label'\)"):
        load_splits(str(folder))
    (folder / "train.csv").unlink()
    import pandas as pd

    frame = pd.DataFrame(GOOD, columns=["Text", " Category "])  # the same header written by pandas: as it was read, not refused
    frame.to_json(folder / "train.jsonl", orient="records", lines=True)
    jsonl = load_splits(str(folder))
    assert sorted(jsonl.labels) == sorted(splits.labels) and len(jsonl.train) + len(jsonl.validation) == len(GOOD)
    (folder / "train.jsonl").unlink()
    frame.to_parquet(folder / "train.parquet", index=False)
    parquet = load_splits(str(folder))
    assert sorted(parquet.train.texts + parquet.validation.texts) == sorted(text for text, _ in GOOD)


def test_an_out_of_scope_file_with_intent_labels_is_refused(tmp_path):
    oos = tmp_path / "oos.csv"
    oos.write_text("text,category\nwhat is the weather,out_of_scope\ntell me a joke,OOS\nmy card has not arrived,card_arrival\n")
    with pytest.raises(DataError, match=r"oos.csv: line 4: labelled 'card_arrival'; every row of an out-of-scope file is out of scope"):
        load_splits(_folder(tmp_path, GOOD), oos_file=str(oos))
    oos.write_text("text,category\nwhat is the weather,out_of_scope\ntell me a joke,OOS\n")
    assert len(load_splits(str(tmp_path), oos_file=str(oos)).out_of_scope) == 2


def test_an_out_of_scope_file_is_read_from_its_text_column_where_it_lacks_the_data_s(tmp_path):
    """The data's queries are in 'utterance'; the out-of-scope file, collected apart, says 'text'."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.csv").write_text("utterance,intent\n" + "".join(f"{t},{label}\n" for t, label in GOOD))
    oos = tmp_path / "oos.csv"
    oos.write_text("text\nwhat is the weather\ntell me a joke\n")
    splits = load_splits(str(data), text_column="utterance", label_column="intent", oos_file=str(oos))
    assert splits.out_of_scope.texts == ["what is the weather", "tell me a joke"]
    oos.write_text("query\nwhat is the weather\n")  # neither column: the error names the data's
    with pytest.raises(DataError, match=r"oos.csv: missing column 'utterance' \(or 'text'\) \(columns: 'query'\)"):
        load_splits(str(data), text_column="utterance", label_column="intent", oos_file=str(oos))
