"""``seqpool evaluate``: which pooling strategy suits my task, and is the difference real?

A thin layer over :func:`seqpool.evaluation.evaluate`: it parses options into an
:class:`~seqpool.evaluation.EvaluationSettings`, makes that one call (which checks the
outputs first, then reads, encodes, evaluates and writes the JSON and the plot), and prints
the table on stdout (progress and warnings on stderr). Library errors name Python parameters
(``folds``); this module says them as flags (``--folds``). Every user mistake is a
:class:`SeqpoolError`, which the CLI group prints as one line.
"""

from __future__ import annotations

import click

from seqpool.cli import as_flags as cli_as_flags
from seqpool.cli import command_flags
from seqpool.cli.options import parse_layers
from seqpool.errors import SeqpoolError

#: Library spellings no option of ``evaluate`` is named after (every other name is an option's own).
ALIASES = {"tune=False": "no_tune"}


def as_flags(error: SeqpoolError) -> SeqpoolError:
    """``error`` with the parameters it names shown as ``seqpool evaluate``'s flags."""
    return cli_as_flags(error, command_flags(evaluate, ALIASES))


def parse_c_grid(value: str | None) -> tuple[float, ...] | None:
    """``0.25,0.5,1,2,4,8`` -> floats; None keeps the default grid."""
    if value is None:
        return None
    try:
        grid = tuple(float(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise SeqpoolError(f"--c-grid takes comma-separated positive numbers, got {value!r}") from None
    if not grid or min(grid) <= 0:
        raise SeqpoolError(f"--c-grid takes comma-separated positive numbers, got {value!r}")
    return grid


@click.command()
@click.option("--train", "train", required=True, metavar="FILE|NAME",
              help="Labelled training data: .jsonl, .json, .csv, .tsv or .parquet (- for stdin, with "
                   "--input-format), or a Hub dataset name.")
@click.option("--test", "test", metavar="FILE|NAME",
              help="Labelled test data: fit on --train, score here [default: k-fold CV on --train].")
@click.option("--input-format", type=click.Choice(["jsonl", "json", "csv", "tsv", "parquet"]),
              help="Format of local --train/--test files [default: from the extension]; needed for stdin.")
@click.option("--text-field", default="text", show_default=True, help="Column holding the text.")
@click.option("--label-field", default="label", show_default=True, help="Column holding the label (int or str).")
@click.option("--split", help="Split of a Hub dataset given as --train [default: train].")
@click.option("--test-split", default="test", show_default=True, help="Split of a Hub dataset given as --test.")
@click.option("--strategies", metavar="NAME[,NAME...]",
              help="Strategies to compare [default: the classic comparison, parameter-free and learned "
                   "(seqpool.evaluation.DEFAULT_STRATEGIES); name others, e.g. from seqpool strategies, to add them].")
@click.option("--folds", type=int, default=10, show_default=True, help="k of the stratified k-fold CV.")
@click.option("--repeats", type=int, default=1, show_default=True,
              help="CV repeats with new splits and seeds; with --test, seeds of the learned strategies.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of every split and initialisation.")
@click.option("--model", help="HF model id or local directory [default: the packaged all-MiniLM-L6-v2].")
@click.option("--layer", default="-1", show_default=True,
              help="Hidden-state layer (0 = embeddings, -1 = last), or comma-separated layers to average.")
@click.option("--max-length", type=int, help="Truncate texts to this many tokens [default: the model's].")
@click.option("--no-tune", is_flag=True, help="Use C=1 instead of choosing C by inner CV.")
@click.option("--c-grid", metavar="C[,C...]", help="Inverse L2 strengths to choose from [default: 2^-2 .. 2^3].")
@click.option("--inner-folds", type=int, default=5, show_default=True, help="Folds of the inner CV that chooses C.")
@click.option("--max-epochs", type=int, help="Most training epochs of a learned strategy [default: 40].")
@click.option("--all-pairs", is_flag=True, help="Compare every pair of strategies, not only the best with each.")
@click.option("--seed-variance/--no-seed-variance", default=True, show_default=True,
              help="With --repeats > 1 in CV: extra fits that split a learned strategy's variance "
                   "into split and seed parts.")
@click.option("--learning-curve", metavar="N[,N...]",
              help="Also evaluate on balanced subsamples of N training examples per class (e.g. 8,16,32,64).")
@click.option("--curve-experiments", type=int, default=10, show_default=True,
              help="Subsamples per learning-curve size.")
@click.option("--cache-dir", type=click.Path(file_okay=False),
              help="Where token states are cached [default: $SEQPOOL_CACHE or ~/.cache/seqpool]; "
                   "if it cannot be written, a warning and the run continues without it.")
@click.option("--no-cache", is_flag=True, help="Neither read nor write the token-state cache.")
@click.option("--batch-size", type=int, help="Most texts per encoder batch.")
@click.option("--device", help="torch device for the encoder [default: cpu].")
@click.option("--dtype", type=click.Choice(["fp32", "bf16", "int8"]), default=None,
              help="Encoder precision [default: the model's stored dtype]; int8 calibrates on a sample of the "
                   "texts (pip install 'seqpool[int8]').")
@click.option("--threads", type=int, help="CPUs to use: encoder threads, and single-threaded fit workers (default: all).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write every number to this JSON file.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False),
              help="Write per-strategy score distributions with CIs to this image (.png/.pdf/.svg).")
@click.option("--by-length", type=int, metavar="K",
              help="Also score every strategy in K token-length quantile bins, with CIs and paired tests per bin.")
@click.option("--save-best", "save_best", type=click.Path(file_okay=False),
              help="Fit the winning strategy on all training data and save it as a PooledClassifier folder "
                   "(for seqpool explain --classifier and the pipeline); must be new or empty.")
@click.option("--overwrite", is_flag=True, help="Let --save-best replace a non-empty folder.")
@click.option("-q", "--quiet", is_flag=True, help="No progress on stderr (warnings are still shown).")
def evaluate(train: str, test: str | None, input_format: str | None, text_field: str, label_field: str,
             split: str | None, test_split: str, strategies: str | None, folds: int, repeats: int, seed: int,
             model: str | None, layer: str, max_length: int | None, no_tune: bool, c_grid: str | None,
             inner_folds: int, max_epochs: int | None, all_pairs: bool, seed_variance: bool,
             learning_curve: str | None, curve_experiments: int, cache_dir: str | None, no_cache: bool,
             batch_size: int | None, device: str | None, dtype: str | None, threads: int | None, json_path: str | None,
             plot_path: str | None, by_length: int | None, save_best: str | None, overwrite: bool,
             quiet: bool) -> None:
    """Compare pooling strategies on a labelled corpus, with honest statistics.

    \b
    One file: repeated stratified k-fold CV, the same splits for every strategy; 95% CIs
    use the Nadeau-Bengio corrected variance and comparisons the corrected resampled
    t-test. With --test: fit on train, score on test; McNemar and a paired bootstrap.
    p-values are Holm-adjusted across comparisons.

    \b
    Token states are encoded once and cached; every strategy pools from them, so a
    second run on the same data skips the encoder.
    """
    from seqpool.evaluation import DEFAULT_C_GRID, EvaluationSettings
    from seqpool.evaluation import evaluate as run_evaluation

    def log(message: str) -> None:
        if not quiet:
            click.echo(message, err=True)

    def warn(message: str) -> None:
        click.echo(f"warning: {message}", err=True)

    try:
        settings = EvaluationSettings(
            folds=folds, repeats=repeats, seed=seed, tune=not no_tune, c_grid=parse_c_grid(c_grid) or DEFAULT_C_GRID,
            inner_folds=inner_folds, learned_options={"max_epochs": max_epochs} if max_epochs is not None else None,
            seed_variance=seed_variance, all_pairs=all_pairs, learning_curve=learning_curve,
            curve_experiments=curve_experiments, by_length=by_length, text_field=text_field,
            label_field=label_field,
            input_format=input_format, split=split, test_split=test_split, model=model, layer=parse_layers(layer),
            max_length=max_length, device=device, dtype=dtype, batch_size=batch_size, threads=threads,
            cache=not no_cache,
            cache_dir=cache_dir)
        result = run_evaluation(train, test, strategies, settings=settings, json_path=json_path,
                                plot_path=plot_path, save_best=save_best, overwrite=overwrite,
                                progress=None if not quiet else False, log=log, warn=warn)
    except SeqpoolError as error:
        raise as_flags(error) from None
    click.echo(result.table(), nl=False)
