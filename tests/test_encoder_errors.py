"""User mistakes at the Encoder, pooling and pipeline entry points: one SeqpoolError line, early.

Devices are checked before a model loads (and GPU selection is tested with a faked
``torch.cuda``, so it runs on any CPU), lone surrogates are refused naming the text, odd
mask dtypes either work (bool, ints, 0/1 floats) or are refused (soft float masks).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import seqpool.encoder as encoder_module
from seqpool.devices import resolve_device
from seqpool.encoder import Encoder, check_texts, default_workers
from seqpool.errors import SeqpoolError
from seqpool.pooling.pooler import Pooler
from seqpool.local import avg_pool_tokens, segment_pool
from seqpool.pooling import STRATEGIES, pool, pool_many

# -- device selection: a pure function ------------------------------------------------------------


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


@pytest.mark.parametrize("device,expected", [
    (None, "cpu"), ("cpu", "cpu"), ("CPU", "cpu"), (" cpu ", "cpu"), ("cpu:0", "cpu"), (torch.device("cpu"), "cpu"),
])
def test_cpu_devices_always_resolve(no_gpu, device, expected):
    assert resolve_device(device) == torch.device(expected)


@pytest.mark.parametrize("device,message", [
    ("cuda", "needs a CUDA GPU"),
    ("cuda:0", "needs a CUDA GPU"),
    (torch.device("cuda", 1), "needs a CUDA GPU"),
    ("mps", "Apple GPU"),
    ("gpu0", "not a device seqpool can use"),
    ("gpu", "not a device seqpool can use"),
    ("", "not a device seqpool can use"),
    ("cuda:x", "not a device seqpool can use"),
    ("meta", "not a device seqpool can use"),
    (0, "must be a string"),
])
def test_unusable_devices_are_one_line_errors(no_gpu, device, message):
    with pytest.raises(SeqpoolError, match=message) as caught:
        resolve_device(device)
    assert "\n" not in str(caught.value)


def test_cpu_build_is_named_in_the_message(no_gpu, monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(SeqpoolError, match="CPU-only build.*use device='cpu'"):
        resolve_device("cuda")


@pytest.mark.parametrize("device,expected", [
    ("cuda", torch.device("cuda")), ("cuda:0", torch.device("cuda", 0)), ("cuda:1", torch.device("cuda", 1)),
    (torch.device("cuda", 1), torch.device("cuda", 1)),
])
def test_present_cuda_devices_resolve(two_gpus, device, expected):
    assert resolve_device(device) == expected


def test_cuda_index_beyond_the_device_count_is_refused(two_gpus):
    with pytest.raises(SeqpoolError, match=r"has 2 CUDA device\(s\), cuda:0..cuda:1"):
        resolve_device("cuda:2")


def test_mps_resolves_where_present(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("mps") == torch.device("mps")


@pytest.mark.parametrize("device", ["cuda", "mps", "gpu0"])
def test_encoder_checks_the_device_before_loading_anything(no_gpu, monkeypatch, tiny_bert_dir, device):
    import transformers

    def must_not_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the device was checked")

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", must_not_load)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", must_not_load)
    with pytest.raises(SeqpoolError, match="device="):
        Encoder(tiny_bert_dir, device=device)
    with pytest.raises(SeqpoolError, match="device="):
        Encoder(tiny_bert_dir / "does-not-exist", device=device)  # even before the path is looked at


def test_other_options_are_checked_before_loading(monkeypatch, tiny_bert_dir):
    import transformers

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded")))
    for kwargs, message in [({"workers": 0}, "workers must be at least 1"), ({"dtype": "fp8"}, "unsupported dtype"),
                            ({"max_length": 0}, "max_length must be at least 1"),
                            ({"workers": 1.5}, "workers must be a whole number")]:
        with pytest.raises(SeqpoolError, match=message):
            Encoder(tiny_bert_dir, **kwargs)


def test_from_model_checks_the_device_too(no_gpu, tiny_bert_encoder):
    with pytest.raises(SeqpoolError, match="needs a CUDA GPU"):
        Encoder.from_model(tiny_bert_encoder.model, tiny_bert_encoder.tokenizer, device="cuda")


def test_a_model_object_needs_its_tokenizer_and_a_name_brings_its_own(tiny_bert_dir, tiny_bert_encoder):
    with pytest.raises(SeqpoolError, match="tokenizer is needed with a model object"):
        Encoder(tiny_bert_encoder.model)
    for kwargs in ({"tokenizer": tiny_bert_encoder.tokenizer}, {"spec": tiny_bert_encoder.spec}):
        with pytest.raises(SeqpoolError, match="tokenizer and spec go with a model object"):
            Encoder(tiny_bert_dir, **kwargs)
    with pytest.raises(SeqpoolError, match="spec must be a seqpool.model_reader.ModelSpec"):
        Encoder(tiny_bert_encoder.model, tokenizer=tiny_bert_encoder.tokenizer, spec={"pooling": "cls"})


@pytest.mark.parametrize("kwargs,message", [
    ({"prompts": {"query": 1}}, "prompts must map prompt names to prompt texts"),
    ({"prompts": ["query: "]}, "prompts must map prompt names to prompt texts"),
    ({"default_prompt_name": "query"}, r"default_prompt_name 'query' is not among the prompts \(none"),
    ({"prompts": {"q": "q: "}, "default_prompt_name": "query"}, r"not among the prompts \(q\)"),
    ({"include_prompt": "no"}, "`include_prompt` must be True, False or None"),
    ({"default_normalize": "yes"}, "`default_normalize` must be True, False or None"),
    ({"default_strategy": "nope"}, "nope"),
])
def test_settings_passed_to_the_constructor_are_checked(tiny_bert_encoder, tiny_bert_dir, kwargs, message):
    with pytest.raises(SeqpoolError, match=message):
        Encoder(tiny_bert_encoder.model, tokenizer=tiny_bert_encoder.tokenizer, **kwargs)
    with pytest.raises(SeqpoolError, match=message):
        Encoder(tiny_bert_dir, **kwargs)


def test_encoder_on_cpu_string_works(tiny_bert_dir):
    encoder = Encoder(tiny_bert_dir, device="cpu:0")
    assert encoder.device == torch.device("cpu")


# -- worker count does not follow torch's global thread setting ----------------------------------


def test_default_workers_ignore_torch_global_threads(monkeypatch, tiny_bert_encoder):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(encoder_module, "available_cpus", lambda: 3)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert default_workers() == 3
        assert tiny_bert_encoder._workers() == 3
    finally:
        torch.set_num_threads(before)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert default_workers() == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "junk")
    assert default_workers() == 3


def test_gpu_encoders_run_one_batch_at_a_time(tiny_bert_encoder, monkeypatch):
    import copy

    encoder = copy.copy(tiny_bert_encoder)
    encoder.device = torch.device("cuda")  # only _workers reads it here; nothing runs on it
    assert encoder._workers() == 1
    encoder.workers = 4
    assert encoder._workers() == 4


# -- texts ----------------------------------------------------------------------------------------------


def test_check_texts_names_the_text_with_a_lone_surrogate():
    with pytest.raises(SeqpoolError, match=r"texts\[2\] holds a lone surrogate U\+D800 at character 3"):
        check_texts(["fine", "héllo wörld", "bad\ud800x", "also \udfff bad"])
    with pytest.raises(SeqpoolError, match=r"texts\[0\].*U\+DC00"):
        check_texts(["\udc00"])
    assert check_texts(("ok", "émoji 🙂", "")) == ["ok", "émoji 🙂", ""]  # real astral characters are fine


@pytest.mark.parametrize("call", [
    lambda e, texts: e.encode(texts),
    lambda e, texts: e.token_states(texts),
    lambda e, texts: list(e.hidden_states(texts)),
    lambda e, texts: e.tokenize(texts),
    lambda e, texts: e.tokenize_with_offsets(texts),
    lambda e, texts: list(e.text_batches(texts)),
    lambda e, texts: e.word_embeddings(texts),
])
def test_every_text_entry_refuses_a_lone_surrogate(tiny_bert_encoder, call):
    with pytest.raises(SeqpoolError, match=r"texts\[1\] holds a lone surrogate"):
        call(tiny_bert_encoder, ["good text", "broken \ud83d text"])


@pytest.mark.parametrize("texts,message", [("one text", "not a single string"), (["a", None], r"texts\[1\] is NoneType")])
def test_bad_text_containers(tiny_bert_encoder, texts, message):
    with pytest.raises(SeqpoolError, match=message):
        tiny_bert_encoder.encode(texts)


def test_explain_refuses_a_lone_surrogate(tiny_bert_encoder):
    from seqpool.classifier import PooledClassifier
    from seqpool.explain import explain

    classifier = PooledClassifier("mean", tiny_bert_encoder.hidden_size, 2, labels=["a", "b"])
    with pytest.raises(SeqpoolError, match=r"texts\[0\] holds a lone surrogate"):
        explain(["\ud800"], classifier, encoder=tiny_bert_encoder)


@pytest.mark.parametrize("batch_size,message", [(0, "at least 1"), (2.5, "whole number"), (True, "whole number")])
def test_batch_sizes_are_checked(tiny_bert_encoder, batch_size, message):
    with pytest.raises(SeqpoolError, match=f"batch_size must be {message}" if message == "at least 1" else message):
        tiny_bert_encoder.encode(["a"], batch_size=batch_size)
    with pytest.raises(SeqpoolError, match=message):
        list(tiny_bert_encoder.text_batches(["a"], batch_size=batch_size))


# -- masks of any reasonable dtype -------------------------------------------------------------------


BITS = [[1, 1, 0, 0], [0, 1, 1, 1]]


@pytest.mark.parametrize("dtype", [torch.bool, torch.int8, torch.uint8, torch.int32, torch.int64,
                                   torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_zero_one_masks_of_every_dtype_pool_alike(dtype):
    hidden = torch.randn(2, 4, 3)
    expected = pool_many(hidden, torch.tensor(BITS, dtype=torch.bool), STRATEGIES)
    mask = torch.tensor(BITS).to(dtype)
    for strategy, vectors in pool_many(hidden, mask, STRATEGIES).items():
        assert torch.equal(vectors, expected[strategy]), strategy
    assert torch.equal(Pooler("mean", dim=3)(hidden, mask), expected["mean"])
    assert torch.equal(avg_pool_tokens(hidden, mask, kernel_size=2)[0],
                       avg_pool_tokens(hidden, torch.tensor(BITS, dtype=torch.bool), kernel_size=2)[0])


@pytest.mark.parametrize("values", [[[1.0, 0.5, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]],
                                    [[1.0, float("nan"), 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]],
                                    [[2.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]],
                                    [[-1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]]])
def test_soft_float_masks_are_refused(values):
    hidden, mask = torch.randn(2, 4, 3), torch.tensor(values)
    for call in (lambda: pool(hidden, mask, "mean"), lambda: Pooler("max", dim=3)(hidden, mask),
                 lambda: segment_pool(hidden, torch.zeros(2, 4, dtype=torch.long), "mean", mask)):
        with pytest.raises(SeqpoolError, match="attention_mask must hold 0 .* and 1"):
            call()


def test_complex_masks_are_refused():
    with pytest.raises(SeqpoolError, match="attention_mask must hold 0"):
        pool(torch.randn(1, 2, 3), torch.ones(1, 2, dtype=torch.complex64), "mean")


# -- the pipeline --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pipe(tiny_bert_dir):
    from transformers import pipeline

    import seqpool.pipeline as pipeline_module

    return pipeline(pipeline_module.TASK, model=str(tiny_bert_dir), device="cpu")


def test_pipeline_on_an_empty_list_is_an_empty_list(pipe):
    assert pipe([]) == []
    assert pipe([], batch_size=4, pooling=["mean", "max"]) == []
    with pytest.raises(SeqpoolError, match="unexpected pipeline argument"):
        pipe([], colour="red")


def test_pipeline_refuses_non_strings_and_surrogates(pipe):
    with pytest.raises(SeqpoolError, match="embeds strings"):
        pipe([3])
    with pytest.raises(SeqpoolError, match=r"lone surrogate"):
        pipe(["fine", "\ud800"])


def test_pipeline_forward_gives_bool_masks(pipe, tiny_bert_encoder):
    inputs = pipe.preprocess("a film")
    outputs = pipe._forward(inputs)
    assert outputs["attention_mask"].dtype == torch.bool
    vector = pipe.postprocess(outputs)
    np.testing.assert_allclose(vector, tiny_bert_encoder.encode(["a film"])["mean"][0], atol=1e-5)
