"""``seqpool explain``: which words drove a trained classifier's decision.

A thin layer over :func:`seqpool.explain.explain`: texts come from the arguments or
``--input``; the terminal shows each text shaded by contribution, ``--html`` / ``--png``
write the same heat map to a file.
"""

from __future__ import annotations

from pathlib import Path

import click

from seqpool.errors import SeqpoolError


@click.command()
@click.argument("texts", nargs=-1)
@click.option("--classifier", "classifier_dir", required=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder saved by PooledClassifier.save_pretrained.")
@click.option("--model", default=None,
              help="Encoder the classifier was trained on [default: the one recorded in the classifier, "
                   "else the packaged all-MiniLM-L6-v2].")
@click.option("--input", "input_path", default=None, type=click.Path(dir_okay=False, allow_dash=True),
              help="Also explain the texts of this file (txt/jsonl/csv/tsv/parquet, - for stdin).")
@click.option("--label", default=None, help="Class to explain (name or index) [default: each text's prediction].")
@click.option("--top", default=5, show_default=True, type=click.IntRange(min=0),
              help="List this many most contributing words per text.")
@click.option("--html", "html_path", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="Write the heat map as a self-contained HTML page.")
@click.option("--png", "png_path", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="Write the heat map as a PNG image.")
@click.option("--color/--no-color", default=None, help="Force colours on or off [default: on for a terminal].")
def explain(texts: tuple[str, ...], classifier_dir: Path, model: str | None, input_path: str | None,
            label: str | None, top: int, html_path: Path | None, png_path: Path | None,
            color: bool | None) -> None:
    """Colour each word of TEXTS by its contribution to the classifier's score.

    Green words raise the score of the explained class, red words lower it. With mean
    pooling the contributions add up exactly to the logit minus the bias.
    """
    from seqpool.explain import explain as explain_texts
    from seqpool.explain import encoder_for, load_classifier, render_terminal, write_html, write_png

    if png_path is not None and png_path.suffix.lower() != ".png":
        raise SeqpoolError(f"--png needs a .png file name, got {png_path}")
    all_texts = list(texts)
    if input_path is not None:
        from seqpool.io import TextSource

        all_texts.extend(TextSource.open(input_path).texts())
    if not all_texts:
        raise click.UsageError("give at least one text, as an argument or with --input")
    classifier = load_classifier(classifier_dir)
    explanations = explain_texts(all_texts, classifier, encoder=encoder_for(classifier, model))
    if label is not None:
        explanations[0].class_index(label)  # an unknown class fails before anything is written
    for explanation in explanations:
        click.echo(render_terminal(explanation, label), color=color)
        if top:
            words = ", ".join(f"{word} {score:+.3f}" for word, score in explanation.top_words(top, label))
            click.echo(f"top words: {words or '(none)'}")
        if explanation.truncated:
            click.echo("note: the text was truncated to the model's maximum length; later words are not shown")
        click.echo("")
    if html_path is not None:
        click.echo(f"wrote {write_html(explanations, html_path, label)}", err=True)
    if png_path is not None:
        click.echo(f"wrote {write_png(explanations, png_path, label)}", err=True)
