"""A bf16 checkpoint loads without an fp32 copy: peak memory of ``Encoder(folder)``.

Requirement: loading a bf16 checkpoint (no ``dtype`` asked) keeps it in bf16, and the peak
resident memory of the process stays within the interpreter's baseline plus 1.3x the bf16
weights. An fp32 conversion alone would need 2x the weights on top of the bf16 ones.

The model is a random BERT of about 200 MB in bf16 (big vocabulary, hidden 1024, four
layers), built in bf16 directly and saved with safetensors, with the tiny BERT's tokenizer.
Memory is measured in a fresh interpreter (``/proc/self/status``). The baseline is ``VmRSS``
after ``import torch, transformers, seqpool`` *and* the architecture's modeling module
(``MODEL_MAPPING[config]``): that import alone adds ~130 MB whatever the weights, code rather
than weights, and would otherwise eat the whole allowance (a plain transformers load then
sits at ~1.3x). The peak is ``VmHWM`` (reset to the baseline through ``/proc/self/clear_refs``
where the kernel allows) after loading and encoding two texts.

transformers 5 maps safetensors weights zero-copy, so a stored-dtype load only pages in what
the forward pass reads (not the untouched rows of the embedding table): well under 1x. An
fp32 conversion allocates 2x the weights and reads all of them: about 3x.

``python tests/test_model_memory.py`` (by hand, not a test) measures a plain
``transformers.AutoModel.from_pretrained(folder)`` the same way next to seqpool, to check the
measurement itself.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
VOCAB_SIZE = 50_000  # 50k x 1024 embeddings: half the weights
HIDDEN = 1024
LAYERS = 4
MAX_OVERHEAD = 1.3  # peak - baseline <= 1.3 x the bf16 weights
MiB = 1 << 20

# Run in a fresh interpreter: argv = [folder, "seqpool" | "transformers"]; prints one JSON line.
_MEASURE = r'''
import json, sys


def memory():  # VmRSS, VmHWM, RssAnon and RssFile of this process, in bytes
    fields = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                fields[key] = int(value.split()[0]) * 1024
    return fields


import torch, transformers, seqpool, seqpool.encoder

folder, loader = sys.argv[1], sys.argv[2]
texts = ["the cat sat on the mat", "hello world"]
imports = memory()
# The architecture's modeling code is interpreter baseline, not weights: importing BERT's
# module (and what it pulls in) alone adds ~130 MB, most of the allowance. Import it first.
from transformers.models.auto.modeling_auto import MODEL_MAPPING
MODEL_MAPPING[type(transformers.AutoConfig.from_pretrained(folder))]
baseline = memory()
try:  # "5" resets VmHWM to the current RSS (Linux >= 4.0), so the peak is the load's own
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    reset = memory()["VmHWM"] <= baseline["VmRSS"] + (1 << 20)
except OSError:
    reset = False
if loader == "seqpool":
    encoder = seqpool.Encoder(folder)
    vectors = encoder.encode(texts)
    dtype, rows = encoder.dtype, len(next(iter(vectors.values())))
else:
    model = transformers.AutoModel.from_pretrained(folder).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    with torch.inference_mode():
        hidden = model(**tokenizer(texts, padding=True, return_tensors="pt")).last_hidden_state
    dtype, rows = model.dtype, hidden.shape[0]
after = memory()
print(json.dumps({"loader": loader, "imports_rss": imports["VmRSS"], "baseline_rss": baseline["VmRSS"],
                  "baseline_hwm": baseline["VmHWM"], "peak": after["VmHWM"], "rss_after": after["VmRSS"],
                  "anon_after": after["RssAnon"], "file_after": after["RssFile"], "hwm_reset": reset,
                  "dtype": str(dtype), "rows": rows}))
'''


def build_bf16_model(directory: Path, tokenizer_dir: Path) -> int:
    """Save a random ~200 MB bf16 BERT (safetensors) with ``tokenizer_dir``'s tokenizer; its weight bytes.

    Built in bf16 directly, so building never holds an fp32 copy either (about 2 s).
    """
    import torch
    from transformers import AutoModel, BertConfig

    for file in tokenizer_dir.iterdir():  # the tokenizer files; config and weights are this model's
        if file.is_file() and file.name not in ("config.json", "model.safetensors"):
            shutil.copy2(file, directory / file.name)
    config = BertConfig(vocab_size=VOCAB_SIZE, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                        num_attention_heads=16, intermediate_size=4 * HIDDEN, max_position_embeddings=512)
    config.dtype = torch.bfloat16
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = AutoModel.from_config(config, dtype=torch.bfloat16).eval()
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    weight_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    model.save_pretrained(directory, safe_serialization=True)
    del model
    return weight_bytes


def measure(folder: Path, loader: str) -> dict[str, Any]:
    """Baseline and peak memory of loading ``folder`` with ``loader`` in a fresh interpreter."""
    env = {key: value for key, value in os.environ.items() if key != "SEQPOOL_DEBUG"}
    env.update(PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    result = subprocess.run([sys.executable, "-c", _MEASURE, str(folder), loader], capture_output=True,
                            text=True, env=env, cwd=folder, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def report(figures: dict[str, Any], weight_bytes: int) -> str:
    """One line of figures in MiB, for the log and the closing note."""
    grown = figures["peak"] - figures["baseline_rss"]
    return (f"{figures['loader']}: RSS after imports {figures['imports_rss'] / MiB:.0f} MiB, baseline "
            f"(+ model code) {figures['baseline_rss'] / MiB:.0f} MiB, peak {figures['peak'] / MiB:.0f} MiB, "
            f"peak - baseline {grown / MiB:.0f} MiB = {grown / weight_bytes:.2f}x the bf16 weights "
            f"({weight_bytes / MiB:.0f} MiB); after: RSS {figures['rss_after'] / MiB:.0f} MiB "
            f"(anon {figures['anon_after'] / MiB:.0f}, file-backed {figures['file_after'] / MiB:.0f}), "
            f"dtype {figures['dtype']}, HWM reset {figures['hwm_reset']}")


@pytest.fixture(scope="module")
def bf16_model(tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """``(folder, bf16 weight bytes)`` of the random bf16 BERT."""
    directory = tmp_path_factory.mktemp("bf16_bert")
    return directory, build_bf16_model(directory, tiny_bert_dir)


def test_bf16_checkpoint_loads_without_an_fp32_copy(bf16_model: tuple[Path, int]) -> None:
    """``Encoder(folder)`` keeps the stored bf16 and peaks within baseline + 1.3x the weights."""
    folder, weight_bytes = bf16_model
    assert 150 * 10**6 <= weight_bytes <= 250 * 10**6  # the model is the size the requirement is about
    figures = measure(folder, "seqpool")
    print("\n" + report(figures, weight_bytes))
    assert figures["rows"] == 2
    assert figures["dtype"] == "torch.bfloat16", "with no dtype asked the model must run in its stored dtype"
    grown = figures["peak"] - figures["baseline_rss"]
    assert grown <= MAX_OVERHEAD * weight_bytes, (
        f"peak grew {grown / MiB:.0f} MiB over the baseline, more than {MAX_OVERHEAD}x the "
        f"{weight_bytes / MiB:.0f} MiB of bf16 weights")


def main() -> None:
    """By hand: the same measurement for seqpool and for a plain transformers load (the reference)."""
    from transformers import BertTokenizerFast

    from tests import conftest

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer_dir = Path(tmp) / "tokenizer"
        tokenizer_dir.mkdir()
        # the tiny BERT's tokenizer, built as conftest's tiny_bert_dir fixture builds it
        vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *conftest._PUNCTUATION, *conftest._WORDS,
                 *conftest._LETTERS, *(f"##{c}" for c in conftest._LETTERS)]
        (tokenizer_dir / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
        BertTokenizerFast.from_pretrained(tokenizer_dir, do_lower_case=True,
                                          model_max_length=64).save_pretrained(tokenizer_dir)
        folder = Path(tmp) / "model"
        folder.mkdir()
        weight_bytes = build_bf16_model(folder, tokenizer_dir)
        for loader in ("transformers", "seqpool"):
            print(report(measure(folder, loader), weight_bytes))


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
