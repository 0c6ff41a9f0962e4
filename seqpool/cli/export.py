"""``seqpool export``: a model folder whose graph returns the sentence vector (or a classifier's logits)."""

from __future__ import annotations

from pathlib import Path

import click

from seqpool.cli import as_flags, command_flags
from seqpool.errors import SeqpoolError


@click.command()
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="A new (or empty) folder for the model file(s) and the tokenizer.")
@click.option("--format", "fmt", type=click.Choice(["onnx", "openvino"]), default="onnx", show_default=True,
              help="model.onnx (onnxruntime, transformers.js, any ONNX runtime) or OpenVINO's .xml/.bin pair.")
@click.option("--model", default=None, help="A folder or Hub id (default: the packaged all-MiniLM-L6-v2).")
@click.option("--strategy", default=None,
              help="A parameter-free strategy (mean, cls+mean, mean@-2, ...) or a saved Pooler folder; "
                   "default: the model's own pooling.")
@click.option("--normalize/--no-normalize", default=None, help="L2-normalise (default: as the model does).")
@click.option("--classifier", default=None, type=click.Path(exists=True, file_okay=False),
              help="A saved PooledClassifier folder: the graph returns its logits.")
@click.option("--dtype", type=click.Choice(["fp32", "int8"]), default="fp32", show_default=True,
              help="int8: quantized with NNCF, ranges fitted on --calibration (needs seqpool[int8]).")
@click.option("--calibration", default=None, type=click.Path(),
              help="Texts like the ones to embed (any input format seqpool reads), for --dtype int8.")
def export(output: Path, fmt: str, model: str | None, strategy: str | None, normalize: bool | None,
           classifier: str | None, dtype: str, calibration: str | None) -> None:
    """Export the model with its pooling, head and normalisation inside the graph: inputs
    input_ids + attention_mask (+ token_type_ids), either padding side; output sentence_embedding
    (or logits with --classifier)."""
    from seqpool.export import ExportRequest, export_model

    request = ExportRequest(output, fmt, model, strategy, normalize, classifier, dtype, calibration)
    try:
        folder = export_model(request)
    except SeqpoolError as error:
        raise as_flags(error, command_flags(export)) from None
    click.echo(f"exported {folder} ({fmt}, {dtype})", err=True)
