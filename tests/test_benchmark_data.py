"""``load_benchmark``: MR and TREC from local SentEval files or, by name, from the Hugging Face Hub.

The Hub is stood in for by a fake ``datasets.load_dataset`` that serves rows the way the Hub's
copies lay them out (rotten_tomatoes: 80/10/10 splits, each listing positives before negatives;
CogComp/trec: ``coarse_label`` as a ClassLabel in its own class order), so the tests check that
both sources give the same rows, order and class indices, and run without a network.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from seqpool.errors import SeqpoolError
from seqpool.evaluation import benchmarks, load_benchmark

REPO = Path(__file__).resolve().parents[1]
TREC_HUB_CLASSES = ["ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM"]  # CogComp/trec's ClassLabel order
TREC_SENTEVAL_CLASSES = ["DESC", "ENTY", "ABBR", "HUM", "LOC", "NUM"]  # the class indices of SentEval's files

NEGATIVE = [f"a dull film number {i} ." for i in range(10)]
POSITIVE = [f"a fine film number {i} ." for i in range(10)]
TREC_TRAIN = [("How did serfdom develop ?", "DESC"), ("What films featured Popeye Doyle ?", "ENTY"),
              ("What is the full form of .com ?", "ABBR"), ("Who killed Gandhi ?", "HUM"),
              ("Where is Belize ?", "LOC"), ("How far is it to the moon ?", "NUM"), ("What is a cat ?", "DESC")]
TREC_TEST = [("How many people live in Chile ?", "NUM"), ("What is AIDS short for ?", "ABBR")]


def write_jsonl(path: Path, rows: list[tuple[str, object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": text, "label": label}) + "\n" for text, label in rows),
                    encoding="utf-8")


def senteval_folder(folder: Path) -> Path:
    """SentEval's layout: MR's negatives then positives (0/1); TREC with its class indices."""
    write_jsonl(folder / "mr.jsonl", [(t, 0) for t in NEGATIVE] + [(t, 1) for t in POSITIVE])
    for name, rows in (("trec.train.jsonl", TREC_TRAIN), ("trec.test.jsonl", TREC_TEST)):
        write_jsonl(folder / name, [(text, TREC_SENTEVAL_CLASSES.index(kind)) for text, kind in rows])
    return folder


def hub_tables() -> dict[str, dict[str, object]]:
    """The Hub's copies, laid out as its loaders made them."""
    from datasets import ClassLabel, Dataset, Features, Value

    def mr_split(start: int, end: int) -> Dataset:
        return Dataset.from_dict({"text": POSITIVE[start:end] + NEGATIVE[start:end],
                                  "label": [1] * (end - start) + [0] * (end - start)},
                                 features=Features({"text": Value("string"), "label": ClassLabel(names=["neg", "pos"])}))

    def trec_split(rows: list[tuple[str, str]]) -> Dataset:
        return Dataset.from_dict({"text": [text for text, _ in rows],
                                  "coarse_label": [TREC_HUB_CLASSES.index(kind) for _, kind in rows],
                                  "fine_label": [0] * len(rows)},
                                 features=Features({"text": Value("string"),
                                                    "coarse_label": ClassLabel(names=TREC_HUB_CLASSES),
                                                    "fine_label": Value("int64")}))

    return {"cornell-movie-review-data/rotten_tomatoes": {"train": mr_split(0, 8), "validation": mr_split(8, 9),
                                                          "test": mr_split(9, 10)},
            "CogComp/trec": {"train": trec_split(TREC_TRAIN), "test": trec_split(TREC_TEST)}}


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A fake Hub: records each ``load_dataset`` call; its host answers; no local SentEval folder,
    no SEQPOOL_DATA, online."""
    import datasets

    tables, calls = hub_tables(), []

    def load_dataset(name, split=None, **kwargs):
        calls.append((name, split))
        if name not in tables:
            raise FileNotFoundError(f"Dataset '{name}' doesn't exist on the Hub")
        return datasets.concatenate_datasets([tables[name][part] for part in split.split("+")])

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.setattr(benchmarks, "hub_reachable", lambda: True)
    monkeypatch.setattr(benchmarks, "_folders_beside_repository", lambda: [tmp_path / "no-such-folder"])
    for variable in ("SEQPOOL_DATA", "HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(variable, raising=False)
    return calls


def same_data(a, b) -> None:
    assert a.texts == b.texts
    assert a.labels.tolist() == b.labels.tolist()
    assert a.label_names == b.label_names


def test_mr_from_the_hub_matches_the_senteval_file(hub, tmp_path):
    local = load_benchmark("mr", data_dir=senteval_folder(tmp_path / "senteval"))
    remote = load_benchmark("mr")
    assert hub == [("cornell-movie-review-data/rotten_tomatoes", "train+validation+test")]
    same_data(remote, local)  # SentEval's order: every negative, then every positive
    assert remote.label_names == ["negative", "positive"] and remote.labels.tolist() == [0] * 10 + [1] * 10
    assert remote.source == "cornell-movie-review-data/rotten_tomatoes (Hugging Face Hub, split train+validation+test)"
    assert local.source == str(tmp_path / "senteval" / "mr.jsonl")


@pytest.mark.parametrize("split, rows", [("train", TREC_TRAIN), ("test", TREC_TEST)])
def test_trec_from_the_hub_uses_the_coarse_types_in_senteval_class_order(hub, tmp_path, split, rows):
    local = load_benchmark("trec", split, data_dir=senteval_folder(tmp_path / "senteval"))
    remote = load_benchmark("trec", split)
    assert hub == [("CogComp/trec", split)]
    same_data(remote, local)
    assert remote.label_names == TREC_SENTEVAL_CLASSES
    assert [remote.label_names[i] for i in remote.labels] == [kind for _, kind in rows]


def test_trec_defaults_to_its_train_split(hub):
    assert load_benchmark("trec").texts == [text for text, _ in TREC_TRAIN]


def test_the_hub_comes_before_local_files_beside_the_repository(hub, monkeypatch, tmp_path):
    folder = senteval_folder(tmp_path / "shared" / "data" / "senteval")
    monkeypatch.setattr(benchmarks, "_folders_beside_repository", lambda: [tmp_path / "elsewhere", folder])
    assert load_benchmark("mr").source.startswith("cornell-movie-review-data/rotten_tomatoes (Hugging Face Hub")
    assert hub == [("cornell-movie-review-data/rotten_tomatoes", "train+validation+test")]


@pytest.mark.parametrize("why", ["host does not answer", "HF_DATASETS_OFFLINE", "the Hub fails"])
def test_local_files_beside_the_repository_are_the_offline_path(hub, monkeypatch, tmp_path, why):
    import datasets

    folder = senteval_folder(tmp_path / "shared" / "data" / "senteval")
    monkeypatch.setattr(benchmarks, "_folders_beside_repository", lambda: [tmp_path / "elsewhere", folder])
    if why == "host does not answer":
        monkeypatch.setattr(benchmarks, "hub_reachable", lambda: False)
    elif why == "HF_DATASETS_OFFLINE":
        monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    else:
        monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: (_ for _ in ()).throw(ConnectionError("down")))
    data = load_benchmark("mr")
    assert data.source == str(folder / "mr.jsonl")
    assert hub == []


def test_hub_reachable_is_one_quick_connection(monkeypatch):
    import socket

    attempts = []

    def refuse(address, timeout=None):
        attempts.append((address, timeout))
        raise OSError("no route")

    monkeypatch.setattr(socket, "create_connection", refuse)
    for variable in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.example.org:8443")
    assert benchmarks.hub_reachable(timeout=0.5) is False
    assert attempts == [(("hub.example.org", 8443), 0.5)]
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy:3128")  # only the proxy can tell: try the Hub
    assert benchmarks.hub_reachable() is True and len(attempts) == 1


def test_seqpool_data_names_the_folder_and_nothing_else_is_tried(hub, monkeypatch, tmp_path):
    monkeypatch.setenv("SEQPOOL_DATA", str(senteval_folder(tmp_path / "mine")))
    assert load_benchmark("trec", "test").source == str(tmp_path / "mine" / "trec.test.jsonl")
    monkeypatch.setenv("SEQPOOL_DATA", str(tmp_path / "empty"))
    with pytest.raises(SeqpoolError, match=r"SEQPOOL_DATA names .*empty, which has no trec\.test\.jsonl"):
        load_benchmark("trec", "test")
    assert hub == []


def test_data_dir_wins_over_seqpool_data_and_is_named_when_wrong(hub, monkeypatch, tmp_path):
    monkeypatch.setenv("SEQPOOL_DATA", str(tmp_path / "empty"))
    assert load_benchmark("mr", data_dir=senteval_folder(tmp_path / "given")).source.startswith(str(tmp_path / "given"))
    with pytest.raises(SeqpoolError, match="data_dir names") as caught:
        load_benchmark("mr", data_dir=tmp_path / "empty")
    assert caught.value.parameters == ("data_dir",)
    assert hub == []


@pytest.mark.parametrize("variable", ["HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_skips_the_hub_and_says_where_the_data_comes_from(hub, monkeypatch, variable):
    monkeypatch.setenv(variable, "1")
    with pytest.raises(SeqpoolError) as caught:
        load_benchmark("mr")
    message = str(caught.value)
    assert hub == []  # never asked
    assert "\n" not in message
    assert f"the Hub skipped ({variable} is set)" in message
    for where in ("cornell-movie-review-data/rotten_tomatoes", "SentEval", "mr.jsonl", "SEQPOOL_DATA", "data_dir"):
        assert where in message


def test_an_unreachable_hub_is_one_line_naming_every_place_tried(hub, monkeypatch, tmp_path):
    import datasets

    def unreachable(name, split=None, **kwargs):
        raise ConnectionError(f"Couldn't reach '{name}' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    with pytest.raises(SeqpoolError) as caught:
        load_benchmark("trec", "test")
    message = str(caught.value)
    assert "\n" not in message
    assert f"no {tmp_path / 'no-such-folder' / 'trec.test.jsonl'}" in message
    assert "the Hub failed" in message and "Couldn't reach 'CogComp/trec'" in message
    assert "trec.train.jsonl and trec.test.jsonl" in message


def test_unknown_names_and_splits_name_their_parameter():
    with pytest.raises(SeqpoolError, match="name='sst2' is not a benchmark; choose one of mr, trec") as caught:
        load_benchmark("sst2")
    assert caught.value.parameters == ("name",)
    with pytest.raises(SeqpoolError, match="split='train' is not a split of mr; choose one of all") as caught:
        load_benchmark("mr", "train")
    assert caught.value.parameters == ("split",)
    with pytest.raises(SeqpoolError, match="choose one of train, test"):
        load_benchmark("trec", "validation")


def test_a_file_with_other_classes_is_refused(tmp_path):
    write_jsonl(tmp_path / "mr.jsonl", [("good", 1), ("bad", 0), ("so-so", 2)])
    with pytest.raises(SeqpoolError, match=r"mr\.jsonl: labels \[2\] are not MR classes"):
        load_benchmark("mr", data_dir=tmp_path)


@pytest.mark.integration
def test_the_shared_senteval_files(senteval_dir):
    """The real files: SentEval's sizes, and TREC's rare ABBR type at index 2 (86 training questions,
    as the Hub's card counts them), so the class names given to the indices are right."""
    import numpy as np

    mr = load_benchmark("mr", data_dir=senteval_dir)
    assert len(mr) == 10_662 and np.bincount(mr.labels).tolist() == [5331, 5331]
    assert mr.texts[0] == "simplistic , silly and tedious ."  # rt-polarity.neg's first line
    train, test = (load_benchmark("trec", split, data_dir=senteval_dir) for split in ("train", "test"))
    assert (len(train), len(test)) == (5452, 500)
    counts = dict(zip(train.label_names, np.bincount(train.labels).tolist()))
    assert counts == {"DESC": 1162, "ENTY": 1250, "ABBR": 86, "HUM": 1223, "LOC": 835, "NUM": 896}
    assert train.texts[0] == "How did serfdom develop in and then leave Russia ?"  # DESC:manner, the first question
    assert train.label_names[train.labels[0]] == "DESC"


def test_the_offline_example_is_small_balanced_and_labelled():
    """examples/reviews.jsonl: the README's first ``seqpool evaluate`` command, offline on a fresh clone."""
    from seqpool.evaluation import load_labelled

    data = load_labelled(REPO / "examples" / "reviews.jsonl")
    assert data.label_names == ["negative", "positive"]
    assert data.class_counts().tolist() == [50, 50]
    assert len(set(data.texts)) == len(data) == 100
    assert max(len(text.split()) for text in data.texts) <= 16
