"""``seqpool embed``: embed a corpus from the shell, streaming, row-aligned, resumable.

Parses options and calls :func:`seqpool.embed.embed_file`; library errors name Python
parameters (``text_field=...``), which are shown here as the matching flags.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

from seqpool.cli import as_flags as cli_as_flags
from seqpool.cli import command_flags
from seqpool.cli.options import parse_layers
from seqpool.errors import SeqpoolError
from seqpool.io.readers import DEFAULT_CHUNK_SIZE, INPUT_FORMATS
from seqpool.io.writers import OUTPUT_FORMATS

if TYPE_CHECKING:
    from seqpool.vector_options import VectorOptions

#: Library spellings no option of ``embed`` is named after (every other name is an option's own):
#: the Ray engine's ``shard_rows`` is ``--chunk-size``.
ALIASES = {"shard_rows": "chunk_size"}


#: The flags that set a :class:`~seqpool.vector_options.VectorOptions` field of the same name
#: (``--exclude-prompt`` sets ``include_prompt``), and those only the Ray engine takes.
VECTOR_FLAGS = ("prompt", "prompt_name", "long_texts", "window", "stride", "chunk_output", "truncate_dim",
                "precision", "calibration")
RAY_FLAGS = ("ray_address", "workers", "ray_timeout")


def as_flags(error: SeqpoolError) -> SeqpoolError:
    """``error`` with the parameters it names shown as ``seqpool embed``'s flags."""
    return cli_as_flags(error, command_flags(embed, ALIASES))


def parse_strategies(values: tuple[str, ...]) -> tuple[str, ...] | None:
    """``--strategy mean --strategy max`` or ``--strategy mean,max``; None = the model's default."""
    names = [name.strip() for value in values for name in value.split(",") if name.strip()]
    return tuple(dict.fromkeys(names)) or None


@click.command()
@click.argument("input_paths", metavar="INPUT...", nargs=-1, required=True)
@click.option("-o", "--output", help="Output file [default: INPUT with the format's extension].")
@click.option("--format", "output_format", metavar="|".join(OUTPUT_FORMATS),
              help="Output format [default: from the output's extension, else npy].")
@click.option("--input-format", metavar="|".join(INPUT_FORMATS),
              help="Input format [default: from INPUT's extension, else txt (one text per line)].")
@click.option("--text-field", help="Field (jsonl/json) or column (csv/tsv/parquet) holding the text "
                                   "[default: text]; an error for txt input.")
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
@click.option("--dtype", default="fp32", show_default=True, metavar="fp32|bf16|int8",
              help="Encoder precision; pooling always accumulates in fp32. int8: OpenVINO, calibrated on "
                   "--calibration or the corpus's first chunk (pip install 'seqpool[int8]').")
@click.option("--device", help="torch device [default: cpu].")
@click.option("--threads", type=int, help="CPU threads for torch [default: one per core]; on a machine busy "
                                          "with other work, fewer threads can be much faster.")
@click.option("--skip-empty", is_flag=True,
              help="Write a zero vector for empty/blank texts instead of encoding them (rows never shift).")
@click.option("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE, show_default=True,
              help="Texts read, encoded and checkpointed together.")
@click.option("--prompt", help="Instruction prepended to every text, e.g. 'query: ' (e5, bge, gte style models).")
@click.option("--prompt-name", help="A prompt from the model's config_sentence_transformers.json by name "
                                    "[default: its default_prompt_name].")
@click.option("--exclude-prompt", is_flag=True, default=None,
              help="Keep the prompt's tokens out of the pool (sentence-transformers include_prompt=False; "
                   "[default: the model's Pooling config]). cls then means the first token after the prompt.")
@click.option("--long-texts", default="truncate", show_default=True, metavar="truncate|chunk|late",
              help="Texts over the model's limit: cut them (counted in the summary), pool overlapping windows "
                   "into one vector (chunk), or late chunking (late: chunks pooled from full-context tokens).")
@click.option("--window", type=int, help="chunk: tokens per window, special tokens included [default: the model's "
                                         "max length]; late: tokens per chunk [default: the same].")
@click.option("--stride", type=int, help="Tokens between window starts [default: 3/4 window (chunk), "
                                         "one window (late)].")
@click.option("--chunk-output", is_flag=True, help="One row per chunk (chunk/late) with doc, chunk, char_start and "
                                                   "char_end columns (parquet, jsonl or safetensors; local "
                                                   "engine only).")
@click.option("--truncate-dim", type=int, help="Keep the first N dimensions (Matryoshka models); renormalised "
                                               "when normalising.")
@click.option("--precision", default="float32", show_default=True,
              metavar="float32|float16|int8|uint8|binary|ubinary",
              help="Stored precision. int8/uint8 ranges are fitted once (first chunk, or --calibration) and "
                   "stored in the metadata; binary packs 8 sign bits per byte. load_embeddings decodes them.")
@click.option("--calibration", metavar="FILE", help="Texts (any input format) to fit the int8/uint8 ranges on "
                                                    "(--precision) and the int8 model's ranges (--dtype int8).")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its last complete chunk.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: this process. ray: a Ray cluster (pip install \"seqpool[ray]\"); INPUT may then be "
                   "several files, globs or folders, and -o names a folder of parquet shards.")
@click.option("--ray-address", metavar="ADDR", help="Join this Ray cluster (auto, host:port, ray://host:port) "
                                                    "[default: start a local Ray sized to this machine].")
@click.option("--ray-timeout", type=float, metavar="SECONDS",
              help="Seconds the cluster at --ray-address has to answer before the run gives up [default: 30].")
@click.option("--workers", type=int, help="Ray actors, one model each [default: one per CPU, or per GPU with "
                                          "--device cuda]; each takes --threads CPUs [default: 1].")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or summary.")
def embed(input_paths: tuple[str, ...], engine: str, quiet: bool, **flags: Any) -> None:
    """Embed every text of INPUT (a file, or - for stdin) into one vector per row.

    \b
    INPUT: .txt (one text per line; any other extension too), .jsonl, .json, .csv,
    .tsv (quotes are literal unless a whole field is csv-quoted) or .parquet; - reads
    lines from stdin; a pipe or FIFO is read once, as stdin is. Output row i is input row i, always: an empty
    line is embedded as the empty string (or a zero row with --skip-empty). An empty
    input gives a (0, D) output.

    \b
    Several strategies: npy writes one file per strategy (emb.npy -> emb.mean.npy,
    emb.max.npy); parquet, jsonl and safetensors write one file with a column / key /
    tensor per strategy.

    \b
    The output appears only when every row is written; until then rows are kept in
    OUTPUT.partial/, which --resume continues from.

    \b
    --engine ray: -o names a folder of parquet shards (source, row, one column per
    strategy) with a _manifest.json; --chunk-size rows per shard; --resume embeds the
    shards still missing. Prompts, --long-texts, --truncate-dim and --precision work as
    locally (int8/uint8 ranges: fitted once, kept in the manifest); --format, --skip-empty
    and --chunk-output are local only. seqpool.load_embeddings(folder) reads it in input
    order, decoded.
    """
    if engine == "ray":
        _embed_with_ray(input_paths, quiet, flags)
        return
    if len(input_paths) != 1:
        raise SeqpoolError(f"{len(input_paths)} INPUTs given; the local engine embeds one file (run it once per "
                           f"file, or use --engine ray for several files, globs or folders)")
    ray_address, workers, ray_timeout = (flags.pop(name) for name in RAY_FLAGS)
    if ray_address is not None or workers is not None:
        raise SeqpoolError("--ray-address and --workers need --engine ray")
    if ray_timeout is not None:
        raise SeqpoolError("--ray-timeout needs --engine ray (it bounds joining the cluster at --ray-address)")
    from seqpool.embed import EmbedInterrupted, EmbedSettings, embed_file

    def note(message: str) -> None:
        if not quiet:
            click.echo(f"note: {as_flags(SeqpoolError(message))}", err=True)

    try:
        output = flags.pop("output")
        flags.update(strategies=parse_strategies(flags["strategies"]), layer=parse_layers(flags["layer"]))
        options = _vector_options(flags)
        result = embed_file(input_paths[0], output, settings=EmbedSettings(**flags), options=options,
                            progress=False if quiet else None, note=note)
    except SeqpoolError as error:
        raise as_flags(error) from None
    except EmbedInterrupted as interrupted:
        hint = "; rerun with --resume to continue from the last complete chunk" if interrupted.resumable else ""
        click.echo(f"interrupted{hint}", err=True)
        sys.exit(130)
    if not quiet:
        resumed = f", resumed at row {result.resumed_from}" if result.resumed_from else ""
        widths = "/".join(map(str, dict.fromkeys(result.widths))) or result.dim
        click.echo(f"wrote {result.rows} x {widths} embeddings ({'; '.join(result.pipelines or result.strategies)}"
                   f"{resumed}) to {', '.join(map(str, result.paths))}", err=True)
        _report_truncated(result.truncated, result.texts)


def _report_truncated(truncated: int, texts: int) -> None:
    """The closing line both engines print when texts were cut at the model's max length."""
    if truncated:
        click.echo(f"{truncated} of {texts} texts were longer than the model's max length and were truncated; "
                   f"--long-texts chunk or late keeps all of them", err=True)


def _vector_options(flags: dict[str, Any]) -> VectorOptions:
    """The :class:`~seqpool.vector_options.VectorOptions` the flags set, taken out of ``flags``."""
    from seqpool.vector_options import VectorOptions

    return VectorOptions(**{name: flags.pop(name) for name in VECTOR_FLAGS},
                         include_prompt=False if flags.pop("exclude_prompt") else None)


def _embed_with_ray(input_paths: tuple[str, ...], quiet: bool, flags: dict[str, Any]) -> None:
    """``--engine ray``: :func:`seqpool.distributed.embed_files`, with the flags mapped onto it
    (``--threads``: CPUs per actor; ``--device cuda``: a GPU per actor; ``--chunk-size``: rows per shard;
    prompt, long-text and compact-vector flags as for the local engine; ``--ray-timeout``: how long
    the cluster at ``--ray-address`` has to answer)."""
    from seqpool.embed import parse_dtype
    from seqpool.threads import check_thread_count

    local_only = {"--format": flags.pop("output_format"), "--skip-empty": flags.pop("skip_empty"),
                  "--chunk-output": flags["chunk_output"]}
    refused = [flag for flag, value in local_only.items() if value]
    if refused:
        raise SeqpoolError(f"{', '.join(refused)} cannot be used with --engine ray (it writes one row per input "
                           f"row into a folder of parquet shards); use the local engine for it")
    output, device, threads = flags.pop("output"), flags.pop("device"), flags.pop("threads")
    if output is None:
        raise SeqpoolError("--engine ray writes a folder of parquet shards: name it with -o/--output")
    if device not in (None, "cpu", "cuda"):
        raise SeqpoolError(f"--device {device} with --engine ray: use cpu or cuda (each actor gets a GPU of its own)")
    from seqpool.distributed import RayOptions, embed_files
    from seqpool.distributed.dataset import DEFAULT_RAY_TIMEOUT_S

    try:
        check_thread_count(threads, "`threads`")
        flags.update(strategies=parse_strategies(flags["strategies"]), layer=parse_layers(flags["layer"]),
                     dtype=parse_dtype(flags["dtype"]))
        options = _vector_options(flags)
        ray_address, workers, ray_timeout = (flags.pop(name) for name in RAY_FLAGS)
        cluster = RayOptions(ray_address, DEFAULT_RAY_TIMEOUT_S if ray_timeout is None else ray_timeout, workers,
                             num_cpus=threads or 1, num_gpus=1 if device == "cuda" else 0)
        result = embed_files(list(input_paths), output, ray_options=cluster, options=options,
                             input_format=flags.pop("input_format"), text_field=flags.pop("text_field"),
                             shard_rows=flags.pop("chunk_size"), resume=flags.pop("resume"),
                             progress=False if quiet else None, **flags)
    except SeqpoolError as error:
        raise as_flags(error) from None
    except KeyboardInterrupt:
        click.echo("interrupted; rerun with --resume to keep the shards already written", err=True)
        sys.exit(130)
    if not quiet:
        done = f", {result.resumed_shards} of them already done" if result.resumed_shards else ""
        click.echo(f"wrote {result.rows} x {result.dim} embeddings ({', '.join(result.strategies)}) to "
                   f"{result.folder}/ as {result.shards} parquet shards{done}", err=True)
        if result.redone:
            many = len(result.redone) > 1
            more = f" (and {len(result.redone) - 1} more)" if many else ""
            click.echo(f"note: {len(result.redone)} kept shard{'s' if many else ''} failed verification and "
                       f"{'were' if many else 'was'} embedded again: {result.redone[0]}{more}", err=True)
        _report_truncated(result.truncated, result.rows)
