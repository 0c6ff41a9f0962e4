"""Parity with sentence-transformers across model families and sentence-transformers heads.

Why: ``seqpool.Encoder(folder)`` promises the vectors the folder's own sentence-transformers
pipeline gives. Each row builds a tiny random model of one family (:mod:`model_zoo`), wraps
it in a sentence-transformers folder with sentence-transformers' own modules, and compares
``Encoder(folder).encode(texts)`` (the model's default strategy and normalisation) with
``SentenceTransformer(folder).encode`` in fp32, to 1e-5.

The reference encodes **one text at a time**: then it never pads, so its result does not
depend on its padding side (and sentence-transformers' batched ``weightedmean`` is wrong
under left padding). seqpool batches texts of different lengths, padded on the right, so
the padding case is on seqpool's side. The ``leftpad`` rows check the other direction: the
reference runs all texts in one batch, padded on the left like Qwen's tokenizer.

The matrix gives every family its natural head (encoders mean or cls, decoders lasttoken or
weightedmean, + Normalize) and spreads the rest -- Dense layers with and without bias, one
and two of them, several activations, LayerNorm, combined pooling modes, prompts with and
without ``include_prompt``, ``max_seq_length``, ``do_lower_case`` -- across families, so the
file stays fast. Family folders are built once per session.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Union

import numpy as np
import pytest
import torch

from model_zoo import build_family, build_sentence_transformers_folder

pytest.importorskip("sentence_transformers")

TEXTS: tuple[str, ...] = (
    "the cat sat on the mat",
    "Hello world!",
    "a very good film, not boring at all",
    "dog",
    "\u00dcn\u00efc\u00f6d\u00e9 text: 42 tokens?",
    "the story was " * 6 + "great",
)
PROMPTS: dict[str, str] = {
    "query": "query: ",
    "document": "title: none | text: ",
    "instruct": "Instruct: retrieve a passage\nQuery:",
}
ACTIVATIONS: dict[str, Callable[[], torch.nn.Module]] = {
    "tanh": torch.nn.Tanh, "identity": torch.nn.Identity, "gelu": torch.nn.GELU, "relu": torch.nn.ReLU,
}
TOLERANCE = 1e-5


@dataclass(frozen=True)
class Row:
    """One sentence-transformers folder over one family, and how to encode with it.

    ``dense``: ``(out_features, bias, activation name)`` per layer. ``prompt``: the
    ``prompt_name`` passed to both encoders; ``default_prompt``: the folder's
    ``default_prompt_name`` (no prompt passed). ``leftpad``: the reference encodes all texts in
    one left-padded batch instead of one at a time.
    """

    family: str
    pooling: Union[str, tuple[str, ...]]
    dense: tuple[tuple[int, bool, str], ...] = ()
    layer_norm: bool = False
    normalize: bool = True
    prompt: str | None = None
    default_prompt: str | None = None
    include_prompt: bool = True
    max_seq_length: int | None = None
    do_lower_case: bool = False
    legacy_config: bool = False
    leftpad: bool = False

    @property
    def id(self) -> str:
        parts = [self.family, self.pooling if isinstance(self.pooling, str) else "+".join(self.pooling)]
        parts += [f"dense{out}{activation}{'' if bias else 'nobias'}" for out, bias, activation in self.dense]
        parts += ["layernorm"] * self.layer_norm + ["normalize"] * self.normalize
        if self.prompt or self.default_prompt:
            parts.append(f"{'prompt' if self.prompt else 'defaultprompt'}{self.prompt or self.default_prompt}")
            parts += [] if self.include_prompt else ["noinclude"]
        parts += [f"maxlen{self.max_seq_length}"] if self.max_seq_length else []
        parts += ["lower"] * self.do_lower_case + ["legacyconfig"] * self.legacy_config + ["leftpad"] * self.leftpad
        return "-".join(parts)


ROWS: tuple[Row, ...] = (
    # each family's natural head
    Row("bert", "mean"),                                         # all-MiniLM style
    Row("roberta", "mean"),                                      # e5 / XLM-R style
    Row("mpnet", "mean"),                                        # all-mpnet style
    Row("distilbert", "cls", normalize=False),                   # TAS-B style: cls, dot product
    Row("deberta_v2", "mean"),
    Row("modernbert", "cls"),                                    # gte-modernbert style
    Row("t5", "mean"),
    Row("t5", "mean", dense=((32, False, "identity"),)),         # sentence-T5 style
    Row("gpt2", "weightedmean", normalize=False),                # SGPT style
    Row("qwen3", "lasttoken", prompt="instruct"),                # Qwen3-Embedding style
    Row("llama", "mean"),
    Row("llama_eos", "lasttoken", default_prompt="query"),       # e5-mistral style
    Row("gemma3", "mean"),
    Row("gemma3", "mean", dense=((128, False, "identity"), (32, False, "identity")), prompt="query"),  # EmbeddingGemma
    # heads and settings, spread over the families
    Row("bert", "cls", dense=((128, True, "tanh"),)),
    Row("bert", "max", normalize=False),
    Row("bert", "mean", max_seq_length=8),
    Row("bert", "mean", max_seq_length=8, legacy_config=True),
    Row("roberta", "mean_sqrt_len_tokens", prompt="query", include_prompt=False),
    Row("roberta", "mean", do_lower_case=True),
    Row("roberta", "mean", do_lower_case=True, legacy_config=True),
    Row("mpnet", ("cls", "mean")),
    Row("distilbert", "mean", dense=((64, True, "gelu"), (16, True, "relu")), normalize=False),
    Row("deberta_v2", "weightedmean", layer_norm=True),
    Row("modernbert", "mean", dense=((16, False, "relu"),), prompt="document", include_prompt=False),
    Row("gpt2", "lasttoken", dense=((32, True, "tanh"),), layer_norm=True),
    Row("qwen3", "lasttoken", leftpad=True),
    Row("qwen3", "mean", prompt="instruct", include_prompt=False, leftpad=True),
    Row("llama", ("mean", "lasttoken"), normalize=False),
    Row("llama_eos", "weightedmean", prompt="query", include_prompt=False),
    Row("gemma3", "max", layer_norm=True, normalize=False),
)


@contextlib.contextmanager
def _one_torch_thread() -> Iterator[None]:
    """Build and run the reference on one torch thread (restored after): for these tiny models
    two threads on a busy 2-core machine are tens of times slower than one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def family_dir(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``family_dir(name)``: the family's tiny model folder, built once per session."""
    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            built[name] = build_family(name, tmp_path_factory.mktemp(f"family_{name}"))
        return built[name]

    return get


def _st_folder(row: Row, family_dir: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_sentence_transformers_folder(
        family_dir(row.family), tmp_path_factory.mktemp(f"st_{row.family}"), pooling=row.pooling,
        include_prompt=row.include_prompt,
        dense=[(out, bias, ACTIVATIONS[activation]()) for out, bias, activation in row.dense],
        layer_norm=row.layer_norm, normalize=row.normalize, max_seq_length=row.max_seq_length,
        do_lower_case=row.do_lower_case, legacy_config=row.legacy_config, prompts=PROMPTS,
        default_prompt_name=row.default_prompt)


def _reference(folder: Path, row: Row) -> np.ndarray:
    """sentence-transformers' vectors for TEXTS: one text per call, or (``leftpad``) one batch."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
    tokenizer = model.tokenizer
    # the folder is what the row says (checks of the builder, not of seqpool)
    if row.max_seq_length:
        assert model.max_seq_length == row.max_seq_length
    if row.do_lower_case:
        assert tokenizer.tokenize("Hello World") == tokenizer.tokenize("hello world")
    if row.family == "t5":
        from safetensors import safe_open

        assert type(model[0].auto_model).__name__ == "T5EncoderModel"
        with safe_open(str(folder / "model.safetensors"), "pt") as weights:
            assert any(key.startswith("decoder.") for key in weights.keys())
    if tokenizer.pad_token is None:
        # sentence-transformers asks for padding=True even for one text, which raises without a
        # pad token (GPT-2, Llama); a lone text is never padded, so which token it is never matters.
        tokenizer.pad_token = tokenizer.eos_token
    if row.leftpad:
        assert tokenizer.padding_side == "left"
        prompt = PROMPTS[row.prompt] if row.prompt else ""
        mask = tokenizer([prompt + text for text in TEXTS], padding=True, return_tensors="pt")["attention_mask"]
        assert bool((mask[:, 0] == 0).any()), "the reference batch should be left-padded"
        return model.encode(list(TEXTS), prompt_name=row.prompt, batch_size=len(TEXTS), convert_to_numpy=True)
    return np.stack([model.encode([text], prompt_name=row.prompt, convert_to_numpy=True)[0] for text in TEXTS])


@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_encoder_matches_sentence_transformers(row: Row, family_dir: Callable[[str], Path],
                                               tmp_path_factory: pytest.TempPathFactory) -> None:
    from seqpool import Encoder

    with _one_torch_thread():
        folder = _st_folder(row, family_dir, tmp_path_factory)
        theirs = _reference(folder, row)
    result = Encoder(folder).encode(list(TEXTS), prompt_name=row.prompt)
    assert len(result) == 1
    ours = next(iter(result.values()))
    assert ours.shape == theirs.shape
    assert ours.dtype == np.float32
    assert float(np.abs(ours - theirs).max()) <= TOLERANCE


@pytest.mark.parametrize("module_type, module_dir", [("sentence_transformers.models.LSTM", "2_LSTM"),
                                                     ("acme.Custom", "2_Custom")],
                         ids=["st-lstm", "custom"])
def test_unknown_module_type_is_refused_by_name_and_path(module_type: str, module_dir: str,
                                                         family_dir: Callable[[str], Path],
                                                         tmp_path_factory: pytest.TempPathFactory) -> None:
    """A module seqpool does not implement would change the vectors; loading must say which one."""
    from seqpool import Encoder, SeqpoolError

    with _one_torch_thread():
        folder = _st_folder(Row("bert", "mean"), family_dir, tmp_path_factory)
    modules = json.loads((folder / "modules.json").read_text(encoding="utf-8"))
    normalize = modules.pop()  # Transformer, Pooling, Normalize -> Transformer, Pooling, <module>, Normalize
    shutil.move(folder / normalize["path"], folder / "3_Normalize")
    modules += [{"idx": 2, "name": "2", "path": module_dir, "type": module_type},
                {**normalize, "idx": 3, "name": "3", "path": "3_Normalize"}]
    (folder / module_dir).mkdir()
    (folder / module_dir / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 32, "hidden_dim": 16, "num_layers": 1, "dropout": 0.0, "bidirectional": True}),
        encoding="utf-8")
    (folder / "modules.json").write_text(json.dumps(modules, indent=2), encoding="utf-8")

    with pytest.raises(SeqpoolError) as raised:
        Encoder(folder)
    message = str(raised.value)
    assert "\n" not in message
    assert module_type in message and module_dir in message


@pytest.fixture(scope="session")
def reference(family_dir: Callable[[str], Path],
              tmp_path_factory: pytest.TempPathFactory) -> Callable[[Row], tuple[Path, np.ndarray]]:
    """``reference(row)``: the row's folder and sentence-transformers' vectors, built once per session."""
    built: dict[str, tuple[Path, np.ndarray]] = {}

    def get(row: Row) -> tuple[Path, np.ndarray]:
        if row.id not in built:
            with _one_torch_thread():
                folder = _st_folder(row, family_dir, tmp_path_factory)
                built[row.id] = folder, _reference(folder, row)
        return built[row.id]

    return get


def _close(ours: np.ndarray, theirs: np.ndarray, path: str) -> None:
    assert ours.shape == theirs.shape, path
    assert float(np.abs(ours - theirs).max()) <= TOLERANCE, path


@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_every_entry_point_gives_the_model_s_own_vectors(row: Row, reference, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The same matrix through the Hub id (a faked offline cache), ``seqpool embed``, the
    Hugging Face pipeline and the Ray engine's ``Embedder``: each reads the model whole."""
    from click.testing import CliRunner
    from test_hub_models import put_in_cache, use_offline_cache
    from transformers import pipeline

    import seqpool.pipeline  # noqa: F401 (registers the "seqpool" task)
    from seqpool import Embedder, Encoder
    from seqpool.cli import main

    folder, theirs = reference(row)
    texts = list(TEXTS)
    use_offline_cache(monkeypatch, tmp_path / "hf")
    repo = f"acme/{row.id.replace('+', '_')}"[:90]
    put_in_cache(folder, tmp_path / "hf", repo, "files")
    _close(next(iter(Encoder(repo).encode(texts, prompt_name=row.prompt).values())), theirs, "hub id")

    corpus = tmp_path / "texts.jsonl"
    corpus.write_text("".join(json.dumps({"text": text}) + "\n" for text in texts), encoding="utf-8")
    prompt = ["--prompt-name", row.prompt] if row.prompt else []
    result = CliRunner().invoke(main, ["embed", str(corpus), "--model", str(folder), "-o", str(tmp_path / "o.npy"),
                                       "--quiet", *prompt])
    assert result.exit_code == 0, result.output
    _close(np.load(tmp_path / "o.npy"), theirs, "seqpool embed")

    pipe = pipeline("seqpool", model=str(folder), device="cpu")
    kwargs = {"prompt_name": row.prompt} if row.prompt else {}
    _close(np.stack(pipe(texts, **kwargs)), theirs, "pipeline")

    embedder = Embedder(str(folder), prompt_name=row.prompt)
    _close(next(iter(embedder.embed(texts).values())), theirs, "Embedder")


FAMILY_KIND = {"t5": "encoder-decoder", "gpt2": "decoder", "qwen3": "decoder", "llama": "decoder",
               "llama_eos": "decoder", "gemma3": "decoder"}


@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_inspect_says_what_each_model_is(row: Row, reference) -> None:
    """``seqpool inspect``'s record of every matrix model: its family, the pipeline the Encoder
    runs (pooling, head, normalisation) and the width sentence-transformers gives."""
    from seqpool import Encoder
    from seqpool.model_info import describe_model, format_description

    folder, theirs = reference(row)
    info = describe_model(folder)
    assert info["family"] == FAMILY_KIND.get(row.family, "encoder")
    assert info["output_width"] == theirs.shape[1]
    assert info["pipeline"] == Encoder(folder).pipeline()
    assert info["pipeline"].startswith(info["pooling"]) and info["normalize"] is row.normalize
    assert len(info["head"]) == len(row.dense) + row.layer_norm
    assert f"{info['pipeline']} -> {theirs.shape[1]} values" in format_description(info)
