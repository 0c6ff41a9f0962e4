"""Instruction prompts ("query: ", INSTRUCTOR-style instructions) and keeping them out of the pool.

Behaviour matches sentence-transformers (its ``encode(prompt=, prompt_name=)`` and its
``Pooling(include_prompt=False)``):

* the prompt is prepended to the text as a string, and the pair is tokenized together;
* the prompt's length is that of the prompt tokenized alone, special tokens included but a
  trailing one (``[SEP]``, ``</s>``) not -- so for BERT-style models it counts the ``[CLS]``;
* with ``include_prompt=False`` the first ``prompt_length`` real tokens of each row leave the
  pool's mask (the encoder still attends to them). So ``cls`` then means **the first token
  after the prompt** (the ``[CLS]`` is part of the prompt), ``last`` is unchanged, ``mean``
  and ``max`` cover the text's tokens and the trailing specials, and ``weighted_mean`` keeps
  the remaining tokens' original position weights (as sentence-transformers does);
* a text whose prompt fills the whole row pools to zeros.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import Tensor

from seqpool.errors import SeqpoolError


def resolve_prompt(prompt: str | None, prompt_name: str | None, prompts: Mapping[str, str] | None,
                   default_prompt_name: str | None = None) -> str | None:
    """The prompt text to prepend: ``prompt``, else ``prompts[prompt_name]``, else the model's default.

    An empty prompt means none.
    """
    prompts = dict(prompts or {})
    if prompt is not None and prompt_name is not None:
        raise SeqpoolError("pass `prompt` (the text) or `prompt_name` (a name from the model's prompts), not both")
    if prompt is not None:
        if not isinstance(prompt, str):
            raise SeqpoolError(f"`prompt` must be a string, got {type(prompt).__name__}")
        return prompt or None
    if prompt_name is not None:
        if prompt_name not in prompts:
            known = ", ".join(sorted(prompts)) if prompts else "none: pass the text as `prompt` instead"
            raise SeqpoolError(f"`prompt_name` {prompt_name!r} is not among the model's prompts ({known})")
        return prompts[prompt_name] or None
    if default_prompt_name:
        return prompts.get(default_prompt_name) or None
    return None


def prompt_length(prompt_ids: Sequence[int], special_ids: Sequence[int]) -> int:
    """Tokens of a prompt tokenized alone (with special tokens), less a trailing special token."""
    length = len(prompt_ids)
    if length and prompt_ids[-1] in set(special_ids):
        length -= 1
    return length


def prompt_token_mask(attention_mask: Tensor, prompt_lengths: Tensor | Sequence[int] | int) -> Tensor:
    """(B, T) bool: True at the first ``prompt_lengths[b]`` real tokens of each row.

    Real tokens are counted along the mask, so left, right or no padding all work.
    """
    mask = attention_mask != 0
    lengths = torch.as_tensor(prompt_lengths, device=mask.device).reshape(-1, 1)
    if lengths.shape[0] not in (1, mask.shape[0]):
        raise SeqpoolError(f"prompt_lengths has {lengths.shape[0]} entries for {mask.shape[0]} rows")
    return mask & (mask.cumsum(dim=1) <= lengths)


def exclude_prompt(attention_mask: Tensor, prompt_lengths: Tensor | Sequence[int] | int) -> Tensor:
    """The pool's (B, T) bool mask: real tokens that are not prompt tokens."""
    mask = attention_mask != 0
    return mask & ~prompt_token_mask(mask, prompt_lengths)


def pool_excluding_prompt(hidden_states: Tensor, attention_mask: Tensor,
                          prompt_lengths: Tensor | Sequence[int] | int, strategies: Sequence[str]) -> dict[str, Tensor]:
    """Pool with the prompt's tokens masked out (rules in the module docstring)."""
    from seqpool.pooling import normalize_mask, pool
    from seqpool.registry import get_strategy

    full = normalize_mask(hidden_states, attention_mask)
    kept = exclude_prompt(full, prompt_lengths)
    out: dict[str, Tensor] = {}
    for strategy in strategies:
        # a strategy whose weights depend on positions (weighted_mean) keeps the original ones,
        # as sentence-transformers does; its record names the function that does it
        keeping = get_strategy(strategy).prompt_excluded_fn()
        out[strategy] = keeping(hidden_states, full, kept) if keeping else pool(hidden_states, kept, strategy)
    return out
