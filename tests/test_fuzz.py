"""Any bytes given to the CSV / JSONL / TXT readers either load or raise the project's own DataError."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bankintent.data import iter_queries, read_examples
from bankintent.errors import DataError

SUFFIXES = [".csv", ".jsonl", ".txt"]

csv_like = st.lists(
    st.tuples(st.text(max_size=30), st.sampled_from(["a", "b", "", " ", '"', "a,b", "\n"])), max_size=8
).map(lambda rows: "text,category\n" + "\n".join(f"{t},{c}" for t, c in rows))
jsonl_like = st.lists(
    st.one_of(st.just('{"text": "hi", "category": "a"}'), st.just("[1, 2]"), st.just('{"text": null}'),
              st.just("{" * 50), st.text(max_size=40)), max_size=8
).map("\n".join)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.one_of(st.binary(max_size=200), csv_like.map(str.encode), jsonl_like.map(str.encode)),
       suffix=st.sampled_from(SUFFIXES))
def test_readers_load_or_raise_data_error(tmp_path, payload, suffix):
    path = tmp_path / f"input{suffix}"
    path.write_bytes(payload)
    try:
        examples = read_examples(path) if suffix != ".txt" else None
    except DataError as exc:
        assert "\n" not in str(exc) and str(path) in str(exc)
    else:
        if examples is not None:
            assert len(examples.texts) == len(examples.labels) == len(examples.rows) > 0
            assert all(t.strip() == t and t for t in examples.texts)
    try:
        queries = list(iter_queries(path))
    except DataError as exc:
        assert "\n" not in str(exc) and str(path) in str(exc)
    else:
        assert all(text.strip() for _, text in queries)


@pytest.mark.parametrize("payload, message", [
    (b"text,category\n\"unterminated,a\n", None),
    (b"\xff\xfe" + "text,category\nhi,a\n".encode("utf-16-le"), None),  # UTF-16 with its mark reads
    (b"text,category\nhi \x81\x8d,a\n", "not valid UTF-8"),
    (b"text,category\nhi,a\n\x00\x00,b\n", None),
])
def test_awkward_files(tmp_path, payload, message):
    path = tmp_path / "train.csv"
    path.write_bytes(payload)
    try:
        read_examples(path)
    except DataError as exc:
        assert message is None or message in str(exc)
    else:
        assert message is None
