"""seqpool.io.readers: one reader per format; records with lines and labels; strict CSV,
literal-quote TSV, JSON arrays, streams read exactly once, errors that name file and line."""

from __future__ import annotations

import csv
import io
import json
import os
import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seqpool.errors import SeqpoolError
from seqpool.io import Record, TextSource, is_stream

TEXT_CHARS = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def records(path, **kwargs):
    return list(TextSource.open(path, **kwargs).records())


def write_csv(path, rows, delimiter=","):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle, delimiter=delimiter).writerows(rows)
    return path


# -- records and labels -------------------------------------------------------------------------


def test_records_carry_lines_and_labels_in_every_format(tmp_path):
    rows = [{"text": "a", "label": "pos"}, {"text": "b\nc", "label": "neg"}]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (tmp_path / "c.json").write_text(json.dumps(rows, indent=1), encoding="utf-8")
    write_csv(tmp_path / "c.csv", [["text", "label"]] + [[r["text"], r["label"]] for r in rows])
    pq.write_table(pa.table({"text": ["a", "b\nc"], "label": ["pos", "neg"]}), tmp_path / "c.parquet")
    expected_lines = {"jsonl": [1, 2], "json": [2, 6], "csv": [2, 3], "parquet": [1, 2]}
    for fmt, lines in expected_lines.items():
        got = records(tmp_path / f"c.{fmt}", label_field="label")
        assert got == [Record(lines[0], "a", "pos"), Record(lines[1], "b\nc", "neg")], fmt
        assert [r.label for r in records(tmp_path / f"c.{fmt}")] == [None, None]


def test_txt_records_are_numbered_lines(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("x\n\ny\n", encoding="utf-8")
    assert records(path) == [Record(1, "x"), Record(2, ""), Record(3, "y")]


def test_a_missing_label_names_file_and_line(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "a", "y": 1}\n\n{"text": "b"}\n', encoding="utf-8")
    with pytest.raises(SeqpoolError, match=r"c\.jsonl, line 3: no label field 'y'"):
        records(path, label_field="y")
    write_csv(tmp_path / "c.csv", [["text"], ["a"]])
    with pytest.raises(SeqpoolError, match=r"c\.csv: no label column 'y' in the header"):
        records(tmp_path / "c.csv", label_field="y")


def test_fields_for_txt_input_are_an_error_not_ignored(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("a\n", encoding="utf-8")
    with pytest.raises(SeqpoolError, match=r"text_field='body' needs a structured input"):
        TextSource.open(path, text_field="body")
    with pytest.raises(SeqpoolError, match=r"label_field='y' needs a structured input"):
        TextSource.open("-", label_field="y")
    assert TextSource.open(path, input_format="txt").text_field == "text"


# -- JSON -----------------------------------------------------------------------------------------


def test_json_array_errors_name_the_line(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('[\n {"text": "a"},\n {"body": "b"}\n]\n', encoding="utf-8")
    with pytest.raises(SeqpoolError, match=r"c\.json, line 3: no field 'text'"):
        records(path)
    path.write_text('[\n {"text": "a"},\n {"text": "b"\n', encoding="utf-8")
    with pytest.raises(SeqpoolError, match=r"c\.json, line \d: not valid JSON"):
        records(path)
    path.write_text('[]', encoding="utf-8")
    assert records(path) == []
    path.write_text('{"text": "a\u2028b"}\n\n{"text": "c"}\n', encoding="utf-8")  # JSON lines in a .json file
    assert [(r.line, r.text) for r in records(path)] == [(1, "a\u2028b"), (3, "c")]


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_lone_surrogates_and_deep_nesting_are_one_line_errors(tmp_path, suffix):
    path = tmp_path / f"c{suffix}"
    path.write_text('{"text": "ok"}\n{"text": "bad \\ud800 escape"}\n', encoding="utf-8")
    with pytest.raises(SeqpoolError, match=r"line 2: field 'text' holds an invalid Unicode escape .*\\ud800"):
        records(path)
    path.write_text('{"text": "ok"}\n' + "[" * 100_000 + "]" * 100_000 + "\n", encoding="utf-8")
    with pytest.raises(SeqpoolError, match=r"line 2: JSON nested too deeply") as caught:
        records(path)
    assert "\n" not in str(caught.value)


# -- CSV: RFC 4180, strictly --------------------------------------------------------------------


@FUZZ
@given(st.lists(st.text(alphabet=TEXT_CHARS, max_size=20), max_size=25))
def test_any_csv_written_by_python_reads_back_exactly(tmp_path_factory, texts):
    path = write_csv(tmp_path_factory.mktemp("c") / "c.csv", [["id", "text"], *([i, t] for i, t in enumerate(texts))])
    assert [r.text for r in records(path)] == texts


@FUZZ
@given(st.lists(st.text(alphabet=TEXT_CHARS, max_size=20), min_size=1, max_size=25), st.data())
def test_a_csv_quote_left_open_is_an_error_never_fewer_rows(tmp_path_factory, texts, data):
    buffer = io.StringIO()
    writer = csv.writer(buffer, quoting=csv.QUOTE_ALL)
    writer.writerow(["id", "text"])
    encoded = []
    for i, text in enumerate(texts):
        encoded.append(f'"{i}",' + '"' + text.replace('"', '""') + '"\r\n')
    broken = data.draw(st.integers(0, len(texts) - 1))
    encoded[broken] = encoded[broken][:-3] + "\r\n"  # drop the closing quote of one text
    path = tmp_path_factory.mktemp("c") / "c.csv"
    path.write_text(buffer.getvalue() + "".join(encoded), encoding="utf-8", newline="")
    with pytest.raises(SeqpoolError, match=rf"c\.csv, line \d+: "):
        records(path)


def test_csv_field_count_and_stray_quotes_are_errors_naming_the_line(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text('id,text\n1,fine\n2,too,many\n', encoding="utf-8")
    with pytest.raises(SeqpoolError, match=r"line 3: 3 fields, but the header has 2"):
        records(path)
    path.write_text('id,text\n1,"quoted" then text\n', encoding="utf-8")
    with pytest.raises(SeqpoolError, match=r"line 2: malformed CSV"):
        records(path)
    path.write_text('id,text\n1,"never closed\n2,b\n3,c\n', encoding="utf-8")
    with pytest.raises(SeqpoolError, match=r"line 2: a quoted field opened here never closes"):
        records(path)


def test_csv_reads_texts_that_look_like_numbers_or_missing_values(tmp_path):
    write_csv(tmp_path / "c.csv", [["text", "label"], ["N/A", "1"], ["42", "0"], ["", "1"], ["nan", "0"]])
    assert [(r.text, r.label) for r in records(tmp_path / "c.csv", label_field="label")] == [
        ("N/A", "1"), ("42", "0"), ("", "1"), ("nan", "0")]


# -- TSV: literal quotes --------------------------------------------------------------------------


@FUZZ
@given(st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\t\n\r\x00"),
                        max_size=20).filter(lambda t: not t.startswith('"')), max_size=25))
def test_any_tab_joined_tsv_reads_back_exactly(tmp_path_factory, texts):
    path = tmp_path_factory.mktemp("t") / "c.tsv"
    path.write_text("id\ttext\n" + "".join(f"{i}\t{t}\n" for i, t in enumerate(texts)), encoding="utf-8")
    assert [r.text for r in records(path)] == texts
    single = path.with_name("single.tsv")  # one column: an empty line is an empty text, as in txt
    single.write_text("text\n" + "".join(f"{t}\n" for t in texts), encoding="utf-8")
    assert [r.text for r in records(single)] == texts


@FUZZ
@given(st.lists(st.text(alphabet=TEXT_CHARS, max_size=20).filter(lambda t: not ("\t" in t and "\n" in t)),
                max_size=25))
def test_any_tsv_written_by_a_csv_writer_reads_back_exactly(tmp_path_factory, texts):
    """Except a text with both a newline and a tab: a quote spanning lines over a tab is refused
    as ambiguous (it is what a stray quote swallowing the next records looks like)."""
    rows = [["id", "text"], *([i, t] for i, t in enumerate(texts))]
    path = write_csv(tmp_path_factory.mktemp("t") / "c.tsv", rows, delimiter="\t")
    assert [r.text for r in records(path)] == texts


def test_tsv_quotes_are_text(tmp_path):
    path = tmp_path / "c.tsv"
    path.write_text('id\ttext\n1\t"Great" movie\n2\tsay "hi"\n3\t"quoted"\n4\t"a ""b"""\n', encoding="utf-8")
    assert [r.text for r in records(path)] == ['"Great" movie', 'say "hi"', "quoted", 'a "b"']


def test_tsv_quote_that_never_closes_is_an_error_not_swallowed_rows(tmp_path):
    path = tmp_path / "c.tsv"
    path.write_text('id\ttext\n1\t"opens here\n2\tb\n3\tc\n', encoding="utf-8")
    with pytest.raises(SeqpoolError, match=r"c\.tsv, line 2: a field starts with a quote"):
        records(path)
    path.write_text('text\n"opens here\nb\nc"\n', encoding="utf-8")  # closes properly: one quoted text
    assert [r.text for r in records(path)] == ["opens here\nb\nc"]
    path.write_text('id\ttext\n1\t"a\n2\tb"\n', encoding="utf-8")  # a tab inside a multi-line quote: ambiguous
    with pytest.raises(SeqpoolError, match=r"line 2: a field starts with a quote"):
        records(path)
    path.write_text('id\ttext\n1\ta\n2\tb\tc\n', encoding="utf-8")
    with pytest.raises(SeqpoolError, match=r"line 3: 3 fields, but the header has 2"):
        records(path)


# -- parquet ---------------------------------------------------------------------------------------


def test_parquet_dictionary_and_large_string_columns(tmp_path):
    texts = ["a", "b", "a", None]
    table = pa.table({"cat": pa.array(texts).dictionary_encode(), "big": pa.array(texts, pa.large_string()),
                      "label": [1, 0, 1, 0]})
    pq.write_table(table, tmp_path / "c.parquet")
    for column in ("cat", "big"):
        got = records(tmp_path / "c.parquet", text_field=column, label_field="label")
        assert [(r.line, r.text, r.label) for r in got] == [(1, "a", 1), (2, "b", 0), (3, "a", 1), (4, "", 0)]
    with pytest.raises(SeqpoolError, match="no label column 'y'"):
        TextSource.open(tmp_path / "c.parquet", text_field="cat", label_field="y")


# -- streams: read once ----------------------------------------------------------------------------


def feed(write_end: int, data: bytes) -> threading.Thread:
    def run():
        with os.fdopen(write_end, "wb") as handle:
            handle.write(data)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("kind", ["pipe", "fifo"])
def test_a_pipe_or_fifo_is_read_once_with_every_row(tmp_path, kind):
    lines = [f"line {i}" for i in range(2000)] + [""]
    data = "".join(line + "\n" for line in lines).encode()
    if kind == "pipe":  # what bash's <(cat corpus.txt) passes: /dev/fd/N
        read_end, write_end = os.pipe()
        path = f"/dev/fd/{read_end}"
        thread = feed(write_end, data)
    else:
        path = tmp_path / "fifo"
        os.mkfifo(path)
        thread = threading.Thread(target=lambda: path.write_bytes(data), daemon=True)
        thread.start()
    source = TextSource.open(path)
    assert source.is_stream and is_stream(path)
    with pytest.raises(SeqpoolError, match="can be read only once"):
        source.count()
    assert list(source.texts()) == lines
    thread.join(5)
    if kind == "pipe":
        os.close(read_end)


def test_regular_files_are_not_streams(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("a\n", encoding="utf-8")
    assert not is_stream(path) and is_stream("-") and is_stream("/dev/null")
    with pytest.raises(SeqpoolError, match="parquet cannot be read from the stream"):
        TextSource.open("/dev/null", input_format="parquet")


def test_tsv_quoted_line_breaks_are_kept_as_written(tmp_path):
    """A quoted TSV field spanning lines keeps each break (\\r\\n or \\n) as the writer wrote it."""
    path = tmp_path / "c.tsv"
    path.write_bytes(b'id\ttext\r\n0\t"a\r\nb\nc"\r\n1\tplain\r\n')
    assert [r.text for r in records(path)] == ["a\r\nb\nc", "plain"]
