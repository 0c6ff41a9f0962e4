"""``seqpool embed``: embed a corpus from the shell, streaming, row-aligned, resumable.

A thin layer over :func:`seqpool.io.embed_corpus`: it parses options, loads the encoder
and reports. Every user mistake becomes a :class:`SeqpoolError` (one line on stderr).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from seqpool.errors import SeqpoolError
from seqpool.io import (
    DEFAULT_CHUNK_SIZE,
    INPUT_FORMATS,
    OUTPUT_FORMATS,
    TextSource,
    check_output_writable,
    default_output_path,
    detect_output_format,
    embed_corpus,
)
from seqpool.pooling import check_strategy

_DTYPE_NAMES = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16"}


def parse_strategies(values: tuple[str, ...]) -> tuple[str, ...] | None:
    """``--strategy mean --strategy max`` or ``--strategy mean,max``; None = the model's default."""
    names = [name.strip() for value in values for name in value.split(",") if name.strip()]
    return tuple(dict.fromkeys(check_strategy(name) for name in names)) or None


def parse_layers(value: str) -> int | tuple[int, ...]:
    """``-1`` (last layer), ``6``, or ``-4,-3,-2,-1`` (the average of those layers)."""
    try:
        layers = tuple(int(part) for part in value.split(","))
    except ValueError:
        raise SeqpoolError(f"--layer takes an integer or comma-separated integers (e.g. -1 or -4,-3,-2,-1), "
                           f"got {value!r}") from None
    return layers[0] if len(layers) == 1 else layers


def parse_dtype(value: str) -> str:
    if value.lower() not in _DTYPE_NAMES:
        raise SeqpoolError(f"unknown --dtype {value!r}; choose fp32 or bf16")
    return _DTYPE_NAMES[value.lower()]


@click.command()
@click.argument("input_path", metavar="INPUT")
@click.option("-o", "--output", help="Output file [default: INPUT with the format's extension].")
@click.option("--format", "output_format", metavar="|".join(OUTPUT_FORMATS),
              help="Output format [default: from the output's extension, else npy].")
@click.option("--input-format", metavar="|".join(INPUT_FORMATS),
              help="Input format [default: from INPUT's extension, else txt (one text per line)].")
@click.option("--text-field", default="text", show_default=True,
              help="Field (jsonl) or column (csv/tsv/parquet) holding the text.")
@click.option("--model", help="HF model id or local directory [default: the packaged all-MiniLM-L6-v2].")
@click.option("--strategy", "strategies", multiple=True, metavar="NAME[,NAME...]",
              help="Pooling strategy; repeat or comma-separate for several from one encoder pass "
                   "[default: the model's own pooling, else mean]. See `seqpool strategies`.")
@click.option("--layer", default="-1", show_default=True,
              help="Hidden-state layer (0 = embeddings, -1 = last), or comma-separated layers to average.")
@click.option("--batch-size", type=int, help="Most texts per batch (batches are also capped by a token budget).")
@click.option("--max-length", type=int, help="Truncate texts to this many tokens [default: the model's].")
@click.option("--normalize/--no-normalize", default=None,
              help="L2-normalise the vectors [default: as the model was trained, e.g. on for MiniLM].")
@click.option("--dtype", default="fp32", show_default=True, metavar="fp32|bf16",
              help="Encoder precision; pooling always accumulates in fp32.")
@click.option("--device", help="torch device [default: cpu].")
@click.option("--threads", type=int, help="CPU threads for torch [default: one per core]; on a machine busy "
                                          "with other work, fewer threads can be much faster.")
@click.option("--skip-empty", is_flag=True,
              help="Write a zero vector for empty/blank texts instead of encoding them (rows never shift).")
@click.option("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE, show_default=True,
              help="Texts read, encoded and checkpointed together.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its last complete chunk.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or summary.")
def embed(input_path: str, output: str | None, output_format: str | None, input_format: str | None,
          text_field: str, model: str | None, strategies: tuple[str, ...], layer: str, batch_size: int | None,
          max_length: int | None, normalize: bool | None, dtype: str, device: str | None, threads: int | None,
          skip_empty: bool, chunk_size: int, resume: bool, quiet: bool) -> None:
    """Embed every text of INPUT (a file, or - for stdin) into one vector per row.

    \b
    INPUT: .txt (one text per line; any other extension too), .jsonl, .csv, .tsv or
    .parquet; - reads lines from stdin. Output row i is input row i, always: an empty
    line is embedded as the empty string (or a zero row with --skip-empty). An empty
    input gives a (0, D) output.

    \b
    Several strategies: npy writes one file per strategy (emb.npy -> emb.mean.npy,
    emb.max.npy); parquet, jsonl and safetensors write one file with a column / key /
    tensor per strategy.

    \b
    The output appears only when every row is written; until then rows are kept in
    OUTPUT.partial/, which --resume continues from.
    """
    import torch

    from seqpool.encoder import Encoder, native_bf16_cpu

    if threads is not None:
        if threads < 1:
            raise SeqpoolError(f"--threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    chosen = parse_strategies(strategies)
    layers = parse_layers(layer)
    torch_dtype = parse_dtype(dtype)
    source = TextSource.open(input_path, input_format, text_field)
    fmt = detect_output_format(output or "", output_format)
    target = Path(output) if output else default_output_path(input_path, fmt)
    check_output_writable(target, source)
    encoder = Encoder(model, device=device, dtype=torch_dtype, max_length=max_length, layer=layers)
    if torch_dtype == "bfloat16" and encoder.device.type == "cpu" and native_bf16_cpu() is False and not quiet:
        click.echo("note: this CPU has no native bf16 (AVX512-BF16 or AMX), so bf16 runs slower than fp32 "
                   "here; use --dtype fp32 for speed", err=True)
    try:
        result = embed_corpus(encoder, source, target, output_format=fmt, strategies=chosen, normalize=normalize,
                              batch_size=batch_size, chunk_size=chunk_size, skip_empty=skip_empty, resume=resume,
                              progress=False if quiet else None)
    except KeyboardInterrupt:
        partial = target.with_name(target.name + ".partial")
        hint = "; rerun with --resume to continue from the last complete chunk" if partial.exists() else ""
        click.echo(f"interrupted{hint}", err=True)
        sys.exit(130)
    if not quiet:
        resumed = f", resumed at row {result.resumed_from}" if result.resumed_from else ""
        click.echo(f"wrote {result.rows} x {result.dim} embeddings ({', '.join(result.strategies)}{resumed}) "
                   f"to {', '.join(map(str, result.paths))}", err=True)
