"""The model reader: every module of a sentence-transformers stack read or refused in one line,
the head rule for other strategies, the departure warning, and ``seqpool inspect``.

Parity with sentence-transformers per model family is in ``test_model_families.py``; Hub ids
through a faked cache in ``test_hub_models.py``. Here: the reader's own rules, on copies of the
tiny BERT with hand-written module folders.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from seqpool.errors import PoolingWarning, SeqpoolError
from seqpool.model_reader import pooling_strategy, read_folder

HIDDEN = 32
TEXTS = ["the cat sat on the mat", "hello", "a very good film, not a bad movie at all"]


def _stack(base: Path, target: Path, pooling: dict, after: list[tuple[str, str, dict, dict | None]],
           normalize: bool = True) -> Path:
    """A copy of ``base`` with modules.json: Transformer, Pooling(``pooling``), then ``after``
    (type, folder, config, weights) and a final Normalize."""
    shutil.copytree(base, target, dirs_exist_ok=True)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    (target / "1_Pooling").mkdir()
    (target / "1_Pooling" / "config.json").write_text(json.dumps({"embedding_dimension": HIDDEN, **pooling}))
    for module_type, folder, config, weights in after:
        modules.append({"idx": len(modules), "name": str(len(modules)), "path": folder, "type": module_type})
        (target / folder).mkdir()
        (target / folder / "config.json").write_text(json.dumps(config))
        if weights is not None:
            save_file({k: v.contiguous() for k, v in weights.items()}, str(target / folder / "model.safetensors"))
    if normalize:
        modules.append({"idx": len(modules), "name": str(len(modules)), "path": "9_Normalize",
                        "type": "sentence_transformers.models.Normalize"})
    (target / "modules.json").write_text(json.dumps(modules))
    return target


def _dense(in_features: int, out_features: int, bias: bool = True, activation: str = "torch.nn.modules.activation.Tanh",
           seed: int = 0) -> tuple[dict, dict]:
    generator = torch.Generator().manual_seed(seed)
    weights = {"linear.weight": torch.randn(out_features, in_features, generator=generator) * 0.3}
    if bias:
        weights["linear.bias"] = torch.randn(out_features, generator=generator) * 0.1
    config = {"in_features": in_features, "out_features": out_features, "bias": bias,
              "activation_function": activation}
    return config, weights


@pytest.fixture(scope="module")
def dense_model(tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny BERT -> cls -> Dense(32 -> 16, tanh) -> Normalize."""
    config, weights = _dense(HIDDEN, 16)
    return _stack(tiny_bert_dir, tmp_path_factory.mktemp("dense"), {"pooling_mode": "cls"},
                  [("sentence_transformers.models.Dense", "2_Dense", config, weights)])


@pytest.mark.parametrize("config, expected", [
    ({"pooling_mode": "lasttoken"}, "last"),
    ({"pooling_mode": ["mean", "cls"]}, "mean+cls"),  # the new form: concatenated in the listed order
    ({"pooling_mode_mean_tokens": True, "pooling_mode_cls_token": True}, "cls+mean"),  # flags: ST's order
    ({"pooling_mode_max_tokens": True, "pooling_mode_mean_sqrt_len_tokens": True}, "max+mean_sqrt_len"),
    ({"pooling_mode_mean_tokens": False}, "mean"),  # no flag set: sentence-transformers falls back to mean
    ({"pooling_mode": "weightedmean"}, "weighted_mean"),
])
def test_pooling_modes_read_as_sentence_transformers_concatenates_them(config, expected):
    assert pooling_strategy(config, "config.json")[0] == expected


def test_modes_and_flags_are_read_as_sentence_transformers_reads_them():
    """The registry's one table, checked against sentence-transformers itself: its modes in its
    concatenation order, and a legacy config's flags turned into the modes it turns them into."""
    modules = pytest.importorskip("sentence_transformers.sentence_transformer.modules")
    from seqpool import registry

    modes = registry.st_pooling_modes()
    assert tuple(modes) == modules.Pooling.POOLING_MODES
    for flags in ({}, dict.fromkeys(registry.st_flag_modes(), True), {"pooling_mode_cls_token": False},
                  {"pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": True}):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the legacy flags are deprecated there
            theirs = modules.Pooling(HIDDEN, **flags).pooling_mode
        theirs = (theirs,) if isinstance(theirs, str) else tuple(theirs)
        assert pooling_strategy(flags, "config.json")[0] == "+".join(modes[mode] for mode in theirs), flags


def test_an_unknown_pooling_mode_is_refused():
    with pytest.raises(SeqpoolError, match="'attention' is not a sentence-transformers pooling mode"):
        pooling_strategy({"pooling_mode": "attention"}, "1_Pooling/config.json")


def test_a_dense_head_is_read_and_applied_with_the_model_s_vectors(dense_model: Path):
    from seqpool.encoder import Encoder

    spec = read_folder(dense_model)
    assert spec.pooling == "cls" and spec.normalize and [layer.kind for layer in spec.head] == ["dense"]
    encoder = Encoder(dense_model)
    vectors = encoder.encode(TEXTS)["cls"]
    assert vectors.shape == (3, 16)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # by hand: cls of the raw states, through the Dense weights, normalised
    raw = encoder.encode(TEXTS, "cls", normalize=False)
    assert encoder.pipeline() == "cls -> Dense(32->16, Tanh) -> Normalize"
    from safetensors.torch import load_file

    weights = load_file(str(dense_model / "2_Dense" / "model.safetensors"))
    hidden = Encoder(dense_model).model  # the same weights: states by hand
    del hidden
    pooled = _raw_pooled(encoder, TEXTS, "cls")
    expected = torch.tanh(pooled @ weights["linear.weight"].T + weights["linear.bias"])
    np.testing.assert_allclose(raw["cls"], expected.numpy(), atol=1e-5)


def _raw_pooled(encoder, texts: list[str], strategy: str) -> torch.Tensor:
    """Pooled token states without the head: the model's states pooled by the registry function."""
    from seqpool.pooling import pool

    out = []
    for text in texts:
        ids = encoder.tokenize([text])
        batch = encoder.collate(ids)
        hidden, mask = encoder.forward_batch(batch)
        out.append(pool(hidden, mask, strategy))
    return torch.cat(out)


def test_other_strategies_go_through_the_head_only_where_its_width_fits(dense_model: Path):
    from seqpool.encoder import Encoder

    encoder = Encoder(dense_model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PoolingWarning)
        vectors = encoder.encode(TEXTS, ["mean", "mean+max"], normalize=False)
    assert vectors["mean"].shape == (3, 16)  # 32 wide: the head fits
    assert vectors["mean+max"].shape == (3, 2 * HIDDEN)  # 64 wide: the raw pooled vectors
    assert encoder.output_dim("mean") == 16 and encoder.output_dim("mean+max") == 64
    assert encoder.pipeline("mean+max", False) == "mean+max"
    np.testing.assert_allclose(vectors["mean+max"][:, :HIDDEN], _raw_pooled(encoder, TEXTS, "mean").numpy(),
                               atol=1e-5)


def test_a_strategy_other_than_the_trained_pooling_warns_once(dense_model: Path):
    from seqpool.encoder import Encoder

    encoder = Encoder(dense_model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        encoder.encode(TEXTS)  # the model's own pooling: silent
        encoder.encode(TEXTS, "mean")
        encoder.encode(TEXTS, "mean")
    messages = [str(w.message) for w in caught if issubclass(w.category, PoolingWarning)]
    assert len(messages) == 1 and "trained with cls pooling; mean departs" in messages[0]


@pytest.mark.parametrize("module_type, folder", [
    ("sentence_transformers.models.LSTM", "2_LSTM"),
    ("acme.models.Custom", "2_Custom"),
    ("sentence_transformers.models.WordWeights", "2_WordWeights"),
])
def test_a_module_seqpool_cannot_reproduce_is_refused_naming_type_and_path(tiny_bert_dir, tmp_path, module_type,
                                                                           folder):
    from seqpool.encoder import Encoder

    model = _stack(tiny_bert_dir, tmp_path / "m", {"pooling_mode": "mean"}, [(module_type, folder, {}, None)])
    with pytest.raises(SeqpoolError) as error:
        Encoder(model)
    message = str(error.value)
    assert module_type in message and folder in message and "\n" not in message


@pytest.mark.parametrize("change, match", [
    (lambda c, w: c.update(in_features=31), "takes 31 values but the module before it gives 32"),
    (lambda c, w: c.update(activation_function="os.system"), "not a torch.nn activation"),
    (lambda c, w: c.update(activation_function="torch.nn.modules.activation.Softmax2dX"), "not a torch.nn module"),
    (lambda c, w: w.update({"linear.weight": torch.zeros(16, 33)}), "do not match the module's config"),
    (lambda c, w: c.update(module_input_name="token_embeddings"), "not the sentence embedding"),
])
def test_a_broken_dense_module_is_refused_before_any_weights_load(tiny_bert_dir, tmp_path, change, match):
    from seqpool.encoder import Encoder

    config, weights = _dense(HIDDEN, 16)
    change(config, weights)
    model = _stack(tiny_bert_dir, tmp_path / "m", {"pooling_mode": "cls"},
                   [("sentence_transformers.models.Dense", "2_Dense", config, weights)])
    with pytest.raises(SeqpoolError, match=match):
        Encoder(model)


def test_a_crafted_dense_config_never_allocates(tiny_bert_dir, tmp_path):
    """out_features 10**9 is refused from the safetensors header, before torch allocates 128 GB."""
    config, weights = _dense(HIDDEN, 16)
    config["out_features"] = 10 ** 9
    model = _stack(tiny_bert_dir, tmp_path / "m", {"pooling_mode": "cls"},
                   [("sentence_transformers.models.Dense", "2_Dense", config, weights)])
    with pytest.raises(SeqpoolError, match="do not match"):
        read_folder(model)


def test_a_module_folder_outside_the_model_is_refused(tiny_bert_dir, tmp_path):
    model = _stack(tiny_bert_dir, tmp_path / "m", {"pooling_mode": "cls"}, [])
    modules = json.loads((model / "modules.json").read_text())
    modules[1]["path"] = "../../etc"
    (model / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(SeqpoolError, match="points outside the model"):
        read_folder(model)


def test_layer_norm_dropout_and_two_dense_layers_apply_in_order(tiny_bert_dir, tmp_path):
    from seqpool.encoder import Encoder

    first, first_weights = _dense(HIDDEN, 24, activation="torch.nn.modules.activation.GELU", seed=1)
    second, second_weights = _dense(24, 24, bias=False, activation="torch.nn.modules.linear.Identity", seed=2)
    norm = {"norm.weight": torch.linspace(0.5, 1.5, 24), "norm.bias": torch.linspace(-0.1, 0.1, 24)}
    model = _stack(tiny_bert_dir, tmp_path / "m", {"pooling_mode": "mean"}, [
        ("sentence_transformers.models.Dense", "2_Dense", first, first_weights),
        ("sentence_transformers.models.Dropout", "3_Dropout", {"dropout": 0.2}, None),
        ("sentence_transformers.models.Dense", "4_Dense", second, second_weights),
        ("sentence_transformers.models.LayerNorm", "5_LayerNorm", {"dimension": 24}, norm),
    ], normalize=False)
    encoder = Encoder(model)
    pooled = _raw_pooled(encoder, TEXTS, "mean")
    x = torch.nn.functional.gelu(pooled @ first_weights["linear.weight"].T + first_weights["linear.bias"])
    x = x @ second_weights["linear.weight"].T
    x = torch.nn.functional.layer_norm(x, (24,), norm["norm.weight"], norm["norm.bias"])
    np.testing.assert_allclose(encoder.encode(TEXTS)["mean"], x.numpy(), atol=1e-5)


def test_no_modules_json_means_mean_and_says_so(tiny_bert_dir):
    spec = read_folder(tiny_bert_dir)
    assert spec.pooling is None and spec.strategy == "mean" and not spec.head and not spec.normalize
    assert "default" in spec.to_dict()["pooling_from"]


def _run_cli(*args: str):
    from click.testing import CliRunner

    from seqpool.cli import main

    return CliRunner().invoke(main, list(args))


def test_inspect_prints_the_pipeline_and_json(dense_model: Path):
    result = _run_cli("inspect", str(dense_model))
    assert result.exit_code == 0, result.stderr
    assert "cls -> Dense(32->16, Tanh) -> Normalize -> 16 values" in result.stdout
    assert "encoder (BertModel" in result.stdout and "[CLS] + text + [SEP]" in result.stdout
    info = json.loads(_run_cli("inspect", str(dense_model), "--json").stdout)
    assert info["output_width"] == 16 and info["pooling"] == "cls" and info["normalize"] is True
    assert info["family"] == "encoder" and info["layers"] == 2 and info["hidden_size"] == HIDDEN
    assert info["parameters"] == sum(t.numel() for t in
                                     __import__("safetensors.torch").torch.load_file(
                                         str(dense_model / "model.safetensors")).values())


def test_embed_with_an_unknown_module_exits_1_in_one_line_and_writes_nothing(tiny_bert_dir, tmp_path):
    model = _stack(tiny_bert_dir, tmp_path / "m", {"pooling_mode": "mean"},
                   [("sentence_transformers.models.LSTM", "2_LSTM", {}, None)])
    (tmp_path / "t.txt").write_text("hello\nworld\n")
    result = _run_cli("embed", str(tmp_path / "t.txt"), "--model", str(model), "-o", str(tmp_path / "out.npy"))
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and "sentence_transformers.models.LSTM" in result.stderr
    assert "2_LSTM" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out.npy").exists() and not list(tmp_path.glob("out.npy*"))


def test_embed_summary_and_metadata_name_the_pipeline(dense_model: Path, tmp_path):
    import pyarrow.parquet as pq

    (tmp_path / "t.txt").write_text("hello\nworld\n")
    result = _run_cli("embed", str(tmp_path / "t.txt"), "--model", str(dense_model), "-o", str(tmp_path / "o.parquet"))
    assert result.exit_code == 0, result.stderr
    assert "wrote 2 x 16 embeddings (cls -> Dense(32->16, Tanh) -> Normalize)" in result.stderr
    metadata = pq.read_schema(tmp_path / "o.parquet").metadata
    assert b"cls: cls -> Dense(32->16, Tanh) -> Normalize" in metadata[b"seqpool.pipeline"]
    departed = _run_cli("embed", str(tmp_path / "t.txt"), "--model", str(dense_model), "--strategy", "mean",
                        "--quiet", "-o", str(tmp_path / "m.npy"))
    assert departed.exit_code == 0
    assert departed.stderr.strip().startswith("warning:") and departed.stderr.count("\n") == 1
    assert "trained with cls pooling; mean departs" in departed.stderr


def test_export_to_sentence_transformers_keeps_the_head(dense_model: Path, tmp_path):
    """An exported Dense-headed model gives sentence-transformers the vectors seqpool gives."""
    from sentence_transformers import SentenceTransformer

    from seqpool.encoder import Encoder
    from seqpool.st_export import export_sentence_transformers

    encoder = Encoder(dense_model)
    target = export_sentence_transformers(encoder, tmp_path / "exported")
    reference = SentenceTransformer(str(target), device="cpu")
    expected = np.stack([reference.encode([text])[0] for text in TEXTS])
    np.testing.assert_allclose(encoder.encode(TEXTS)["cls"], expected, atol=1e-5)
    assert Encoder(target).pipeline() == "cls -> Dense(32->16, Tanh) -> Normalize"


def test_a_sharded_checkpoint_loads_and_inspect_counts_every_shard(tiny_bert_dir: Path, tmp_path):
    from transformers import AutoModel, AutoTokenizer

    from seqpool.encoder import Encoder
    from seqpool.model_info import describe_model

    sharded = tmp_path / "sharded"
    AutoModel.from_pretrained(tiny_bert_dir).save_pretrained(sharded, max_shard_size="20KB")
    AutoTokenizer.from_pretrained(tiny_bert_dir).save_pretrained(sharded)
    shards = list(sharded.glob("model-*.safetensors"))
    assert len(shards) > 1 and (sharded / "model.safetensors.index.json").is_file()
    np.testing.assert_allclose(Encoder(sharded).encode(TEXTS)["mean"], Encoder(tiny_bert_dir).encode(TEXTS)["mean"],
                               atol=1e-6)
    whole = describe_model(tiny_bert_dir)["parameters"]
    assert describe_model(sharded)["parameters"] == whole == sum(
        p.numel() for p in AutoModel.from_pretrained(tiny_bert_dir).parameters())


def test_embed_says_when_a_model_has_no_sentence_transformers_modules(tiny_bert_dir, tmp_path):
    (tmp_path / "t.txt").write_text("hello\n")
    result = _run_cli("embed", str(tmp_path / "t.txt"), "--model", str(tiny_bert_dir), "-o", str(tmp_path / "o.npy"))
    assert result.exit_code == 0, result.output
    assert "note:" in result.stderr and "no sentence-transformers modules.json" in result.stderr
    chosen = _run_cli("embed", str(tmp_path / "t.txt"), "--model", str(tiny_bert_dir), "--strategy", "max",
                      "-o", str(tmp_path / "m.npy"))
    assert "modules.json" not in chosen.stderr


@pytest.mark.parametrize("file_name", ["modules.json", "sentence_bert_config.json", "config_sentence_transformers.json"])
def test_an_optional_file_that_is_there_but_unreadable_is_refused_not_skipped(tmp_path, file_name):
    """Missing, these files mean "no such setting"; present but corrupt, skipping them would pool,
    cut or prompt differently from the model's own pipeline without a word."""
    from seqpool.model_reader import read_folder

    (tmp_path / "config.json").write_text('{"model_type": "bert"}', encoding="utf-8")
    (tmp_path / file_name).write_text("{not json", encoding="utf-8")
    with pytest.raises(SeqpoolError, match=rf"cannot read .*{file_name}") as raised:
        read_folder(tmp_path)
    assert "\n" not in str(raised.value)
