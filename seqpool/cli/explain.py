"""``seqpool explain``: which words drove a trained classifier's decision.

A thin layer over :func:`seqpool.explain.explain`: texts come from the arguments or
``--input``; the terminal shows each text shaded by contribution, ``--html`` / ``--png``
write the same heat map to a file. Every option, output path and the ``--label`` are
checked before the input is read or the encoder is loaded; an output that is an input
(``--input``, the classifier's or the model's files) is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import click

from seqpool.cli import as_flags as cli_as_flags
from seqpool.cli import command_flags
from seqpool.errors import SeqpoolError


def as_flags(error: SeqpoolError) -> SeqpoolError:
    """``error`` with the parameters it names shown as ``seqpool explain``'s flags (every library
    parameter it can name is an option's own name: ``input_path`` is ``--input``)."""
    return cli_as_flags(error, command_flags(explain))


def resolve_label(label: str, labels: Sequence[Any]) -> Any:
    """The class ``label`` names: a class name first, else an index (``--label 1``).

    Returns the class name (not the index), which every explain function accepts
    unambiguously, also when the names themselves are integers.
    """
    names = [str(name) for name in labels]
    if label in names:
        return labels[names.index(label)]
    try:
        index = int(label)
    except ValueError:
        index = None
    if index is not None and 0 <= index < len(labels):
        return labels[index]
    raise SeqpoolError(f"--label {label!r}: unknown class; this classifier has {list(labels)} "
                       f"(name or index 0..{len(labels) - 1})")


@click.command()
@click.argument("texts", nargs=-1)
@click.option("--classifier", "classifier_dir", required=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder saved by PooledClassifier.save_pretrained.")
@click.option("--model", default=None,
              help="Encoder the classifier was trained on [default: the one recorded in the classifier, "
                   "else the packaged all-MiniLM-L6-v2].")
@click.option("--input", "input_path", default=None, type=click.Path(dir_okay=False, allow_dash=True),
              help="Also explain the texts of this file (txt/jsonl/json/csv/tsv/parquet, - for stdin).")
@click.option("--input-format", default=None, help="Format of --input [default: from its extension; stdin: txt].")
@click.option("--text-field", default=None,
              help="Field (jsonl/json) or column (csv/tsv/parquet) of --input holding the text [default: text].")
@click.option("--label", default=None, help="Class to explain (name or index) [default: each text's prediction].")
@click.option("--top", default=5, show_default=True, type=click.IntRange(min=0),
              help="List this many most contributing words per text.")
@click.option("--html", "html_path", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="Write the heat map as a self-contained HTML page.")
@click.option("--png", "png_path", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="Write the heat map as a PNG image.")
@click.option("--color/--no-color", default=None, help="Force colours on or off [default: on for a terminal].")
def explain(texts: tuple[str, ...], classifier_dir: Path, model: str | None, input_path: str | None,
            input_format: str | None, text_field: str | None, label: str | None, top: int,
            html_path: Path | None, png_path: Path | None, color: bool | None) -> None:
    """Colour each word of TEXTS by its contribution to the classifier's score.

    Green words raise the score of the explained class, red words lower it. With mean
    pooling the contributions add up exactly to the logit minus the bias.
    """
    from seqpool.io import TextSource, check_writable
    from seqpool.io.ownership import check_outputs_against_inputs
    from seqpool.io.ownership import input_paths

    if png_path is not None and png_path.suffix.lower() != ".png":
        raise SeqpoolError(f"--png needs a .png file name, got {png_path}")
    # a heat map never replaces what it explains: the texts, the classifier's files, the model's
    check_outputs_against_inputs({"--html": html_path, "--png": png_path},
                                 input_paths(input_path, classifier_dir, model))
    for flag, path in (("--html", html_path), ("--png", png_path)):
        if path is not None:
            check_writable(path, flag)
    if input_path is None and (text_field is not None or input_format is not None):
        raise click.UsageError("--text-field and --input-format describe --input; give --input too")
    if not texts and input_path is None:
        raise click.UsageError("give at least one text, as an argument or with --input")
    try:
        source = None if input_path is None else TextSource.open(input_path, input_format, text_field)
    except SeqpoolError as error:
        raise as_flags(error) from None

    from seqpool.explain import encoder_for, load_classifier

    classifier = load_classifier(classifier_dir)
    if label is not None:
        label = resolve_label(label, classifier.labels)  # a bogus class fails before any text is read
    all_texts = list(texts)
    if source is not None:
        try:
            all_texts.extend(source.texts())
        except SeqpoolError as error:
            raise as_flags(error) from None
    if not all_texts:
        raise click.UsageError(f"{source.name if source else 'the input'} holds no text to explain")
    _explain_and_show(all_texts, classifier, encoder_for(classifier, model), label, top, html_path, png_path, color)


def _explain_and_show(texts: list[str], classifier: Any, encoder: Any, label: Any, top: int,
                      html_path: Path | None, png_path: Path | None, color: bool | None) -> None:
    """Explain ``texts`` and print / write the heat maps."""
    from seqpool.explain import explain as explain_texts
    from seqpool.explain import render_terminal, terminal_safe, write_html, write_png

    explanations = explain_texts(texts, classifier, encoder=encoder)
    for explanation in explanations:
        click.echo(render_terminal(explanation, label), color=color)
        if top:
            words = ", ".join(f"{word} {score:+.3f}" for word, score in explanation.top_words(top, label))
            click.echo(f"top words: {terminal_safe(words) or '(none)'}")
        if explanation.truncated:
            click.echo("note: the text was truncated to the model's maximum length; later words are not shown")
        click.echo("")
    if html_path is not None:
        click.echo(f"wrote {write_html(explanations, html_path, label)}", err=True)
    if png_path is not None:
        click.echo(f"wrote {write_png(explanations, png_path, label)}", err=True)
