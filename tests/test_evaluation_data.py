"""Labelled data for seqpool.evaluate: the shared reader (stdin, line numbers, CSV texts as
text) and labels that would make scores silently wrong (issue 13, class 1 and 5)."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings, strategies as st

from seqpool.cli import main
from seqpool.errors import SeqpoolError
from seqpool.evaluation import (LabelledTexts, check_cv_data, check_train_test, clean_label, labelled_texts,
                                load_labelled)


def jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.mark.parametrize(("label", "message"), [
    ("null", "line 3: the label is missing"),
    ("NaN", "line 3: the label is nan"),
    ('""', "line 3: the label is empty"),
    ("0.5", "line 3: the label 0.5 is not a whole number"),
    ("1.5", "line 3: the label 1.5 is not a whole number"),
    ("[1]", "line 3: the label [1] is list"),
])
def test_bad_labels_name_file_and_line(tmp_path, label, message):
    path = jsonl(tmp_path / "d.jsonl", ['{"text": "a", "label": 0}', '{"text": "b", "label": 1}',
                                        f'{{"text": "c", "label": {label}}}'])
    with pytest.raises(SeqpoolError, match="d.jsonl") as error:
        load_labelled(path)
    assert message in str(error.value)


def test_whole_floats_are_integer_labels_and_csv_numbers_are_numbers(tmp_path):
    path = jsonl(tmp_path / "d.jsonl", ['{"text": "a", "label": 1.0}', '{"text": "b", "label": 0.0}'])
    data = load_labelled(path)
    assert data.label_names == [0, 1] and all(type(n) is int for n in data.label_names)
    assert data.labels.tolist() == [1, 0]
    (tmp_path / "d.csv").write_text("text,label\nx,1\ny,0.0\nz,1\n", encoding="utf-8")
    assert load_labelled(tmp_path / "d.csv").label_names == [0, 1]
    (tmp_path / "e.csv").write_text("text,label\nx,1\ny,0.5\n", encoding="utf-8")
    with pytest.raises(SeqpoolError, match=r"e.csv, line 3: the label '?0.5'? is not a whole number"):
        load_labelled(tmp_path / "e.csv")


def test_csv_texts_like_na_and_digits_stay_text_as_embed_reads_them(tmp_path):
    (tmp_path / "d.csv").write_text("text,label\nN/A,pos\n123,neg\nnan,pos\nNULL,neg\n", encoding="utf-8")
    data = load_labelled(tmp_path / "d.csv")
    assert data.texts == ["N/A", "123", "nan", "NULL"]
    assert data.label_names == ["neg", "pos"] and data.labels.tolist() == [1, 0, 1, 0]


def test_mixed_label_kinds_are_refused_with_the_line(tmp_path):
    path = jsonl(tmp_path / "d.jsonl", ['{"text": "a", "label": 1}', '', '{"text": "b", "label": "x"}'])
    with pytest.raises(SeqpoolError, match="d.jsonl, line 3: the label 'x' is a string"):
        load_labelled(path)


def test_jsonl_errors_carry_the_line_number(tmp_path):
    path = jsonl(tmp_path / "d.jsonl", ['{"text": "a", "label": 1}', '', '{"text": "b", "label": 0', '{}'])
    with pytest.raises(SeqpoolError, match=r"d.jsonl, line 3: not valid JSON"):
        load_labelled(path)
    path = jsonl(tmp_path / "e.jsonl", ['{"text": "a", "label": 1}', '{"text": "b", "y": 0}'])
    with pytest.raises(SeqpoolError, match=r"e.jsonl, line 2: no label column 'label'"):
        load_labelled(path)


def test_stdin_is_read_with_an_input_format(monkeypatch):
    rows = "".join(json.dumps({"text": f"t{i}", "label": i % 2}) + "\n" for i in range(6))
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(rows.encode())))
    data = load_labelled("-", input_format="jsonl")
    assert data.source == "stdin" and data.texts[5] == "t5" and data.lines == list(range(1, 7))
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(rows.encode())))
    with pytest.raises(SeqpoolError, match="input_format"):
        load_labelled("-")  # stdin defaults to txt, which has no labels


def test_cli_reads_train_from_stdin(tiny_bert_dir):
    rows = "".join(json.dumps({"text": f"{'good' if i % 2 else 'bad'} film {i}", "label": i % 2}) + "\n"
                   for i in range(12))
    result = CliRunner().invoke(main, ["evaluate", "--train", "-", "--input-format", "jsonl", "--strategies", "mean",
                                       "--folds", "3", "--model", str(tiny_bert_dir), "--no-cache", "--threads", "1",
                                       "--quiet"], input=rows)
    assert result.exit_code == 0, result.output
    assert "stdin (12 texts, 2 classes)" in result.output


def labelled(train_labels: list, test_labels: list) -> tuple[LabelledTexts, LabelledTexts]:
    train = labelled_texts(["t"] * len(train_labels), train_labels, "train.jsonl",
                           lines=list(range(1, len(train_labels) + 1)))
    test = labelled_texts(["t"] * len(test_labels), test_labels, "test.jsonl", train.label_names,
                          lines=list(range(1, len(test_labels) + 1)))
    return train, test


def test_test_labels_never_seen_in_training_are_an_error():
    train, test = labelled(["a", "b"] * 3, ["a", "b", "c", "b", "c"])
    with pytest.raises(SeqpoolError, match=r"test.jsonl: 2 of 5 test rows have labels never seen in train.jsonl "
                                           r"\('c'; first at line 3\)"):
        check_train_test(train, test)
    check_train_test(*labelled(["a", "b"] * 3, ["b", "a"]))  # all seen: fine


def test_cli_says_unseen_test_labels(tmp_path, tiny_bert_dir):
    train = jsonl(tmp_path / "train.jsonl", [json.dumps({"text": "a", "label": i % 2}) for i in range(6)])
    test = jsonl(tmp_path / "test.jsonl", [json.dumps({"text": "a", "label": i % 3}) for i in range(6)])
    result = CliRunner().invoke(main, ["evaluate", "--train", str(train), "--test", str(test), "--model",
                                       str(tiny_bert_dir), "--no-cache"])
    assert result.exit_code == 1 and "never seen in" in result.output and "first at line 3" in result.output


@settings(max_examples=60, deadline=None)
@given(counts=st.lists(st.integers(1, 12), min_size=2, max_size=4), folds=st.integers(2, 12))
def test_cv_advice_is_always_true(counts, folds):
    """Whatever check_cv_data advises ('lower folds to k') works; it never advises a k that fails."""
    labels = np.repeat(np.arange(len(counts)), counts)
    data = LabelledTexts(["t"] * len(labels), labels, list(range(len(counts))), "d.jsonl")
    try:
        check_cv_data(data, folds)
    except SeqpoolError as error:
        message = str(error)
        assert "--" not in message  # the library names parameters, not flags
        if "lower folds to" in message:
            k = int(message.split("lower folds to ")[1].split()[0])
            assert 2 <= k < folds
            check_cv_data(data, k)  # the advice works
        else:
            assert min(counts) == 1 and "single example" in message and "add examples" in message
    else:
        assert min(counts) >= folds


def test_two_fold_cv_with_a_singleton_class_does_not_advise_two_folds(tmp_path, tiny_bert_dir):
    rows = [json.dumps({"text": "a", "label": "x"})] * 5 + [json.dumps({"text": "b", "label": "y"})]
    path = jsonl(tmp_path / "d.jsonl", rows)
    result = CliRunner().invoke(main, ["evaluate", "--train", str(path), "--folds", "2", "--model",
                                       str(tiny_bert_dir), "--no-cache"])
    assert result.exit_code == 1
    assert "lower --folds" not in result.output and "single example (at line 6)" in result.output


def test_clean_label_keeps_strings_from_typed_formats():
    assert clean_label("1", "w") == "1" and clean_label("1", "w", from_text=True) == 1
    assert clean_label("N/A", "w", from_text=True) == "N/A"
    with pytest.raises(SeqpoolError, match="w: the label is nan"):
        clean_label("nan", "w", from_text=True)


def test_hub_class_labels_outside_the_names_are_refused():
    """GLUE-style test splits carry -1 ('no label'); int2str would fail with a traceback."""
    import datasets

    from seqpool.evaluation.data import _hub_columns

    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["neg", "pos"])})
    table = datasets.Dataset.from_dict({"text": ["a", "b", "c"], "label": [1, 0, -1]}, features=features)
    with pytest.raises(SeqpoolError, match="glue row 3: label -1 is not one of its 2 classes"):
        _hub_columns(table, "text", "label", "glue")
    texts, labels = _hub_columns(table.select([0, 1]), "text", "label", "glue")
    assert labels == ["pos", "neg"] and texts == ["a", "b"]
