"""``seqpool inspect``: what a model is and what seqpool will do with it."""

from __future__ import annotations

import json

import click


@click.command()
@click.argument("model", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the description as one JSON object.")
@click.option("--trust-remote-code", is_flag=True, help="Allow a model's own code (off unless asked).")
def inspect(model: str | None, as_json: bool, trust_remote_code: bool) -> None:
    """Describe MODEL (a folder or Hub id; default all-MiniLM-L6-v2): family, layers, the pooling
    and head it was trained with, normalisation, output width, max length, prompts, tokens, dtype."""
    from seqpool.model_info import describe_model, format_description

    info = describe_model(model, trust_remote_code=trust_remote_code)
    click.echo(json.dumps(info, indent=2) if as_json else format_description(info))
