"""Tiny random Hugging Face models of many families, and sentence-transformers folders on top.

Why: parity with sentence-transformers has to hold for every architecture a user may point
``seqpool.Encoder`` at -- encoders that put ``[CLS]`` first, decoders that append an EOS and
pad on the left, T5 checkpoints whose encoder is all sentence-transformers loads -- and for
every head a sentence-transformers folder may carry (Pooling modes, Dense, LayerNorm,
Normalize, prompts). Real checkpoints are large and need the network; these build in a
fraction of a second each, offline, from a config and a fixed seed.

Every family gets a *fast* tokenizer built with the ``tokenizers`` library over a small
vocabulary (a fixed word list plus single characters, so any ASCII text tokenizes) and the
family's real special-token rule, wrapped in ``transformers.PreTrainedTokenizerFast`` and
saved next to the model:

==============  =========================================  ========================================
family          tokens around a text                       notes
==============  =========================================  ========================================
bert            ``[CLS] x [SEP]``                          lowercasing WordPiece, token_type_ids
distilbert      ``[CLS] x [SEP]``                          lowercasing WordPiece
mpnet           ``<s> x </s>`` (MPNet's cls/sep)           lowercasing WordPiece, pad id 1
deberta_v2      ``[CLS] x [SEP]``                          SentencePiece-style (Unigram, Metaspace)
modernbert      ``[CLS] x [SEP]``                          byte-level BPE
roberta         ``<s> x </s>``                             byte-level BPE, pad id 1
t5              ``x </s>``                                 Unigram + Metaspace; saved as ``T5Model``
gpt2            nothing                                    byte-level BPE, **no pad token**
qwen3           ``x <|endoftext|>`` (Qwen3-Embedding)      byte-level BPE, pad ``<|endoftext|>``,
                                                           ``padding_side="left"``
llama           ``<s> x``                                  Unigram + Metaspace, no pad token
llama_eos       ``<s> x </s>`` (``add_eos_token`` style)   as llama, pad ``<unk>``
gemma3          ``<bos> x <eos>`` (EmbeddingGemma)         ``Gemma3TextModel``, bidirectional
==============  =========================================  ========================================

``FAMILIES`` maps each name to a builder ``builder(directory) -> directory``;
:func:`build_family` builds one. :func:`build_sentence_transformers_folder` wraps a family
folder in a sentence-transformers folder made with sentence-transformers' own modules.
Nothing here touches the global RNG (``torch.random.fork_rng``).
"""

from __future__ import annotations

import json
import shutil
import string
from pathlib import Path
from typing import Any, Callable, Sequence, Union

import torch

HIDDEN = 32
LAYERS = 2
HEADS = 2
INTERMEDIATE = 64
MAX_POSITIONS = 128
MODEL_MAX_LENGTH = 128

WORDS: tuple[str, ...] = tuple(
    ("the a an and or of to in is it was this that film movie story good bad great not very funny boring "
     "cat dog sat on mat hello world seqpool pooling text tokens query passage document search result "
     "instruct represent retrieve title none task at all").split())
_LOWER = string.ascii_lowercase + string.digits
_CHARACTERS = string.ascii_letters + string.digits + string.punctuation
#: What the byte-level BPE families learn their merges from: the word list, a few times.
_BPE_CORPUS = [" ".join(WORDS), *(f"{w} {w}" for w in WORDS),
               "the cat sat on the mat", "hello world", "a very good film", "not a bad movie at all"]

#: a Dense layer of a sentence-transformers head: (out_features, bias, activation)
DenseSpec = tuple[int, bool, torch.nn.Module]
PoolingMode = Union[str, Sequence[str]]


# -- tokenizers ------------------------------------------------------------------------

def _wordpiece(specials: Sequence[str], unk: str, lowercase: bool) -> Any:
    """BERT-style WordPiece: whole words from WORDS, else single characters and ``##`` pieces."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    characters = _LOWER + string.punctuation if lowercase else _CHARACTERS
    vocab: dict[str, int] = {}
    for token in (*specials, *characters, *WORDS, *(f"##{c}" for c in characters)):
        vocab.setdefault(token, len(vocab))
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token=unk, max_input_chars_per_word=100))
    tokenizer.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                      strip_accents=None, lowercase=lowercase)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    return tokenizer


def _unigram(specials: Sequence[str], unk: str, prepend_scheme: str) -> Any:
    """SentencePiece-style Unigram over ``▁word``/``word`` pieces and single characters (no byte
    fallback: a character outside ASCII becomes the unknown token, as in T5)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    pieces: list[tuple[str, float]] = [(token, 0.0) for token in specials]
    pieces += [(f"\u2581{word}", -2.0) for word in WORDS] + [(word, -3.0) for word in WORDS]
    pieces += [("\u2581", -4.0)] + [(f"\u2581{c}", -4.5) for c in _CHARACTERS] + [(c, -5.0) for c in _CHARACTERS]
    tokenizer = Tokenizer(models.Unigram(pieces, unk_id=list(specials).index(unk), byte_fallback=False))
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme=prepend_scheme)
    tokenizer.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme=prepend_scheme)
    return tokenizer


def _byte_level_bpe(specials: Sequence[str], vocab_size: int = 400) -> Any:
    """GPT-2-style byte-level BPE: any text tokenizes (256 byte symbols), merges learnt from WORDS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(specials), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(_BPE_CORPUS, trainer=trainer)
    return tokenizer


def _around(tokenizer: Any, before: Sequence[str], after: Sequence[str]) -> None:
    """The family's rule for special tokens, as a post-processor (single text and pair)."""
    from tokenizers import processors

    single = " ".join([*before, "$A", *after])
    pair = " ".join([*before, "$A", *after, "$B:1", *(f"{token}:1" for token in after)])
    used = dict.fromkeys([*before, *after])
    tokenizer.post_processor = processors.TemplateProcessing(
        single=single, pair=pair, special_tokens=[(token, tokenizer.token_to_id(token)) for token in used])


def _wrap(tokenizer: Any, input_names: Sequence[str] = ("input_ids", "attention_mask"), **special: Any) -> Any:
    """``PreTrainedTokenizerFast`` around a ``tokenizers.Tokenizer``; ``special`` names its special
    tokens (``pad_token=None`` leaves it without one) and ``padding_side``."""
    from transformers import PreTrainedTokenizerFast

    padding_side = special.pop("padding_side", "right")
    special = {key: value for key, value in special.items() if value is not None}
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, model_max_length=MODEL_MAX_LENGTH,
                                   padding_side=padding_side, model_input_names=list(input_names), **special)


def save_random_model(model_class: type, config: Any, tokenizer: Any, directory: Path, seed: int) -> Path:
    """Initialise ``model_class`` from ``config`` with ``seed`` (global RNG untouched) and save it
    with its tokenizer."""
    directory.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = model_class(config).eval()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


# -- families -----------------------------------------------------------------------------

def build_bert(directory: Path) -> Path:
    """BERT: lowercasing WordPiece, ``[CLS] x [SEP]``, token_type_ids."""
    from transformers import BertConfig, BertModel

    backend = _wordpiece(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], "[UNK]", lowercase=True)
    _around(backend, ["[CLS]"], ["[SEP]"])
    tokenizer = _wrap(backend, ("input_ids", "token_type_ids", "attention_mask"), pad_token="[PAD]",
                      unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    config = BertConfig(vocab_size=backend.get_vocab_size(), hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                        num_attention_heads=HEADS, intermediate_size=INTERMEDIATE,
                        max_position_embeddings=MAX_POSITIONS, pad_token_id=0)
    return save_random_model(BertModel, config, tokenizer, directory, seed=10)


def build_distilbert(directory: Path) -> Path:
    """DistilBERT: BERT's tokenizer without token_type_ids."""
    from transformers import DistilBertConfig, DistilBertModel

    backend = _wordpiece(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], "[UNK]", lowercase=True)
    _around(backend, ["[CLS]"], ["[SEP]"])
    tokenizer = _wrap(backend, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
                      mask_token="[MASK]")
    config = DistilBertConfig(vocab_size=backend.get_vocab_size(), dim=HIDDEN, n_layers=LAYERS, n_heads=HEADS,
                              hidden_dim=INTERMEDIATE, max_position_embeddings=MAX_POSITIONS, pad_token_id=0)
    return save_random_model(DistilBertModel, config, tokenizer, directory, seed=11)


def build_mpnet(directory: Path) -> Path:
    """MPNet: lowercasing WordPiece whose cls/sep are ``<s>``/``</s>``; pad id 1 (positions skip it)."""
    from transformers import MPNetConfig, MPNetModel

    backend = _wordpiece(["<s>", "<pad>", "</s>", "<unk>", "<mask>"], "<unk>", lowercase=True)
    _around(backend, ["<s>"], ["</s>"])
    tokenizer = _wrap(backend, bos_token="<s>", eos_token="</s>", cls_token="<s>", sep_token="</s>",
                      pad_token="<pad>", unk_token="<unk>", mask_token="<mask>")
    config = MPNetConfig(vocab_size=backend.get_vocab_size(), hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                         num_attention_heads=HEADS, intermediate_size=INTERMEDIATE,
                         # 32 buckets: MPNetEncoder.compute_position_bias ignores the config and uses 32
                         max_position_embeddings=MAX_POSITIONS + 2, relative_attention_num_buckets=32,
                         pad_token_id=1, bos_token_id=0, eos_token_id=2)
    return save_random_model(MPNetModel, config, tokenizer, directory, seed=12)


def build_deberta_v2(directory: Path) -> Path:
    """DeBERTa-v3 style: SentencePiece (Unigram) tokenizer, ``[CLS] x [SEP]``, relative attention."""
    from transformers import DebertaV2Config, DebertaV2Model

    backend = _unigram(["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"], "[UNK]", prepend_scheme="always")
    _around(backend, ["[CLS]"], ["[SEP]"])
    tokenizer = _wrap(backend, ("input_ids", "token_type_ids", "attention_mask"), bos_token="[CLS]",
                      eos_token="[SEP]", cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]",
                      unk_token="[UNK]", mask_token="[MASK]")
    config = DebertaV2Config(vocab_size=backend.get_vocab_size(), hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                             num_attention_heads=HEADS, intermediate_size=INTERMEDIATE,
                             max_position_embeddings=MAX_POSITIONS, type_vocab_size=0, relative_attention=True,
                             max_relative_positions=-1, position_biased_input=False, pos_att_type=["p2c", "c2p"],
                             pad_token_id=0)
    for key, value in {"position_buckets": 16, "norm_rel_ebd": "layer_norm", "share_att_key": True}.items():
        setattr(config, key, value)
    return save_random_model(DebertaV2Model, config, tokenizer, directory, seed=13)


def build_modernbert(directory: Path) -> Path:
    """ModernBERT: byte-level BPE with ``[CLS] x [SEP]``, alternating local/global attention."""
    from transformers import ModernBertConfig, ModernBertModel

    backend = _byte_level_bpe(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    _around(backend, ["[CLS]"], ["[SEP]"])
    tokenizer = _wrap(backend, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
                      mask_token="[MASK]")
    config = ModernBertConfig(vocab_size=backend.get_vocab_size(), hidden_size=HIDDEN, intermediate_size=INTERMEDIATE,
                              num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                              max_position_embeddings=MAX_POSITIONS, local_attention=8,
                              layer_types=["full_attention", "sliding_attention"],
                              pad_token_id=0, cls_token_id=2, sep_token_id=3, bos_token_id=2, eos_token_id=3)
    return save_random_model(ModernBertModel, config, tokenizer, directory, seed=14)


def build_roberta(directory: Path) -> Path:
    """RoBERTa: byte-level BPE, ``<s> x </s>``, pad id 1 (positions count from it)."""
    from transformers import RobertaConfig, RobertaModel

    backend = _byte_level_bpe(["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    _around(backend, ["<s>"], ["</s>"])
    tokenizer = _wrap(backend, bos_token="<s>", eos_token="</s>", cls_token="<s>", sep_token="</s>",
                      pad_token="<pad>", unk_token="<unk>", mask_token="<mask>")
    config = RobertaConfig(vocab_size=backend.get_vocab_size(), hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                           num_attention_heads=HEADS, intermediate_size=INTERMEDIATE,
                           max_position_embeddings=MAX_POSITIONS + 2, type_vocab_size=1,
                           pad_token_id=1, bos_token_id=0, eos_token_id=2)
    return save_random_model(RobertaModel, config, tokenizer, directory, seed=15)


def build_t5(directory: Path) -> Path:
    """T5: a full encoder-decoder ``T5Model`` checkpoint (decoder weights too); ``x </s>``.

    sentence-transformers loads only its encoder (``T5EncoderModel``); ``AutoModel`` gives the
    whole ``T5Model``, which needs decoder inputs.
    """
    from transformers import T5Config, T5Model

    backend = _unigram(["<pad>", "</s>", "<unk>"], "<unk>", prepend_scheme="always")
    _around(backend, [], ["</s>"])
    tokenizer = _wrap(backend, eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    config = T5Config(vocab_size=backend.get_vocab_size(), d_model=HIDDEN, d_kv=HIDDEN // HEADS, d_ff=INTERMEDIATE,
                      num_layers=LAYERS, num_decoder_layers=LAYERS, num_heads=HEADS,
                      relative_attention_num_buckets=8, relative_attention_max_distance=32,
                      feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
                      tie_word_embeddings=False)
    return save_random_model(T5Model, config, tokenizer, directory, seed=16)


def build_gpt2(directory: Path) -> Path:
    """GPT-2: byte-level BPE, no special tokens added and no pad token."""
    from transformers import GPT2Config, GPT2Model

    backend = _byte_level_bpe(["<|endoftext|>"])
    tokenizer = _wrap(backend, bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>")
    assert tokenizer.pad_token is None
    config = GPT2Config(vocab_size=backend.get_vocab_size(), n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS,
                        n_positions=MAX_POSITIONS, bos_token_id=0, eos_token_id=0)
    return save_random_model(GPT2Model, config, tokenizer, directory, seed=17)


def build_qwen3(directory: Path) -> Path:
    """Qwen3-Embedding style: byte-level BPE whose post-processor appends ``<|endoftext|>`` (also
    the pad token; EOS is ``<|im_end|>``), padding on the left."""
    from transformers import Qwen3Config, Qwen3Model

    backend = _byte_level_bpe(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    _around(backend, [], ["<|endoftext|>"])
    tokenizer = _wrap(backend, eos_token="<|im_end|>", pad_token="<|endoftext|>", padding_side="left")
    config = Qwen3Config(vocab_size=backend.get_vocab_size(), hidden_size=HIDDEN, intermediate_size=INTERMEDIATE,
                         num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=1,
                         head_dim=HIDDEN // HEADS, max_position_embeddings=MAX_POSITIONS, tie_word_embeddings=True,
                         pad_token_id=0, bos_token_id=0, eos_token_id=2)
    return save_random_model(Qwen3Model, config, tokenizer, directory, seed=18)


def _build_llama(directory: Path, append_eos: bool) -> Path:
    from transformers import LlamaConfig, LlamaModel

    backend = _unigram(["<unk>", "<s>", "</s>"], "<unk>", prepend_scheme="first")
    _around(backend, ["<s>"], ["</s>"] if append_eos else [])
    tokenizer = _wrap(backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                      pad_token="<unk>" if append_eos else None)
    config = LlamaConfig(vocab_size=backend.get_vocab_size(), hidden_size=HIDDEN, intermediate_size=INTERMEDIATE,
                         num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=1,
                         head_dim=HIDDEN // HEADS, max_position_embeddings=MAX_POSITIONS,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0 if append_eos else None)
    return save_random_model(LlamaModel, config, tokenizer, directory, seed=19 if append_eos else 20)


def build_llama(directory: Path) -> Path:
    """Llama: ``<s> x``, no pad token."""
    return _build_llama(directory, append_eos=False)


def build_llama_eos(directory: Path) -> Path:
    """Llama with ``add_eos_token`` (e5-mistral style): ``<s> x </s>``, pad ``<unk>``."""
    return _build_llama(directory, append_eos=True)


def build_gemma3(directory: Path) -> Path:
    """EmbeddingGemma style ``Gemma3TextModel``: ``<bos> x <eos>``, bidirectional attention,
    a sliding-window layer and a global one."""
    from transformers import Gemma3TextConfig, Gemma3TextModel

    backend = _unigram(["<pad>", "<eos>", "<bos>", "<unk>"], "<unk>", prepend_scheme="never")
    _around(backend, ["<bos>"], ["<eos>"])
    tokenizer = _wrap(backend, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")
    config = Gemma3TextConfig(vocab_size=backend.get_vocab_size(), hidden_size=HIDDEN, intermediate_size=INTERMEDIATE,
                              num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=1,
                              head_dim=HIDDEN // HEADS, max_position_embeddings=MAX_POSITIONS,
                              query_pre_attn_scalar=HIDDEN // HEADS, sliding_window=8,
                              layer_types=["sliding_attention", "full_attention"], use_bidirectional_attention=True,
                              pad_token_id=0, eos_token_id=1, bos_token_id=2)
    return save_random_model(Gemma3TextModel, config, tokenizer, directory, seed=21)


FAMILIES: dict[str, Callable[[Path], Path]] = {
    "bert": build_bert,
    "roberta": build_roberta,
    "mpnet": build_mpnet,
    "distilbert": build_distilbert,
    "deberta_v2": build_deberta_v2,
    "modernbert": build_modernbert,
    "t5": build_t5,
    "gpt2": build_gpt2,
    "qwen3": build_qwen3,
    "llama": build_llama,
    "llama_eos": build_llama_eos,
    "gemma3": build_gemma3,
}


def build_family(name: str, directory: Path) -> Path:
    """Build family ``name`` (a key of :data:`FAMILIES`) into ``directory``; returns it."""
    if name not in FAMILIES:
        raise KeyError(f"unknown family {name!r}; choose one of: {', '.join(FAMILIES)}")
    return FAMILIES[name](Path(directory))


# -- sentence-transformers folders ----------------------------------------------------------

def build_sentence_transformers_folder(
    family_dir: Path, directory: Path, *, pooling: PoolingMode = "mean", include_prompt: bool = True,
    dense: Sequence[DenseSpec] = (), layer_norm: bool = False, normalize: bool = True,
    max_seq_length: int | None = None, do_lower_case: bool = False, legacy_config: bool = False,
    prompts: dict[str, str] | None = None, default_prompt_name: str | None = None, seed: int = 0,
) -> Path:
    """A sentence-transformers folder over ``family_dir``, made with sentence-transformers' own API:
    ``Transformer -> Pooling(pooling, include_prompt) -> Dense* -> LayerNorm? -> Normalize?``.

    ``dense``: ``(out_features, bias, activation)`` per layer, weights drawn with ``seed``.
    ``layer_norm``: a LayerNorm whose weight and bias are random too, so ignoring them shows.

    sentence-transformers 5+ stores ``max_seq_length`` as the tokenizer's ``model_max_length``
    and bakes ``do_lower_case`` into ``tokenizer.json`` as a Lowercase normalizer.
    ``legacy_config=True`` gives the layout of older checkpoints instead, which its loader still
    honours: both settings only in ``sentence_bert_config.json``, next to the family's own
    tokenizer files -- so a reader must apply them itself.

    T5: sentence-transformers saves only the encoder it loaded; the full ``T5Model`` checkpoint
    (``config.json`` + weights, decoder included) is put back, as repositories that ship the
    whole model have it.
    """
    from sentence_transformers import SentenceTransformer

    try:  # sentence-transformers >= 5.4; ``sentence_transformers.models`` is its deprecated alias
        from sentence_transformers.sentence_transformer.modules import Dense, LayerNorm, Normalize, Pooling, Transformer
    except ImportError:
        from sentence_transformers.models import Dense, LayerNorm, Normalize, Pooling, Transformer

    family_dir, directory = Path(family_dir), Path(directory)
    transformer = Transformer(str(family_dir), max_seq_length=max_seq_length, do_lower_case=do_lower_case)
    width = transformer.get_embedding_dimension()
    modules: list[torch.nn.Module] = [transformer, Pooling(width, pooling_mode=pooling, include_prompt=include_prompt)]
    width *= 1 if isinstance(pooling, str) else len(pooling)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for out_features, bias, activation in dense:
            modules.append(Dense(width, out_features, bias=bias, activation_function=activation))
            width = out_features
        if layer_norm:
            norm = LayerNorm(width)
            with torch.no_grad():
                norm.norm.weight.copy_(1.0 + 0.5 * torch.randn(width))
                norm.norm.bias.copy_(0.5 * torch.randn(width))
            modules.append(norm)
    if normalize:
        modules.append(Normalize())
    model = SentenceTransformer(modules=modules, device="cpu", prompts=prompts, default_prompt_name=default_prompt_name)
    model.save(str(directory))
    if transformer.config.model_type == "t5":
        for path in family_dir.iterdir():
            if path.name == "config.json" or path.suffix == ".safetensors" or path.name.endswith(".index.json"):
                shutil.copy2(path, directory / path.name)
    if legacy_config:
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy2(family_dir / name, directory / name)
        settings = {"max_seq_length": max_seq_length, "do_lower_case": do_lower_case}
        (directory / "sentence_bert_config.json").write_text(json.dumps(settings, indent=2), encoding="utf-8")
    return directory
