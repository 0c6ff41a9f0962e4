"""``seqpool export``: the exported graph gives seqpool's own vectors, run by onnxruntime alone.

Every parameter-free strategy x normalise on/off on the tiny BERT, every strategy through a Dense
head, a layer expression, a saved Pooler and a classifier's logits are exported; one subprocess
that imports no torch runs them all with onnxruntime + tokenizers on left- and right-padded
batches and the test compares with ``Encoder.encode`` (max |diff| <= 1e-5).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from seqpool.cli import main
from seqpool.registry import PARAMETER_FREE, strategy_names

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

TEXTS = ["the cat sat on the mat", "hello", "a very good film , not a bad movie at all", "dog", ""]
TOLERANCE = 1e-5

#: Run in a fresh interpreter: tokenizers + onnxruntime, no torch (the point of an export).
RUNNER = r'''
import json, sys
import numpy as np
import onnxruntime
from tokenizers import Tokenizer
jobs, texts = json.loads(sys.argv[1]), json.loads(sys.argv[2])
out = {}
for name, folder in jobs.items():
    tokenizer = Tokenizer.from_file(folder + "/tokenizer.json")
    encoded = [tokenizer.encode(t) for t in texts]
    width = max(len(e.ids) for e in encoded)
    session = onnxruntime.InferenceSession(folder + "/model.onnx", providers=["CPUExecutionProvider"])
    wanted = [i.name for i in session.get_inputs()]
    for side in ("right", "left"):
        ids = np.zeros((len(texts), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        for row, e in enumerate(encoded):
            n = len(e.ids)
            cols = slice(0, n) if side == "right" else slice(width - n, width)
            ids[row, cols], mask[row, cols] = e.ids, 1
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        out[f"{name}/{side}"] = session.run(None, {k: feed[k] for k in wanted})[0].tolist()
out["torch imported"] = "torch" in sys.modules
print(json.dumps(out))
'''


def _export(*args: str) -> None:
    result = CliRunner().invoke(main, ["export", *args])
    assert result.exit_code == 0, (result.output, result.exception)


@pytest.fixture(scope="module")
def dense_model(tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from test_model_reader import _dense, _stack

    config, weights = _dense(32, 16)
    return _stack(tiny_bert_dir, tmp_path_factory.mktemp("dense_head"), {"pooling_mode": "mean"},
                  [("sentence_transformers.models.Dense", "2_Dense", config, weights)])


@pytest.fixture(scope="module")
def exported(tiny_bert_dir: Path, dense_model: Path, tmp_path_factory: pytest.TempPathFactory):
    """Every export of the matrix, then one torch-free run of them all: ``(jobs, results)``."""
    import torch

    from seqpool import PooledClassifier, Pooler

    root = tmp_path_factory.mktemp("exports")
    jobs: dict[str, tuple[str, list[str]]] = {}
    for strategy in strategy_names(PARAMETER_FREE):
        for normalize in ("--normalize", "--no-normalize"):
            name = f"bert-{strategy}{normalize}"
            jobs[name] = (str(tiny_bert_dir), ["--strategy", strategy, normalize])
        jobs[f"dense-{strategy}"] = (str(dense_model), ["--strategy", strategy])
    jobs["bert-cls+mean@-2"] = (str(tiny_bert_dir), ["--strategy", "cls+mean@-2", "--normalize"])
    with torch.random.fork_rng():
        torch.manual_seed(0)
        pooler = Pooler("attention", dim=32, heads=2)
        pooler.save_pretrained(root / "saved_pooler")
        classifier = PooledClassifier("attention", dim=32, num_labels=3)
        classifier.save_pretrained(root / "saved_classifier")
    jobs["pooler"] = (str(tiny_bert_dir), ["--strategy", str(root / "saved_pooler"), "--no-normalize"])
    jobs["classifier"] = (str(tiny_bert_dir), ["--classifier", str(root / "saved_classifier")])
    for name, (model, args) in jobs.items():
        _export("-o", str(root / name), "--model", model, *args)
    folders = {name: str(root / name) for name in jobs}
    run = subprocess.run([sys.executable, "-c", RUNNER, json.dumps(folders), json.dumps(TEXTS)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    return jobs, json.loads(run.stdout.strip().splitlines()[-1]), root


def test_the_exported_graph_runs_without_torch(exported):
    _, results, _ = exported
    assert results["torch imported"] is False


@pytest.mark.parametrize("side", ["right", "left"])
def test_every_parameter_free_strategy_matches_seqpool(exported, tiny_bert_dir, dense_model, side):
    from seqpool import Encoder

    jobs, results, _ = exported
    encoders = {str(tiny_bert_dir): Encoder(tiny_bert_dir), str(dense_model): Encoder(dense_model)}
    checked = 0
    for name, (model, args) in jobs.items():
        if not name.startswith(("bert-", "dense-")):
            continue
        strategy = args[1]
        normalize = None if len(args) == 2 else args[2] == "--normalize"
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = encoders[model].encode(TEXTS, strategy, normalize=normalize)[strategy]
        got = np.asarray(results[f"{name}/{side}"], dtype=np.float32)
        assert got.shape == expected.shape, name
        assert float(np.abs(got - expected).max()) <= TOLERANCE, name
        checked += 1
    assert checked == 3 * len(strategy_names(PARAMETER_FREE)) + 1


def test_a_dense_head_is_inside_the_graph(exported):
    _, results, root = exported
    assert np.asarray(results["dense-mean/right"]).shape == (len(TEXTS), 16)
    assert "Dense(32->16, Tanh)" in json.loads((root / "dense-mean" / "seqpool_export.json").read_text())["computes"]


@pytest.mark.parametrize("side", ["right", "left"])
def test_a_saved_pooler_and_a_classifier_match_seqpool(exported, tiny_bert_encoder, side):
    import torch

    from seqpool import PooledClassifier, Pooler

    _, results, root = exported
    batch = tiny_bert_encoder.collate(tiny_bert_encoder.tokenize(TEXTS))
    hidden, mask = tiny_bert_encoder.forward_batch(batch)
    with torch.no_grad():
        pooled = Pooler.from_pretrained(root / "saved_pooler")(hidden, mask).numpy()
        logits = PooledClassifier.from_pretrained(root / "saved_classifier")(hidden, mask).numpy()
    assert float(np.abs(np.asarray(results[f"pooler/{side}"]) - pooled).max()) <= TOLERANCE
    assert float(np.abs(np.asarray(results[f"classifier/{side}"]) - logits).max()) <= TOLERANCE


def test_openvino_format_gives_the_same_vectors(tiny_bert_dir, tmp_path):
    openvino = pytest.importorskip("openvino")
    from seqpool import Encoder

    _export("-o", str(tmp_path / "ov"), "--model", str(tiny_bert_dir), "--format", "openvino", "--strategy", "max")
    encoder = Encoder(tiny_bert_dir)
    batch = encoder.collate(encoder.tokenize(TEXTS))
    compiled = openvino.Core().compile_model(str(tmp_path / "ov" / "openvino_model.xml"), "CPU",
                                             {"INFERENCE_PRECISION_HINT": "f32"})
    got = compiled({"input_ids": batch["input_ids"].numpy(), "attention_mask": batch["attention_mask"].numpy(),
                    "token_type_ids": np.zeros_like(batch["input_ids"].numpy())})[0]
    expected = encoder.encode(TEXTS, "max")["max"]
    assert float(np.abs(got - expected).max()) <= TOLERANCE


@pytest.mark.parametrize("case, match", [
    ("nonempty", "is not an empty folder"),
    ("learned", "is learned"),
    ("empty_calibration", "holds no text"),
    ("binary_calibration", "calibration"),
    ("missing_calibration", "calibration file"),
    ("calibration_without_int8", "int8 only"),
])
def test_bad_exports_exit_1_in_one_line_and_write_nothing(tiny_bert_dir, tmp_path, case, match):
    target = tmp_path / "out"
    args = ["export", "-o", str(target), "--model", str(tiny_bert_dir)]
    if case == "nonempty":
        target.mkdir()
        (target / "notes.md").write_text("mine")
    elif case == "learned":
        args += ["--strategy", "attention"]
    elif case in ("empty_calibration", "binary_calibration", "missing_calibration"):
        calibration = tmp_path / "calibration.txt"
        if case == "empty_calibration":
            calibration.write_text("\n\n")
        elif case == "binary_calibration":
            calibration.write_bytes(b"\xff\xfe\x00\x81binary")
        args += ["--dtype", "int8", "--calibration", str(calibration)]
    else:
        (tmp_path / "c.txt").write_text("a text\n")
        args += ["--calibration", str(tmp_path / "c.txt")]
    before = sorted(p.name for p in tmp_path.iterdir())
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    assert match in result.output and "Traceback" not in result.output
    assert result.output.strip().count("\n") == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    if case == "nonempty":
        assert (target / "notes.md").read_text() == "mine" and len(list(target.iterdir())) == 1


@pytest.mark.parametrize("side", ["right", "left"])
def test_a_decoder_exports_with_its_last_token_on_either_padding_side(tiny_gpt2_dir, tmp_path, side):
    """GPT-2: no token types in the graph (it would add their embeddings), the last real token wherever
    the padding is."""
    import onnxruntime

    from seqpool import Encoder

    _export("-o", str(tmp_path / "gpt2"), "--model", str(tiny_gpt2_dir), "--strategy", "last", "--no-normalize")
    session = onnxruntime.InferenceSession(str(tmp_path / "gpt2" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask"]
    encoder = Encoder(tiny_gpt2_dir)
    texts = [t for t in TEXTS if t]
    ids = encoder.tokenize(texts)
    width = max(map(len, ids))
    input_ids = np.zeros((len(ids), width), dtype=np.int64)
    mask = np.zeros_like(input_ids)
    for row, row_ids in enumerate(ids):
        cols = slice(0, len(row_ids)) if side == "right" else slice(width - len(row_ids), width)
        input_ids[row, cols], mask[row, cols] = row_ids, 1
    got = session.run(None, {"input_ids": input_ids, "attention_mask": mask})[0]
    expected = encoder.encode(texts, "last", normalize=False)["last"]
    assert float(np.abs(got - expected).max()) <= TOLERANCE


def test_an_export_folder_gets_the_permissions_the_umask_gives(tiny_bert_dir, tmp_path):
    import os

    from seqpool.io.atomic import current_umask

    _export("-o", str(tmp_path / "out"), "--model", str(tiny_bert_dir))
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o777 & ~current_umask()
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and os.access(tmp_path / "out" / "model.onnx", os.R_OK)
