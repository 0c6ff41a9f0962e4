"""sentence-transformers layout: what seqpool exports, sentence-transformers loads and pools identically."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from seqpool.encoder import Encoder
from seqpool.errors import SeqpoolError
from seqpool.pooling import STRATEGIES
from seqpool.st_export import (
    SentenceTransformersLayout,
    export_sentence_transformers,
    pooling_config,
    read_sentence_transformers_layout,
)

TEXTS = ["the film was good", "a boring , very long movie that was not funny at all", "cat", "",
         "hello world hello world hello world"]


def _sentence_transformer(path: Path):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    return sentence_transformers.SentenceTransformer(str(path), device="cpu", local_files_only=True)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_sentence_transformers_pools_exported_bert_like_seqpool(tiny_bert_encoder, tmp_path, strategy):
    normalize = strategy in ("mean", "max")
    target = export_sentence_transformers(tiny_bert_encoder, tmp_path / "st", strategy, normalize=normalize)
    theirs = _sentence_transformer(target).encode(TEXTS, batch_size=2, convert_to_numpy=True)
    ours = tiny_bert_encoder.encode(TEXTS, strategy, normalize=normalize)[strategy]
    np.testing.assert_allclose(theirs, ours, atol=1e-5, rtol=1e-5)
    if normalize:
        np.testing.assert_allclose(np.linalg.norm(theirs, axis=1), 1.0, atol=1e-5)


def test_decoder_without_pad_token_exports_right_padding_and_a_pad_token(tiny_gpt2_encoder, tmp_path):
    target = export_sentence_transformers(tiny_gpt2_encoder, tmp_path / "gpt2", "last")
    assert tiny_gpt2_encoder.tokenizer.pad_token is None  # the caller's tokenizer is left alone
    theirs = _sentence_transformer(target).encode(TEXTS, batch_size=3, convert_to_numpy=True)
    np.testing.assert_allclose(theirs, tiny_gpt2_encoder.encode(TEXTS, "last")["last"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("strategy,normalize", [("weighted_mean", True), ("cls", False)])
def test_export_reads_back_into_layout_and_encoder_defaults(tiny_bert_encoder, tmp_path, strategy, normalize):
    target = export_sentence_transformers(tiny_bert_encoder, tmp_path / "out", strategy, normalize=normalize)
    layout = read_sentence_transformers_layout(target)
    assert layout == SentenceTransformersLayout(strategy, normalize, tiny_bert_encoder.max_length)
    reloaded = Encoder(target)
    assert (reloaded.default_strategy, reloaded.default_normalize) == (strategy, normalize)
    np.testing.assert_allclose(reloaded.encode(TEXTS)[strategy],
                               tiny_bert_encoder.encode(TEXTS, strategy, normalize=normalize)[strategy], atol=1e-6)


def test_export_defaults_follow_the_encoder(make_st_model_dir, tmp_path):
    source = Encoder(make_st_model_dir("max", normalize=True))
    layout = read_sentence_transformers_layout(export_sentence_transformers(source, tmp_path / "again"))
    assert (layout.strategy, layout.normalize) == ("max", True)


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("strategy", ["mean", "last", "mean_sqrt_len"])
def test_reads_both_pooling_config_formats(make_st_model_dir, strategy, legacy):
    layout = read_sentence_transformers_layout(make_st_model_dir(strategy, normalize=legacy, legacy=legacy))
    assert (layout.strategy, layout.normalize) == (strategy, legacy)


@pytest.mark.integration
def test_reads_the_packaged_minilm_layout(minilm_path):
    assert read_sentence_transformers_layout(minilm_path) == SentenceTransformersLayout("mean", True, 256)


def test_pooling_config_switches_on_exactly_one_flag():
    config = pooling_config("weighted_mean", 8)
    assert config["word_embedding_dimension"] == 8
    assert [key for key, value in config.items() if value is True] == ["pooling_mode_weightedmean_tokens"]


def test_several_pooling_modes_are_rejected(make_st_model_dir):
    directory = make_st_model_dir("mean")
    (directory / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode": ["mean", "max"]}))
    with pytest.raises(SeqpoolError, match="single mode"):
        read_sentence_transformers_layout(directory)


@pytest.mark.parametrize("broken", ["no_modules", "bad_json", "unknown_mode", "no_pooling"])
def test_malformed_layouts_raise_seqpool_errors(make_st_model_dir, broken):
    directory = make_st_model_dir("mean")
    if broken == "no_modules":
        (directory / "modules.json").unlink()
    elif broken == "bad_json":
        (directory / "1_Pooling" / "config.json").write_text("{not json")
    elif broken == "unknown_mode":
        (directory / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode": "median"}))
    else:
        modules = json.loads((directory / "modules.json").read_text())
        (directory / "modules.json").write_text(json.dumps(modules[:1]))
    with pytest.raises(SeqpoolError):
        read_sentence_transformers_layout(directory)


def test_the_layout_is_the_model_reader_s_view_of_the_folder(make_st_model_dir):
    """One reader: a module seqpool cannot reproduce is refused here as the Encoder refuses it (never
    skipped), a legacy config with no flag set pools with mean as sentence-transformers does, and an
    unreadable modules.json is named."""
    directory = make_st_model_dir("cls", legacy=True)
    modules = json.loads((directory / "modules.json").read_text())
    custom = {"idx": 2, "name": "2", "path": "2_Whitening", "type": "mypackage.Whitening"}
    (directory / "modules.json").write_text(json.dumps([*modules, custom]))
    with pytest.raises(SeqpoolError, match="mypackage.Whitening at 2_Whitening is not one seqpool can reproduce"):
        read_sentence_transformers_layout(directory)
    (directory / "modules.json").write_text(json.dumps(modules))
    (directory / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": False}))
    assert read_sentence_transformers_layout(directory).strategy == "mean"
    (directory / "modules.json").write_text("[not json")
    with pytest.raises(SeqpoolError, match=r"cannot read .*modules\.json \(the module list\)"):
        read_sentence_transformers_layout(directory)


def test_export_refuses_learned_strategies_other_layers_and_full_folders(tiny_bert_dir, tiny_bert_encoder,
                                                                         tmp_path):
    with pytest.raises(SeqpoolError, match="unknown pooling strategy"):
        export_sentence_transformers(tiny_bert_encoder, tmp_path / "a", "attention")
    with pytest.raises(SeqpoolError, match="last layer"):
        export_sentence_transformers(Encoder(tiny_bert_dir, layer=1), tmp_path / "b", "mean")
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine")
    with pytest.raises(SeqpoolError, match="not an empty folder"):
        export_sentence_transformers(tiny_bert_encoder, occupied, "mean")
    assert [p.name for p in occupied.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["occupied"]


def test_failed_export_leaves_nothing_behind(tiny_bert_encoder, tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(type(tiny_bert_encoder.model), "save_pretrained", fail)
    with pytest.raises(OSError, match="disk full"):
        export_sentence_transformers(tiny_bert_encoder, tmp_path / "st", "mean")
    assert list(tmp_path.iterdir()) == []


def test_export_into_an_existing_empty_folder(tiny_bert_encoder, tmp_path):
    (tmp_path / "empty").mkdir()
    target = export_sentence_transformers(tiny_bert_encoder, tmp_path / "empty", "mean")
    assert (target / "modules.json").is_file() and (target / "1_Pooling" / "config.json").is_file()


def test_an_exported_folder_gets_the_permissions_the_umask_gives(tiny_bert_encoder, tmp_path):
    from seqpool.io.atomic import current_umask
    from seqpool.st_export import export_sentence_transformers

    folder = export_sentence_transformers(tiny_bert_encoder, tmp_path / "st")
    assert folder.stat().st_mode & 0o777 == 0o777 & ~current_umask()
