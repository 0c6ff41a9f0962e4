"""Checks before work (issue 13, class 4): outputs are checked before anything is read or
encoded; a cache that cannot be written is a warning, and the run goes on without it."""

from __future__ import annotations

import json
import os
import stat

import pytest
from click.testing import CliRunner

from seqpool.cli import main
from seqpool.errors import SeqpoolError
from seqpool.evaluation import EvaluationWarning, evaluate
from seqpool.states import TokenStates

ROWS = [(f"{'good great' if i % 2 else 'bad boring'} film {i}", i % 2) for i in range(24)]
FAST = {"folds": 3, "threads": 1, "n_resamples": 99}


def data() -> tuple[list[str], list[int]]:
    return [t for t, _ in ROWS], [y for _, y in ROWS]


def test_cache_folder_under_a_regular_file_warns_and_continues(tiny_bert_encoder, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.warns(EvaluationWarning, match="cannot write the token-state cache"):
        result = evaluate(data(), strategies="mean", encoder=tiny_bert_encoder, cache_dir=blocker / "cache", **FAST)
    assert result.strategies["mean"].scores and result.protocol["cache"] == [None]
    recorded = json.loads(result.to_json())["warnings"]
    assert len(recorded) == 1 and "continuing without caching" in recorded[0]
    assert blocker.read_text() == "not a folder"


def test_a_cache_store_failing_after_encoding_is_a_warning_not_an_abort(tiny_bert_encoder, tmp_path, monkeypatch):
    def disk_full(self, path, metadata=None):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(TokenStates, "save", disk_full)
    told = []
    result = evaluate(data(), strategies="mean", encoder=tiny_bert_encoder, cache_dir=tmp_path, warn=told.append,
                      **FAST)
    assert result.strategies["mean"].mean > 0 and result.protocol["cache_hit"] == [False]
    assert len(told) == 1 and "No space left on device" in told[0] and result.warnings == told


def test_unwritable_outputs_fail_before_reading_or_encoding(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    missing = tmp_path / "never-read.jsonl"  # would fail with "not found" if it were read first
    with pytest.raises(SeqpoolError, match="cannot write json_path"):
        evaluate(missing, strategies="mean", json_path=blocker / "r.json")
    with pytest.raises(SeqpoolError, match="cannot write plot_path"):
        evaluate(missing, strategies="mean", plot_path=blocker / "r.png")
    with pytest.raises(SeqpoolError, match="cannot write a plot as 'r.xyz'"):
        evaluate(missing, strategies="mean", plot_path=tmp_path / "r.xyz")
    with pytest.raises(SeqpoolError, match="json_path: cannot write .* it is a directory"):
        evaluate(missing, strategies="mean", json_path=tmp_path)
    with pytest.raises(SeqpoolError, match="same file"):
        evaluate(missing, strategies="mean", json_path=tmp_path / "r.png", plot_path=tmp_path / "r.png")


def test_evaluate_writes_its_outputs(tiny_bert_encoder, tmp_path):
    result = evaluate(data(), strategies="mean,max", encoder=tiny_bert_encoder, cache_dir=tmp_path / "c",
                      json_path=tmp_path / "out" / "r.json", plot_path=tmp_path / "out" / "r.png", **FAST)
    assert json.loads((tmp_path / "out" / "r.json").read_text())["best"] == result.best
    assert (tmp_path / "out" / "r.png").read_bytes()[:4] == b"\x89PNG"
    assert not [p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no temp file left


def test_outputs_to_a_device_stream_into_it_and_never_replace_it(tiny_bert_encoder, tmp_path):
    evaluate(data(), strategies="mean", encoder=tiny_bert_encoder, cache_dir=tmp_path, json_path=os.devnull,
             **FAST)
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)


def test_cli_names_flags_for_outputs_and_shows_cache_warnings_even_when_quiet(tmp_path, tiny_bert_dir):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in ROWS), encoding="utf-8")
    result = CliRunner().invoke(main, ["evaluate", "--train", str(train), "--model", str(tiny_bert_dir),
                                       "--json", str(blocker / "r.json")])
    assert result.exit_code == 1 and "cannot write --json" in result.output
    result = CliRunner().invoke(main, ["evaluate", "--train", str(train), "--strategies", "mean", "--folds", "3",
                                       "--model", str(tiny_bert_dir), "--cache-dir", str(blocker / "cache"),
                                       "--threads", "1", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "warning: cannot write the token-state cache" in result.output and "Best: mean." in result.output
