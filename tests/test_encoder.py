"""seqpool.Encoder: model defaults, batching, layers, one pass for all strategies, bf16, decoders."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from seqpool.encoder import Encoder, ordered_map, pack_batches
from seqpool.errors import PoolingWarning, SeqpoolError
from seqpool.pooling import STRATEGIES

TEXTS = ["the cat sat on the mat", "hello", "", "a very good film , not boring at all", "hello",
         "dog " * 30, "it was bad", "x"]


def one_by_one(encoder, texts, strategy="mean"):
    return np.stack([encoder.encode([text], strategy)[strategy][0] for text in texts])


# -- defaults read from a sentence-transformers directory --------------------------------------


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("pooling,normalize", [("cls", True), ("max", False), ("weighted_mean", True)])
def test_sentence_transformers_pooling_config_sets_the_defaults(make_st_model_dir, pooling, normalize, legacy):
    encoder = Encoder(make_st_model_dir(pooling, normalize=normalize, legacy=legacy))
    assert (encoder.default_strategy, encoder.default_normalize) == (pooling, normalize)
    vectors = encoder.encode(TEXTS[:3])
    assert list(vectors) == [pooling]
    norms = np.linalg.norm(vectors[pooling], axis=1)
    assert np.allclose(norms, 1.0, atol=1e-5) == normalize


def test_plain_model_defaults_to_mean_without_normalisation(tiny_bert_encoder):
    assert (tiny_bert_encoder.default_strategy, tiny_bert_encoder.default_normalize) == ("mean", False)


def test_sentence_bert_config_sets_max_length(make_st_model_dir):
    directory = make_st_model_dir("mean")
    (directory / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 5}), encoding="utf-8")
    encoder = Encoder(directory)
    assert encoder.max_length == 5
    assert max(len(ids) for ids in encoder.tokenize(TEXTS)) == 5
    assert Encoder(directory, max_length=7).max_length == 7


# -- built from a model and tokenizer: the same constructor, settings passed in -----------------------


def test_a_model_object_with_its_folders_spec_gives_the_loaded_encoders_vectors(make_st_model_dir):
    loaded = Encoder(make_st_model_dir("cls", normalize=True))
    built = Encoder(loaded.model, tokenizer=loaded.tokenizer, spec=loaded.spec)
    wrapped = Encoder.from_model(loaded.model, loaded.tokenizer, spec=loaded.spec)
    for encoder in (built, wrapped):
        assert (encoder.default_strategy, encoder.default_normalize, encoder.max_length) == ("cls", True,
                                                                                             loaded.max_length)
        assert (encoder.prompts, encoder.default_prompt_name, encoder.include_prompt) == ({}, None, True)
        np.testing.assert_array_equal(encoder.encode(TEXTS)["cls"], loaded.encode(TEXTS)["cls"])


def test_settings_passed_to_the_constructor_replace_the_models_own(make_st_model_dir):
    loaded = Encoder(make_st_model_dir("cls", normalize=True))
    built = Encoder(loaded.model, tokenizer=loaded.tokenizer, spec=loaded.spec, default_strategy="max",
                    default_normalize=False)
    assert (built.default_strategy, built.default_normalize) == ("max", False)
    with pytest.warns(PoolingWarning, match="trained with cls pooling; max departs"):  # still not the model's own
        ours = built.encode(TEXTS)["max"]
    with pytest.warns(PoolingWarning):
        np.testing.assert_array_equal(ours, loaded.encode(TEXTS, "max", normalize=False)["max"])


def test_prompts_are_passed_in_and_used_by_encode(tiny_bert_encoder):
    prompted = Encoder(tiny_bert_encoder.model, tokenizer=tiny_bert_encoder.tokenizer,
                       prompts={"query": "the film: ", "none": ""}, default_prompt_name="query", include_prompt=False)
    assert (prompted.prompts, prompted.default_prompt_name, prompted.include_prompt) == (
        {"query": "the film: ", "none": ""}, "query", False)
    expected = tiny_bert_encoder.encode(TEXTS, prompt="the film: ", include_prompt=False)["mean"]
    np.testing.assert_array_equal(prompted.encode(TEXTS)["mean"], expected)
    np.testing.assert_array_equal(prompted.encode(TEXTS, prompt_name="none")["mean"],
                                  tiny_bert_encoder.encode(TEXTS)["mean"])
    assert not np.allclose(expected, tiny_bert_encoder.encode(TEXTS)["mean"], atol=1e-3)


def test_no_module_sets_an_encoders_settings_from_outside():
    import re
    from pathlib import Path

    import seqpool

    root = Path(seqpool.__file__).parent
    settings_ = "prompts|default_prompt_name|include_prompt|default_strategy|default_normalize|spec|head|last_stats"
    offenders = [f"{path.relative_to(root)}:{number}" for path in sorted(root.rglob("*.py"))
                 for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
                 if re.search(rf"\bencoder\.({settings_})\s*=[^=]", line)]
    assert offenders == []  # passed to Encoder(...) instead


# -- statistics come back with the vectors -------------------------------------------------------------


def test_return_stats_gives_the_vectors_and_what_the_call_did(tiny_bert_dir):
    encoder = Encoder(tiny_bert_dir, max_length=6)
    texts = ["a b", "the cat sat on the mat and more", "x"]
    vectors, stats = encoder.encode(texts, ["mean", "max"], return_stats=True)
    plain = encoder.encode(texts, ["mean", "max"])
    assert list(vectors) == list(plain) == ["mean", "max"]
    for strategy in plain:
        np.testing.assert_array_equal(vectors[strategy], plain[strategy])
    assert (stats.texts, stats.truncated, stats.inputs, stats.truncated_rows) == (3, 1, 3, (1,))
    _, short_stats = encoder.encode(texts[:1], return_stats=True)
    assert (short_stats.texts, short_stats.truncated) == (1, 0)
    rows_vectors, table, chunk_stats = encoder.encode_chunks(texts, "mean", window=2, return_stats=True)
    plain_vectors, plain_table = encoder.encode_chunks(texts, "mean", window=2)
    np.testing.assert_array_equal(rows_vectors["mean"], plain_vectors["mean"])
    np.testing.assert_array_equal(table["doc"], plain_table["doc"])
    assert chunk_stats.texts == 3 and chunk_stats.truncated == 0 and chunk_stats.inputs >= 3
    with pytest.raises(SeqpoolError, match="return_stats"):
        encoder.encode(texts, return_stats="yes")


# -- batching -------------------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 60), max_size=80), st.integers(1, 16), st.integers(1, 200), st.integers(1, 100))
def test_pack_batches_covers_every_text_once_under_the_budget(lengths, batch_size, budget, min_tokens):
    batches = pack_batches(lengths, batch_size, budget, min_tokens)
    flat = np.concatenate(batches) if batches else np.array([], dtype=int)
    assert sorted(flat.tolist()) == list(range(len(lengths)))
    ordered = [lengths[i] for i in flat]
    assert ordered == sorted(lengths, reverse=True)
    for batch in batches:
        assert 1 <= len(batch) <= batch_size
        longest = max(lengths[i] for i in batch)
        assert len(batch) == 1 or len(batch) * longest <= budget
        same = sum(lengths[i] == longest for i in batch)
        assert same == len(batch) or same * longest < min_tokens  # padding only to fill a small batch


def test_pack_batches_prefers_batches_without_padding():
    lengths = [5] * 10 + [4] * 2 + [3] * 10  # the two 4s are too few for a batch of their own
    batches = pack_batches(lengths, batch_size=32, token_budget=1000, min_tokens=20)
    assert [sorted({lengths[i] for i in batch}) for batch in batches] == [[5], [3, 4]]


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(), max_size=40), st.integers(1, 4))
def test_ordered_map_keeps_order_with_any_number_of_workers(items, workers):
    assert list(ordered_map(lambda x: 2 * x, items, workers)) == [2 * x for x in items]


def test_ordered_map_bounds_work_in_flight_and_propagates_errors():
    started = []

    def work(x):
        started.append(x)
        if x == 5:
            raise ValueError("bad item")
        return x

    results = ordered_map(work, range(100), workers=2)
    assert next(results) == 0
    assert len(started) <= 5  # 2 * workers queued, plus the one just taken: not all 100
    with pytest.raises(ValueError, match="bad item"):
        list(results)


def test_parallel_batches_match_one_at_a_time_and_restore_threads(tiny_bert_dir):
    threads = torch.get_num_threads()
    serial = Encoder(tiny_bert_dir, workers=1).encode(TEXTS, batch_size=2)["mean"]
    parallel = Encoder(tiny_bert_dir, workers=3).encode(TEXTS, batch_size=2)["mean"]
    np.testing.assert_allclose(parallel, serial, atol=1e-6)
    assert torch.get_num_threads() == threads
    with pytest.raises(SeqpoolError, match="workers must be at least 1"):
        Encoder(tiny_bert_dir, workers=0)


def test_rows_come_back_in_input_order(tiny_bert_encoder):
    batched = tiny_bert_encoder.encode(TEXTS, batch_size=3)["mean"]
    np.testing.assert_allclose(batched, one_by_one(tiny_bert_encoder, TEXTS), atol=1e-5)
    order = np.random.default_rng(0).permutation(len(TEXTS))
    shuffled = tiny_bert_encoder.encode([TEXTS[i] for i in order], batch_size=3)["mean"]
    np.testing.assert_allclose(shuffled, batched[order], atol=1e-5)


def test_hidden_states_batches_are_length_sorted_and_masked(tiny_bert_encoder):
    seen = []
    for rows, hidden, mask in tiny_bert_encoder.hidden_states(TEXTS, batch_size=2):
        assert hidden.dtype == torch.float32 and hidden.shape[:2] == mask.shape and mask.dtype == torch.bool
        assert hidden.shape[2] == tiny_bert_encoder.hidden_size
        assert not hidden.requires_grad
        lengths = mask.sum(dim=1).tolist()
        assert max(lengths) == mask.shape[1]  # padded only to the batch's longest text
        seen.extend(zip(rows.tolist(), lengths))
    token_counts = [len(ids) for ids in tiny_bert_encoder.tokenize(TEXTS)]
    assert sorted(seen) == list(enumerate(token_counts))
    assert [n for _, n in seen] == sorted(token_counts, reverse=True)


def test_token_states_are_in_input_order(tiny_bert_encoder):
    states = tiny_bert_encoder.token_states(TEXTS, batch_size=3)
    assert states.lengths().tolist() == [len(ids) for ids in tiny_bert_encoder.tokenize(TEXTS)]
    np.testing.assert_allclose(states.pool(["mean"])["mean"], tiny_bert_encoder.encode(TEXTS)["mean"], atol=1e-6)


def test_all_strategies_from_one_pass_equal_separate_passes(tiny_bert_encoder, monkeypatch):
    forward_calls = []
    real_forward = tiny_bert_encoder.forward_tokens
    monkeypatch.setattr(tiny_bert_encoder, "forward_tokens", lambda batch: forward_calls.append(1) or real_forward(batch))
    together = tiny_bert_encoder.encode(TEXTS, STRATEGIES, batch_size=4)
    passes_for_all = len(forward_calls)
    for strategy in STRATEGIES:
        forward_calls.clear()
        alone = tiny_bert_encoder.encode(TEXTS, strategy, batch_size=4)[strategy]
        np.testing.assert_array_equal(together[strategy], alone)
        assert len(forward_calls) == passes_for_all  # six strategies cost what one does


def test_unknown_strategy_is_a_user_error(tiny_bert_encoder):
    with pytest.raises(SeqpoolError, match="unknown pooling strategy"):
        tiny_bert_encoder.encode(TEXTS, ["mean", "median"])
    with pytest.raises(SeqpoolError, match="not a single string"):
        tiny_bert_encoder.encode("one text")


# -- layers, dtype, decoders -------------------------------------------------------------------


def reference_hidden_states(encoder, text):
    inputs = encoder.tokenizer([text], return_tensors="pt")
    with torch.no_grad():
        return encoder.model(**inputs, output_hidden_states=True).hidden_states


@pytest.mark.parametrize("layer", [0, 1, -1, (-2, -1), (0, 1, 2)])
def test_layer_choice_matches_the_models_hidden_states(tiny_bert_dir, layer):
    encoder = Encoder(tiny_bert_dir, layer=layer)
    layers = (layer,) if isinstance(layer, int) else layer
    text = "the cat sat on the mat"
    reference = torch.stack([reference_hidden_states(encoder, text)[i] for i in layers]).mean(dim=0)[0]
    np.testing.assert_allclose(encoder.encode([text])["mean"][0], reference.mean(dim=0).numpy(), atol=1e-5)


def test_layer_out_of_range_is_a_user_error(tiny_bert_dir):
    with pytest.raises(SeqpoolError, match=r"hidden states 0\.\.2"):
        Encoder(tiny_bert_dir, layer=3)


def test_bf16_runs_in_bf16_and_stays_close_to_fp32(tiny_bert_dir, tiny_bert_encoder):
    encoder = Encoder(tiny_bert_dir, dtype="bf16")
    assert next(encoder.model.parameters()).dtype == torch.bfloat16
    low = encoder.encode(TEXTS, normalize=True)["mean"]
    full = tiny_bert_encoder.encode(TEXTS, normalize=True)["mean"]
    assert low.dtype == np.float32
    assert float((low * full).sum(axis=1).min()) > 0.99


def test_unsupported_dtype_is_a_user_error(tiny_bert_dir):
    with pytest.raises(SeqpoolError, match="use fp32 or bf16"):
        Encoder(tiny_bert_dir, dtype="fp8")


@pytest.mark.parametrize("strategy", ["last", "weighted_mean", "mean"])
def test_decoder_without_pad_token_is_unaffected_by_batching(tiny_gpt2_encoder, strategy):
    assert tiny_gpt2_encoder.tokenizer.pad_token is None
    assert tiny_gpt2_encoder.tokenizer.padding_side == "left"
    batched = tiny_gpt2_encoder.encode(TEXTS, strategy, batch_size=4)[strategy]
    np.testing.assert_allclose(batched, one_by_one(tiny_gpt2_encoder, TEXTS, strategy), atol=1e-5)
    assert not batched[TEXTS.index("")].any()  # no tokens at all: a zero row, not NaN


def test_decoder_last_state_is_the_unpadded_last_token(tiny_gpt2_encoder):
    text = "the cat sat on the mat"
    reference = reference_hidden_states(tiny_gpt2_encoder, text)[-1][0, -1]
    batched = tiny_gpt2_encoder.encode([text, "hello world and much more text here"], "last")["last"][0]
    np.testing.assert_allclose(batched, reference.numpy(), atol=1e-5)


# -- loading ---------------------------------------------------------------------------------------


def test_unknown_model_or_file_path_is_a_user_error(tmp_path):
    with pytest.raises(SeqpoolError, match="nothing-here does not exist"):
        Encoder(tmp_path / "nothing-here")
    with pytest.raises(SeqpoolError, match="the folder holds no loadable model"):
        Encoder(tmp_path)  # a folder, but no model in it
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(SeqpoolError, match="is a file"):
        Encoder(tmp_path / "weights.bin")


def test_corrupt_weights_are_a_user_error(tiny_bert_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_bert_dir, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(SeqpoolError, match="cannot load model .*broken"):
        Encoder(broken)


def test_remote_code_is_off_unless_asked(tiny_bert_dir, monkeypatch):
    import transformers

    seen = []
    real = transformers.AutoModel.from_pretrained
    monkeypatch.setattr(transformers.AutoModel, "from_pretrained",
                        lambda *a, **k: seen.append(k.get("trust_remote_code")) or real(*a, **k))
    Encoder(tiny_bert_dir)
    Encoder(tiny_bert_dir, trust_remote_code=True)
    assert seen == [False, True]


# -- the packaged model ------------------------------------------------------------------------


@pytest.mark.integration
def test_default_model_matches_sentence_transformers(minilm_path, senteval_dir):
    from sentence_transformers import SentenceTransformer

    texts = [json.loads(line)["text"] for line in open(senteval_dir / "mr.jsonl", encoding="utf-8")][:96]
    texts += ["", "a", "word " * 400]  # empty, tiny, and longer than max_seq_length (256)
    encoder = Encoder()
    assert (encoder.default_strategy, encoder.default_normalize, encoder.max_length) == ("mean", True, 256)
    ours = encoder.encode(texts)["mean"]
    theirs = SentenceTransformer(str(minilm_path), device="cpu").encode(texts, batch_size=32)
    assert float(np.abs(ours - theirs).max()) <= 1e-5


# -- the Encoder methods explain, word_embeddings and the pipeline use ----------------------------------


def test_tokenize_with_offsets_matches_tokenize(tiny_bert_encoder):
    texts = ["the cat sat", "", "hello   world", "dog " * 100]
    detailed = tiny_bert_encoder.tokenize_with_offsets(texts)
    assert [item.ids for item in detailed] == tiny_bert_encoder.tokenize(texts)
    for text, item in zip(texts, detailed):
        assert len(item.tokens) == len(item.offsets) == len(item.word_ids) == len(item.ids)
        assert item.tokens[0] == "[CLS]" and item.tokens[-1] == "[SEP]"
        assert item.word_ids[0] is None and item.offsets[0] == (0, 0)
        for token, (start, end), word in zip(item.tokens, item.offsets, item.word_ids):
            if word is not None:
                assert text[start:end] == token.removeprefix("##")
    assert max(len(item.ids) for item in detailed) == tiny_bert_encoder.max_length  # truncated like tokenize
    assert tiny_bert_encoder.tokenize_with_offsets([]) == []


def test_forward_batch_gives_cpu_float_states_and_bool_mask(tiny_bert_encoder, tiny_gpt2_encoder):
    ids = tiny_bert_encoder.tokenize(["a b c", "a"])
    hidden, mask = tiny_bert_encoder.forward_batch(tiny_bert_encoder.collate(ids))
    assert hidden.dtype == torch.float32 and hidden.device.type == "cpu" and mask.dtype == torch.bool
    assert mask.sum(dim=1).tolist() == [len(row) for row in ids]
    hidden, mask = tiny_gpt2_encoder.forward_batch(tiny_gpt2_encoder.collate([[], []]))  # no tokens at all
    assert hidden.shape == (2, 1, tiny_gpt2_encoder.hidden_size) and not bool(mask.any())


def test_text_batches_come_in_input_order_with_their_tokens(tiny_bert_encoder):
    batches = list(tiny_bert_encoder.text_batches(TEXTS, batch_size=3))
    assert [b.start for b in batches] == [0, 3, 6]
    assert [text for b in batches for text in b.texts] == TEXTS
    reference = tiny_bert_encoder.token_states(TEXTS)
    for batch in batches:
        assert len(batch.tokens) == len(batch.texts) == batch.hidden_states.shape[0]
        for row, tokenized in enumerate(batch.tokens):
            index = batch.start + row
            assert batch.attention_mask[row].sum() == len(tokenized.ids)
            got = batch.hidden_states[row, :len(tokenized.ids)]
            expected = reference.subset([index]).states
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_text_batches_need_a_fast_tokenizer(tiny_bert_encoder):
    import copy
    from types import SimpleNamespace

    encoder = copy.copy(tiny_bert_encoder)
    encoder.tokenizer = SimpleNamespace(is_fast=False)
    with pytest.raises(SeqpoolError, match="fast tokenizer"):
        list(encoder.text_batches(["cat"]))
    with pytest.raises(SeqpoolError, match="fast tokenizer"):
        encoder.word_embeddings(["cat"])


def test_word_embeddings_method_and_function_agree(tiny_bert_encoder):
    from seqpool.encoder import word_embeddings

    texts = ["the cats sat", "hello"]
    for got, expected in zip(word_embeddings(tiny_bert_encoder, texts), tiny_bert_encoder.word_embeddings(texts)):
        np.testing.assert_array_equal(got, expected)
    with pytest.raises(SeqpoolError, match="must be a seqpool.Encoder"):
        word_embeddings(object(), texts)


def test_encode_leaves_torch_threads_as_they_were(tiny_bert_dir):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        Encoder(tiny_bert_dir, workers=2).encode(TEXTS, batch_size=2)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_only_the_encoder_calls_the_tokenizer_or_model():
    import re
    from pathlib import Path

    import seqpool

    root = Path(seqpool.__file__).parent
    offenders = [f"{path.relative_to(root)}:{number}" for path in sorted(root.rglob("*.py"))
                 if path.name != "encoder.py"
                 for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
                 if re.search(r"\.(tokenizer|model)\(", line)]
    assert offenders == []  # explain, pipeline, local, embed... go through Encoder methods


def test_fingerprint_is_stable_across_encodes_and_sees_the_layer(tiny_bert_dir):
    encoder = Encoder(tiny_bert_dir)
    before = encoder.fingerprint()  # the tokenizer has not been called yet
    encoder.encode(TEXTS)  # a fast tokenizer stores this call's truncation settings
    list(encoder.text_batches(TEXTS[:2]))
    assert encoder.fingerprint() == before
    assert Encoder(tiny_bert_dir, layer=1).fingerprint()["layers"] == [1]
    assert Encoder(tiny_bert_dir, max_length=5).fingerprint() != before
