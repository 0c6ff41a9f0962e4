"""Throughput of ``seqpool`` vs the engines a user would pick instead, on real sentences, in one process.

Every path embeds the same texts with the packaged all-MiniLM-L6-v2, interleaved and repeated so
that machine load hits every engine alike; the table gives the median texts/s, the speed ratio to
sentence-transformers' torch fp32 ``encode`` (batch 32) and the cosine (mean / min) of each path's
vectors to that reference. Paths (``--paths``):

* ``st-fp32``, ``st-bf16``: sentence-transformers, torch, float32 / ``model_kwargs`` dtype bfloat16
* ``st-onnx``, ``st-onnx-qint8``: ``backend="onnx"`` (ONNX Runtime), and the same graph after
  ``export_dynamic_quantized_onnx_model(..., "avx512_vnni")`` (dynamic int8)
* ``st-openvino``, ``st-openvino-int8``: ``backend="openvino"``, and OpenVINO static int8 as
  ``export_static_quantized_openvino_model`` makes it (OVQuantizer, its default config and
  preprocessing) but calibrated on the same local texts as seqpool-int8, all of them (that helper
  downloads GLUE/SST-2 and, with the default config, NNCF keeps 128 samples)
* ``seqpool-fp32``, ``seqpool-bf16``, ``seqpool-int8``: ``Encoder()``, ``Encoder(dtype="bf16")``,
  ``Encoder(dtype="int8")`` after ``calibrate()``

on two sets (``--sets``): ``mr``, the first ``--texts`` MR sentences, and ``long``, ``--long-texts``
texts of about 256 tokens (consecutive MR reviews joined, cut at a word so that no path truncates).
The int8 paths are calibrated on ``--calibration`` texts of the same kind drawn from the last
reviews of the file, never from the measured ones. The header prints the CPU's flags and, for every
path, what it computes in: OpenVINO's CPU plugin runs float layers in bf16 by default where the CPU
has avx512_bf16 or AMX (``--openvino-precision f32`` pins f32; seqpool int8 pins f32 itself).
Nothing is downloaded: Hugging Face is put offline, exports go to a temporary folder.

The ONNX / OpenVINO paths need optimum, whose releases cap transformers below 4.58, so they run in a
venv of their own (seqpool is tested on transformers 5 in .venv; the torch and seqpool paths run in
either, and paths whose packages are missing are skipped with a note). From the repository root:

    python3 -m venv /work/bench-venv && /work/bench-venv/bin/pip install -e ".[test]" "sentence-transformers[onnx,openvino]==5.7.0" transformers==4.57.6 optimum==2.1.0 "optimum-onnx[onnxruntime]==0.1.0" "optimum-intel[openvino]==1.27.0" -c constraints.txt

    /work/bench-venv/bin/python benchmarks/embed_throughput.py        # 2 000 MR + 500 long texts, 3 rounds
    /work/bench-venv/bin/python benchmarks/embed_throughput.py --texts 200 --long-texts 50 --rounds 1
    .venv/bin/python benchmarks/embed_throughput.py --paths st-fp32,seqpool-fp32,seqpool-bf16 --sets mr
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable, Sequence

# Nothing may be fetched: every model and calibration text here is local.
for _name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_name, "1")

import numpy as np
import torch

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "senteval" / "mr.jsonl"
PATHS = ("st-fp32", "st-bf16", "st-onnx", "st-onnx-qint8", "st-openvino", "st-openvino-int8",
         "seqpool-fp32", "seqpool-bf16", "seqpool-int8")
REFERENCE = "st-fp32"
#: MR reviews at the end of the file that are only ever used for calibration.
CALIBRATION_POOL = 3500
LONG_TOKENS = 256
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
QUIET_LOGGERS = ("transformers", "datasets", "optimum", "nncf", "sentence_transformers", "seqpool")
RECIPE = "see the install command in this script's docstring"


@dataclass
class Engine:
    """One path: how it embeds texts and what it computes in."""

    name: str
    run: Callable[[Sequence[str]], np.ndarray]
    precision: str


def load_texts(path: Path, count: int) -> tuple[list[str], list[str]]:
    """The texts that may be measured (at least ``count``) and the last :data:`CALIBRATION_POOL`,
    which only ever calibrate."""
    with open(path, encoding="utf-8") as handle:
        texts = [json.loads(line)["text"] for line in handle]
    measured, calibration = texts[:-CALIBRATION_POOL], texts[-CALIBRATION_POOL:]
    if len(measured) < count:
        raise SystemExit(f"{path} has {len(measured)} texts to measure (the last {CALIBRATION_POOL} are kept "
                         f"for calibration), fewer than --texts {count}")
    return measured, calibration


def long_texts(reviews: Sequence[str], count: int, tokenizer, tokens: int = LONG_TOKENS) -> list[str]:
    """``count`` texts of consecutive reviews joined (cycling), each cut at a word to at most
    ``tokens`` tokens with the special ones, so that every path sees the same, untruncated input."""
    budget = tokens - tokenizer.num_special_tokens_to_add()
    source = itertools.cycle(reviews)
    texts = []
    for _ in range(count):
        words: list[str] = []
        while len(tokenizer.tokenize(" ".join(words))) <= budget:
            words.extend(next(source).split())
        while len(tokenizer.tokenize(" ".join(words))) > budget:
            words.pop()
        texts.append(" ".join(words))
    return texts


def spread(texts: Sequence[str], count: int) -> list[str]:
    """``count`` texts evenly spaced through ``texts``."""
    return list(texts[::max(1, len(texts) // count)][:count])


def timed(run: Callable[[], np.ndarray]) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    vectors = run()
    return time.perf_counter() - start, vectors


@contextlib.contextmanager
def quiet(verbose: bool):
    """Hold back what the exporters and quantizers print (progress bars, "save the exported model"
    advice, tracer warnings); show it only if building a path fails, or with ``--verbose``."""
    if verbose:
        yield
        return
    captured = io.StringIO()
    # logger levels, not logging.disable(): optimum's OpenVINO export resets that on its way out
    loggers = [logging.getLogger(name) for name in QUIET_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
            warnings.simplefilter("ignore")
            yield
    except BaseException:
        sys.stderr.write(captured.getvalue())
        raise
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def cpu_flags() -> str:
    try:
        flags = set(Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").split())
    except OSError:
        return "unknown"
    return " ".join(flag for flag in CPU_FLAGS if flag in flags) or "none of " + " ".join(CPU_FLAGS)


def openvino_precision(compiled) -> str:
    """The float precision an OpenVINO compiled model runs its non-quantized layers in."""
    hint = compiled.get_property("INFERENCE_PRECISION_HINT")
    return str(getattr(hint, "to_string", lambda: hint)())


def cosine(vectors: np.ndarray, reference: np.ndarray) -> np.ndarray:
    return (vectors * reference).sum(axis=1) / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(reference, axis=1))


class Peers:
    """Builds each path once (the int8 ones once per calibration set); exports live in ``scratch``."""

    def __init__(self, model_path: str, batch_size: int, openvino_precision: str, scratch: Path):
        self.model_path = model_path
        self.batch_size = batch_size
        self.ov_config = {} if openvino_precision == "default" else {"INFERENCE_PRECISION_HINT": openvino_precision}
        self.scratch = scratch
        self._onnx_folder: Path | None = None
        self._openvino_folder: Path | None = None

    def encode_with(self, model) -> Callable[[Sequence[str]], np.ndarray]:
        return lambda texts: np.asarray(model.encode(list(texts), batch_size=self.batch_size, convert_to_numpy=True),
                                        dtype=np.float32)

    def st_torch(self, dtype: torch.dtype) -> Engine:
        import transformers
        from packaging.version import Version
        from sentence_transformers import SentenceTransformer

        kwargs = {}
        if dtype != torch.float32:  # transformers renamed torch_dtype to dtype in 4.56
            key = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"
            kwargs["model_kwargs"] = {key: dtype}
        model = SentenceTransformer(self.model_path, device="cpu", **kwargs)
        name = "st-fp32" if dtype == torch.float32 else "st-bf16"
        precision = f"torch {str(next(model.parameters()).dtype).removeprefix('torch.')}"
        return Engine(name, self.encode_with(model), precision)

    def onnx_folder(self) -> Path:
        """The model saved as a sentence-transformers folder with ``onnx/model.onnx``."""
        if self._onnx_folder is None:
            from sentence_transformers import SentenceTransformer

            model = SentenceTransformer(self.model_path, device="cpu", backend="onnx",
                                        model_kwargs={"provider": "CPUExecutionProvider"})
            self._onnx_folder = self.scratch / "st-onnx"
            model.save(str(self._onnx_folder))
        return self._onnx_folder

    def st_onnx(self, quantized: bool) -> Engine:
        from sentence_transformers import SentenceTransformer

        folder = self.onnx_folder()
        file_name = "onnx/model.onnx"
        if quantized:
            from sentence_transformers.backend import export_dynamic_quantized_onnx_model

            fp32 = SentenceTransformer(str(folder), device="cpu", backend="onnx",
                                       model_kwargs={"provider": "CPUExecutionProvider"})
            export_dynamic_quantized_onnx_model(fp32, "avx512_vnni", str(folder))
            file_name = "onnx/model_qint8_avx512_vnni.onnx"
        model = SentenceTransformer(str(folder), device="cpu", backend="onnx",
                                    model_kwargs={"provider": "CPUExecutionProvider", "file_name": file_name})
        precision = "ONNX Runtime int8 (dynamic) + f32" if quantized else "ONNX Runtime f32"
        return Engine("st-onnx-qint8" if quantized else "st-onnx", self.encode_with(model), precision)

    def openvino_folder(self) -> Path:
        """The model saved as a sentence-transformers folder with ``openvino/openvino_model.xml``."""
        if self._openvino_folder is None:
            from sentence_transformers import SentenceTransformer

            model = SentenceTransformer(self.model_path, device="cpu", backend="openvino")
            self._openvino_folder = self.scratch / "st-openvino"
            model.save(str(self._openvino_folder))
        return self._openvino_folder

    def load_openvino(self, file_name: str):
        from sentence_transformers import SentenceTransformer

        return SentenceTransformer(str(self.openvino_folder()), device="cpu", backend="openvino",
                                   model_kwargs={"file_name": file_name, "ov_config": dict(self.ov_config)})

    def st_openvino(self) -> Engine:
        model = self.load_openvino("openvino/openvino_model.xml")
        precision = f"OpenVINO {openvino_precision(model[0].auto_model.request)}"
        return Engine("st-openvino", self.encode_with(model), precision)

    def st_openvino_int8(self, calibration: Sequence[str], tag: str) -> Engine:
        """``export_static_quantized_openvino_model`` with its defaults, fed ``calibration`` instead of SST-2."""
        from datasets import Dataset
        from optimum.intel.openvino import OVConfig, OVQuantizationConfig, OVQuantizer

        fp32 = self.load_openvino("openvino/openvino_model.xml")
        # the helper's config, with the same number of calibration texts as seqpool-int8 (its own
        # default leaves num_samples unset and NNCF then takes 128)
        quantization_config = OVQuantizationConfig(num_samples=len(calibration))
        # the helper's preprocessing: padded to 384 tokens, truncated
        dataset = Dataset.from_dict({"sentence": calibration}).map(
            lambda rows: fp32.tokenizer(rows["sentence"], padding="max_length", max_length=384, truncation=True),
            batched=True)
        quantizer = OVQuantizer.from_pretrained(fp32[0].auto_model)
        saved = self.scratch / f"st-openvino-int8-{tag}"
        quantizer.quantize(dataset, save_directory=str(saved),
                           ov_config=OVConfig(quantization_config=quantization_config))
        # as the helper files it: next to the fp32 model, with a suffix
        file_name = f"openvino/openvino_model_qint8_quantized_{tag}.xml"
        for suffix in (".xml", ".bin"):
            source = next(saved.rglob(f"openvino_model{suffix}"))
            shutil.move(str(source), str((self.openvino_folder() / file_name).with_suffix(suffix)))
        model = self.load_openvino(file_name)
        precision = (f"OpenVINO int8 (static, {len(calibration)} texts) + "
                     f"{openvino_precision(model[0].auto_model.request)}")
        return Engine("st-openvino-int8", self.encode_with(model), precision)

    def seqpool(self, dtype: str | None, calibration: Sequence[str] = ()) -> Engine:
        from seqpool.encoder import Encoder

        encoder = Encoder(self.model_path, dtype=dtype)
        precision = f"torch {encoder.precision}"
        if dtype == "int8":
            encoder.calibrate(list(calibration))
            used = encoder.int8_runtime.calibration["sequences"]
            precision = f"OpenVINO int8 (static, {used} texts) + {openvino_precision(encoder.int8_runtime.compiled)}"
        return Engine(f"seqpool-{dtype or 'fp32'}", lambda texts: encoder.encode(list(texts))["mean"], precision)


def missing_packages(name: str) -> list[str]:
    """The modules that path ``name`` needs and this environment lacks."""
    import importlib.util

    needs = {"st-onnx": ["optimum.onnxruntime", "onnxruntime"], "st-onnx-qint8": ["optimum.onnxruntime", "onnxruntime"],
             "st-openvino": ["optimum.intel", "openvino"], "st-openvino-int8": ["optimum.intel", "openvino", "nncf"],
             "seqpool-int8": ["openvino", "nncf", "onnx"]}.get(name, [])
    missing = []
    for module in needs:
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            missing.append(module)
    return missing


def parse_list(value: str, allowed: Sequence[str], option: str) -> list[str]:
    chosen = list(allowed) if value == "all" else [item.strip() for item in value.split(",") if item.strip()]
    unknown = [item for item in chosen if item not in allowed]
    if unknown:
        raise SystemExit(f"{option}: unknown {', '.join(unknown)}; choose from all, {', '.join(allowed)}")
    return chosen


def measure(paths: dict[str, Engine], texts: Sequence[str],
            rounds: int) -> tuple[dict[str, list[float]], dict[str, np.ndarray]]:
    """A warm-up round, then ``rounds`` timed rounds, the order reversed every other round."""
    vectors = {name: path.run(texts) for name, path in paths.items()}  # warm-up round, not timed
    seconds: dict[str, list[float]] = {name: [] for name in paths}
    for round_index in range(rounds):
        order = list(paths) if round_index % 2 == 0 else list(reversed(paths))
        for name in order:
            elapsed, vectors[name] = timed(lambda: paths[name].run(texts))
            seconds[name].append(elapsed)
    return seconds, vectors


def report(paths: dict[str, Engine], texts: Sequence[str], seconds: dict[str, list[float]],
           vectors: dict[str, np.ndarray]) -> None:
    rates = {name: len(texts) / statistics.median(times) for name, times in seconds.items()}
    reference = vectors[REFERENCE]
    print("| path | runs in | texts/s (median) | each round | vs st-fp32 | cosine to st-fp32 mean | min |")
    print("|---|---|---|---|---|---|---|")
    for name, times in seconds.items():
        rounds = ", ".join(f"{len(texts) / t:.0f}" for t in times)
        similarity = cosine(vectors[name], reference)
        agreement = ("reference | " if name == REFERENCE else
                     f"{similarity.mean():.5f} | {similarity.min():.5f}")
        print(f"| {name} | {paths[name].precision} | {rates[name]:.0f} | {rounds} | "
              f"{rates[name] / rates[REFERENCE]:.2f}x | {agreement} |")

    def fastest(prefix: str, kinds: Sequence[str] = ()) -> str | None:
        names = [n for n in rates if n.startswith(prefix) and (not kinds or any(k in n for k in kinds))]
        return max(names, key=rates.get) if names else None

    for label, kinds in (("fastest", ()), ("fastest int8", ("int8",))):
        ours, theirs = fastest("seqpool-", kinds), fastest("st-", kinds)
        if ours and theirs:
            print(f"\n{label}: {ours} {rates[ours]:.0f} texts/s vs {theirs} {rates[theirs]:.0f} texts/s: "
                  f"{rates[ours] / rates[theirs]:.2f}x", end="")
    print("\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--texts", type=int, default=2000, help="MR texts measured [2000]")
    parser.add_argument("--long-texts", type=int, default=500, help=f"~{LONG_TOKENS}-token texts measured [500]")
    parser.add_argument("--rounds", "--repeats", dest="rounds", type=int, default=3,
                        help="timed rounds after one warm-up round; medians are reported [3]")
    parser.add_argument("--paths", default="all", help=f"comma-separated, from: {', '.join(PATHS)} [all; "
                        f"{REFERENCE}, the reference, always runs]")
    parser.add_argument("--sets", default="all", help="comma-separated, from: mr, long [all]")
    parser.add_argument("--calibration", type=int, default=300, help="calibration texts of the int8 paths [300]")
    parser.add_argument("--batch-size", type=int, default=32, help="sentence-transformers batch size [32]")
    parser.add_argument("--openvino-precision", choices=("default", "f32", "bf16"), default="default",
                        help="INFERENCE_PRECISION_HINT of the st-openvino paths [default: OpenVINO's own choice]")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads [default: torch's]")
    parser.add_argument("--no-bf16", action="store_true", help="skip the bf16 paths (slow without native bf16)")
    parser.add_argument("--verbose", action="store_true", help="show what the exporters and quantizers print")
    args = parser.parse_args()
    for option in ("texts", "long_texts", "rounds", "calibration", "batch_size"):
        if getattr(args, option) < 1:
            parser.error(f"--{option.replace('_', '-')} must be at least 1")

    from transformers import AutoTokenizer

    from seqpool.encoder import default_model_path, native_bf16_cpu

    names = parse_list(args.paths, PATHS, "--paths")
    names = [REFERENCE] + [n for n in names if n != REFERENCE and not (args.no_bf16 and n.endswith("bf16"))]
    explicit = args.paths != "all"
    for name in list(names):
        missing = missing_packages(name)
        if missing:
            if explicit:
                raise SystemExit(f"{name} needs {', '.join(missing)}: {RECIPE}")
            print(f"skipping {name}: {', '.join(missing)} not installed ({RECIPE})")
            names.remove(name)
    sets = parse_list(args.sets, ("mr", "long"), "--sets")

    if args.threads:
        torch.set_num_threads(args.threads)
    model_path = default_model_path()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    measured_pool, calibration_pool = load_texts(args.data, args.texts)
    data: dict[str, tuple[list[str], list[str]]] = {}
    if "mr" in sets:
        data["mr"] = (measured_pool[:args.texts], spread(calibration_pool, args.calibration))
    if "long" in sets:
        data["long"] = (long_texts(measured_pool, args.long_texts, tokenizer),
                        long_texts(calibration_pool, args.calibration, tokenizer))

    versions = []
    for distribution in ("sentence-transformers", "transformers", "optimum", "optimum-onnx", "optimum-intel",
                         "onnxruntime", "openvino", "nncf"):
        try:
            versions.append(f"{distribution} {metadata.version(distribution)}")
        except metadata.PackageNotFoundError:
            pass
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"{torch.backends.cpu.get_cpu_capability()}, native bf16: {native_bf16_cpu()}; CPU flags: {cpu_flags()}")
    print("; ".join(versions))
    if any(n.startswith("st-openvino") or n == "seqpool-int8" for n in names):
        import openvino

        capabilities = openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        hint = (f"; st-openvino paths: INFERENCE_PRECISION_HINT {args.openvino_precision}"
                if any(n.startswith("st-openvino") for n in names) else "")
        print(f"OpenVINO CPU capabilities: {' '.join(capabilities)}{hint}")
    print(f"load average at start {os.getloadavg()[0]:.2f}")

    with tempfile.TemporaryDirectory(prefix="seqpool-bench-") as scratch:
        peers = Peers(model_path, args.batch_size, args.openvino_precision, Path(scratch))
        shared: dict[str, Engine] = {}  # paths without calibration are built once, for every set
        builders: dict[str, Callable[[], Engine]] = {
            "st-fp32": lambda: peers.st_torch(torch.float32), "st-bf16": lambda: peers.st_torch(torch.bfloat16),
            "st-onnx": lambda: peers.st_onnx(False), "st-onnx-qint8": lambda: peers.st_onnx(True),
            "st-openvino": peers.st_openvino, "seqpool-fp32": lambda: peers.seqpool(None),
            "seqpool-bf16": lambda: peers.seqpool("bf16")}
        for set_name, (measured, calibration) in data.items():
            paths: dict[str, Engine] = {}
            start = time.perf_counter()
            with quiet(args.verbose):
                for name in names:
                    if name in builders:
                        paths[name] = shared[name] = shared.get(name) or builders[name]()
                    elif name == "st-openvino-int8":
                        paths[name] = peers.st_openvino_int8(calibration, set_name)
                    else:
                        paths[name] = peers.seqpool("int8", calibration)
            lengths = [len(ids) for ids in tokenizer(measured)["input_ids"]]
            print(f"\n## {set_name}: {len(measured)} texts from {args.data.name}, {np.mean(lengths):.0f} tokens on "
                  f"average (max {max(lengths)}); {len(calibration)} calibration texts; paths built in "
                  f"{time.perf_counter() - start:.0f} s; {args.rounds} rounds, batch {args.batch_size} for the peers\n")
            seconds, vectors = measure(paths, measured, args.rounds)
            report(paths, measured, seconds, vectors)
    print(f"load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
