"""A model given by Hub id, found in the Hugging Face cache, behaves exactly like its folder.

``Encoder("org/name")`` must resolve the id the way transformers does (a local folder, else
the Hugging Face cache, offline when ``HF_HUB_OFFLINE=1``, else the Hub) and then read every
sentence-transformers setting (pooling, Normalize, ``max_seq_length``, prompts) from the
resolved snapshot folder. Otherwise the same model silently pools differently by id than by
path.

No test here touches the network. Each builds a Hugging Face cache by hand under a temp
``HF_HOME`` (``<HF_HOME>/hub/models--org--name/{refs/main, snapshots/<commit>/...}``), in
one of two layouts: ``symlinks`` as huggingface_hub writes it (content in ``blobs/``,
relative symlinks in the snapshot) and ``files`` (plain copies in the snapshot, as on
filesystems without symlinks). ``test_fake_cache_is_what_huggingface_hub_and_transformers_read``
checks that both layouts are what huggingface_hub and transformers themselves read, so a
failure elsewhere is seqpool's, not the fake cache's.

huggingface_hub reads ``HF_HOME``/``HF_HUB_OFFLINE`` into constants when it is imported, so
in-process tests only set the environment (``monkeypatch.setenv``): seqpool has to read it
at call time, as a user's ``os.environ[...] = ...`` before ``Encoder(...)`` expects.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Mapping

import numpy as np
import pytest
from click.testing import CliRunner

import seqpool
from seqpool.cli import main
from seqpool.encoder import Encoder

REPO = Path(__file__).resolve().parents[1]
LAYOUTS = ("symlinks", "files")
MINILM_ID = "acme/minilm-cls"
TINY_ID = "acme/tiny-cls"
SETTINGS_ID = "acme/tiny-settings"
MISSING_ID = "acme/not-in-the-cache"
TEXTS = ["the cat sat on the mat", "hello world", "a very good film, not a bad movie at all",
         "pooling tokens into one vector", "xyz"]
CLS_POOLING = {"word_embedding_dimension": 384, "pooling_mode_cls_token": True,
               "pooling_mode_mean_tokens": False, "pooling_mode_max_tokens": False,
               "pooling_mode_mean_sqrt_len_tokens": False}
PROMPTS = {"query": "query: ", "passage": "passage: "}
MAX_SEQ_LENGTH = 12
# Variables that, when set, point the hub cache somewhere other than $HF_HOME/hub.
CACHE_OVERRIDES = ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE")
# The console script `seqpool` in a fresh interpreter (seqpool.cli has no __main__ for `-m`).
CLI = [sys.executable, "-c", "from seqpool.cli import main; main()"]


# -- the fake cache -------------------------------------------------------------------------

def put_in_cache(source: Path, hf_home: Path, repo_id: str, layout: str,
                 replace: Mapping[str, str] | None = None) -> Path:
    """Lay ``source`` out as huggingface_hub caches ``repo_id`` under ``hf_home``; the snapshot folder.

    ``replace`` maps a file's path inside the model (``1_Pooling/config.json``) to new content,
    so a packaged model can be changed without copying it twice.
    """
    org, name = repo_id.split("/")
    repo_dir = hf_home / "hub" / f"models--{org}--{name}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()  # any 40-hex id; stable per repo
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit, encoding="ascii")  # as the hub writes it: no newline
    snapshot = repo_dir / "snapshots" / commit
    replace = dict(replace or {})
    for file in sorted(p for p in source.rglob("*") if p.is_file()):
        relative = file.relative_to(source).as_posix()
        content = replace.pop(relative).encode() if relative in replace else file.read_bytes()
        target = snapshot / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if layout == "files":
            target.write_bytes(content)
        elif layout == "symlinks":
            blob = repo_dir / "blobs" / hashlib.sha256(content).hexdigest()
            blob.parent.mkdir(exist_ok=True)
            if not blob.exists():
                blob.write_bytes(content)
            target.symlink_to(os.path.relpath(blob, target.parent))
        else:
            raise ValueError(f"unknown layout {layout!r}")
    assert not replace, f"files to replace are not in {source}: {sorted(replace)}"
    return snapshot


def use_offline_cache(monkeypatch: pytest.MonkeyPatch, hf_home: Path) -> None:
    """Point this test's environment at ``hf_home``, offline, with nothing overriding it."""
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for variable in CACHE_OVERRIDES:
        monkeypatch.delenv(variable, raising=False)


def offline_cache_env(hf_home: Path) -> dict[str, str]:
    """A subprocess environment reading only ``hf_home`` as its Hugging Face cache, offline."""
    env = {key: value for key, value in os.environ.items()
           if key not in CACHE_OVERRIDES and key != "SEQPOOL_DEBUG"}
    env.update(HF_HOME=str(hf_home), HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    return env


def assert_same_vectors(by_id: Mapping[str, np.ndarray], by_folder: Mapping[str, np.ndarray]) -> None:
    """Same strategies, and vectors within 1e-6 of each other."""
    assert list(by_id) == list(by_folder), f"by id pools {list(by_id)}, by folder {list(by_folder)}"
    for strategy, vectors in by_folder.items():
        assert by_id[strategy].shape == vectors.shape
        assert float(np.max(np.abs(by_id[strategy] - vectors))) <= 1e-6, strategy


# -- models --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_cls_dir(make_st_model_dir) -> Path:
    """The tiny BERT as a sentence-transformers model: CLS pooling + Normalize."""
    return make_st_model_dir("cls", normalize=True)


@pytest.fixture(scope="module")
def tiny_settings_dir(make_st_model_dir) -> Path:
    """The tiny BERT with mean pooling, ``max_seq_length`` and instruction prompts."""
    directory = make_st_model_dir("mean")
    (directory / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": MAX_SEQ_LENGTH, "do_lower_case": False}), encoding="utf-8")
    (directory / "config_sentence_transformers.json").write_text(
        json.dumps({"prompts": PROMPTS, "default_prompt_name": "query", "similarity_fn_name": "cosine"}),
        encoding="utf-8")
    return directory


@pytest.fixture(scope="module")
def minilm_cache(minilm_path: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``(HF_HOME, snapshot)``: the packaged MiniLM cached as ``acme/minilm-cls``, switched to CLS
    pooling (the issue's reproduction), in the layout huggingface_hub writes."""
    hf_home = tmp_path_factory.mktemp("minilm_cache") / "hf"
    snapshot = put_in_cache(minilm_path, hf_home, MINILM_ID, "symlinks",
                            replace={"1_Pooling/config.json": json.dumps(CLS_POOLING, indent=2)})
    return hf_home, snapshot


# -- the fake cache is a real one -----------------------------------------------------------

def test_fake_cache_is_what_huggingface_hub_and_transformers_read(tiny_cls_dir: Path, tmp_path: Path) -> None:
    """Both layouts resolve with huggingface_hub and load by id, offline, with transformers."""
    from huggingface_hub import snapshot_download

    hf_home = tmp_path / "hf"
    ids = {layout: f"acme/tiny-{layout}" for layout in LAYOUTS}
    snapshots = {layout: put_in_cache(tiny_cls_dir, hf_home, ids[layout], layout) for layout in LAYOUTS}
    for layout, snapshot in snapshots.items():
        found = snapshot_download(ids[layout], cache_dir=hf_home / "hub", local_files_only=True)
        assert Path(found) == snapshot
        assert (snapshot / "1_Pooling" / "config.json").is_symlink() == (layout == "symlinks")
    code = ("import json, sys\n"
            "from transformers import AutoModel, AutoTokenizer\n"
            "for repo_id in sys.argv[1:]:\n"
            "    model = AutoModel.from_pretrained(repo_id)\n"
            "    ids = AutoTokenizer.from_pretrained(repo_id)('hello world')['input_ids']\n"
            "    print(json.dumps([repo_id, model.config.hidden_size, len(ids)]))\n")
    result = subprocess.run([sys.executable, "-c", code, *ids.values()], capture_output=True, text=True,
                            env=offline_cache_env(hf_home), cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = [json.loads(line) for line in result.stdout.splitlines()]
    assert loaded == [[repo_id, 32, 4] for repo_id in ids.values()]  # [CLS] hello world [SEP]


# -- by id == by folder ---------------------------------------------------------------------

@pytest.mark.parametrize("layout", LAYOUTS)
def test_pooling_and_normalize_are_read_by_id(tiny_cls_dir: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch, layout: str) -> None:
    """A cached CLS + Normalize model pools with CLS and normalises by id, as by its folder."""
    snapshot = put_in_cache(tiny_cls_dir, tmp_path / "hf", TINY_ID, layout)
    use_offline_cache(monkeypatch, tmp_path / "hf")
    by_folder = Encoder(snapshot)
    assert (by_folder.default_strategy, by_folder.default_normalize) == ("cls", True)  # the fixture is right
    by_id = Encoder(TINY_ID)
    assert by_id.default_strategy == "cls"
    assert by_id.default_normalize is True
    assert_same_vectors(by_id.encode(TEXTS), by_folder.encode(TEXTS))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_max_seq_length_and_prompts_are_read_by_id(tiny_settings_dir: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch, layout: str) -> None:
    """``max_seq_length``, ``prompts`` and ``default_prompt_name`` by id, as by folder."""
    snapshot = put_in_cache(tiny_settings_dir, tmp_path / "hf", SETTINGS_ID, layout)
    use_offline_cache(monkeypatch, tmp_path / "hf")
    by_folder = Encoder(snapshot)
    # the fixture is right: the folder's settings are the ones written (the model itself allows 64)
    assert (by_folder.max_length, by_folder.prompts, by_folder.default_prompt_name) == (
        MAX_SEQ_LENGTH, PROMPTS, "query")
    by_id = Encoder(SETTINGS_ID)
    assert by_id.max_length == by_folder.max_length
    assert by_id.prompts == by_folder.prompts
    assert by_id.default_prompt_name == by_folder.default_prompt_name
    long_texts = [*TEXTS, "very " * 40 + "long"]  # longer than max_seq_length: truncated alike
    assert_same_vectors(by_id.encode(long_texts), by_folder.encode(long_texts))


@pytest.mark.integration
def test_issue_reproduction_minilm_switched_to_cls_by_id(minilm_cache: tuple[Path, Path],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The report: MiniLM with CLS pooling in the cache gives mean-pooled vectors by id."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    hf_home, snapshot = minilm_cache
    use_offline_cache(monkeypatch, hf_home)
    by_id = Encoder(MINILM_ID)
    by_folder = Encoder(snapshot)
    assert by_id.default_strategy == "cls"
    assert by_id.default_normalize is True
    vectors = by_id.encode(TEXTS)
    assert_same_vectors(vectors, by_folder.encode(TEXTS))
    # CLS pooling and unit norms, checked against transformers itself, one text at a time
    model, tokenizer = AutoModel.from_pretrained(snapshot).eval(), AutoTokenizer.from_pretrained(snapshot)
    with torch.inference_mode():
        cls = torch.cat([model(**tokenizer(text, return_tensors="pt")).last_hidden_state[:, 0] for text in TEXTS])
    expected = torch.nn.functional.normalize(cls, dim=-1).numpy()
    np.testing.assert_allclose(vectors["cls"], expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(vectors["cls"], axis=1), 1.0, atol=1e-5)


@pytest.mark.integration
def test_cli_embeds_a_cached_id_like_its_folder(minilm_cache: tuple[Path, Path], tmp_path: Path) -> None:
    """``seqpool embed t.txt --model acme/minilm-cls`` in a fresh process writes the folder's array."""
    hf_home, snapshot = minilm_cache
    texts = tmp_path / "t.txt"
    texts.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    by_folder = CliRunner().invoke(main, ["embed", str(texts), "--model", str(snapshot),
                                          "-o", str(tmp_path / "folder.npy")])
    assert by_folder.exit_code == 0, (by_folder.output, by_folder.exception)
    out = tmp_path / "out.npy"
    result = subprocess.run([*CLI, "embed", str(texts), "--model", MINILM_ID, "-o", str(out)],
                            capture_output=True, text=True, env=offline_cache_env(hf_home), cwd=tmp_path,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = [line for line in result.stderr.splitlines() if line.startswith("wrote ")]
    assert summary, result.stderr
    assert re.search(r"\bcls\b", summary[-1].replace(str(out), "")), summary[-1]
    expected = np.load(tmp_path / "folder.npy")
    rows = np.load(out)
    assert rows.shape == expected.shape
    assert float(np.max(np.abs(rows - expected))) <= 1e-6


# -- an id that is not cached, offline ------------------------------------------------------

def test_missing_id_offline_is_a_seqpool_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline and not cached: a SeqpoolError naming the id and the cache/offline cause."""
    (tmp_path / "hf" / "hub").mkdir(parents=True)
    use_offline_cache(monkeypatch, tmp_path / "hf")
    with pytest.raises(seqpool.SeqpoolError) as raised:
        Encoder(MISSING_ID)
    message = str(raised.value)
    assert MISSING_ID in message
    assert "offline" in message.lower() or "cache" in message.lower(), message


def test_cli_missing_id_offline_is_one_line(tmp_path: Path) -> None:
    """The CLI: exit 1, one line on stderr, no traceback, no output file."""
    (tmp_path / "hf" / "hub").mkdir(parents=True)
    texts = tmp_path / "t.txt"
    texts.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    out = tmp_path / "out.npy"
    result = subprocess.run([*CLI, "embed", str(texts), "--model", MISSING_ID, "-o", str(out)],
                            capture_output=True, text=True, env=offline_cache_env(tmp_path / "hf"),
                            cwd=tmp_path, timeout=300)
    assert result.returncode == 1, (result.returncode, result.stderr[-3000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert MISSING_ID in lines[0]
    assert "offline" in lines[0].lower() or "cache" in lines[0].lower(), lines[0]
    assert not out.exists()
    assert not any(path.suffix == ".npy" for path in tmp_path.iterdir())
