"""Token activation maps: how much each token (and word) adds to a class score.

A :class:`~seqpool.classifier.PooledClassifier` computes ``logit_c = w_c . pool(s) + b_c``
where ``s_t`` are the standardised token states. Every seqpool pooler is, for the input at
hand, a per-token, per-channel weighting of those states::

    pool(s)[k] = sum_t A[t, k] * s[t, k mod D]

* mean: ``A = m_t / n`` (the class activation map of Zhou et al. for text), mean_sqrt_len:
  ``m_t / sqrt(n)``, weighted_mean: ``k_t / sum k``, cls / last: one-hot on that token;
* max: one-hot on the token that wins each channel;
* attention: the attention weight of each head (``k = head * D + d``);
* se_mean: ``m_t g_d / n`` with the excitation gates ``g`` of this text -- exact *given the
  gates* (they depend on every token, so this is the attribution with the gates held fixed).

So ``logit_c - b_c = sum_t sum_k w_ck A[t, k] s[t, k mod D]`` **exactly**: each token's
contribution is its summand, and contributions add up to the logit minus the bias. Because
states are standardised with training statistics, a token that looks like the average
training token contributes about zero. Subword contributions are summed per word; special
tokens ([CLS], [SEP], ...) are kept apart but still count towards the sum.
"""

from __future__ import annotations

import html
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
from torch import Tensor

from seqpool.errors import SeqpoolError
from seqpool.pooling.pooler import Pooler
from seqpool.pooling import normalize_mask
from seqpool.registry import get_strategy
from seqpool.io.atomic import atomic_path
from seqpool.io.atomic import atomic_write_text

if TYPE_CHECKING:
    from seqpool.classifier import PooledClassifier
    from seqpool.encoder import Encoder


# -- the exact decomposition ----------------------------------------------------------


def pooling_weights(pooler: Pooler, states: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    """(B, T, P) weights ``A`` with ``pooler(states)[:, k] == sum_t A[:, t, k] * states[:, t, k % D]``.

    ``P`` is the pooler's output width (``heads * D`` for attention). Padded positions get 0.
    """
    mask = normalize_mask(states, attention_mask)
    weights_fn = get_strategy(pooler.strategy).weights_fn()
    if weights_fn is None:
        raise SeqpoolError(f"strategy {pooler.strategy!r} has no exact token decomposition, so explain cannot "
                           f"attribute it to tokens; train the classifier with a built-in strategy")
    weights = weights_fn(states, mask, pooler.module)
    return weights.unsqueeze(-1).expand(*states.shape) if weights.dim() == 2 else weights


@torch.no_grad()
def token_contributions(classifier: "PooledClassifier", hidden_states: Tensor,
                        attention_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(B, T, C) per-token contributions to every class logit and the (B, C) logits.

    ``contributions.sum(dim=1) + classifier.head.bias == logits`` up to float rounding.
    """
    classifier.eval()
    mask = normalize_mask(hidden_states, attention_mask)
    states = classifier.standardize(hidden_states, mask)
    weights = pooling_weights(classifier.pooler, states, mask)
    tiled = states.repeat(1, 1, weights.shape[-1] // states.shape[-1])  # k -> states[..., k % D]
    head = classifier.head.weight.float()
    contributions = torch.einsum("btk,ck->btc", weights.double() * tiled.double(), head.double()).float()
    return contributions, classifier(hidden_states, mask)


# -- texts -> explanations --------------------------------------------------------------


@dataclass
class Explanation:
    """Contributions of the tokens and words of one text to every class logit.

    ``word_contributions.sum(0) + special_contribution == logits - bias`` (to float rounding);
    ``token_contributions.sum(0)`` equals the same.
    """

    text: str
    labels: list[Any]
    logits: np.ndarray               # (C,)
    bias: np.ndarray                 # (C,)
    tokens: list[str]
    token_contributions: np.ndarray  # (T, C), special tokens included
    words: list[str]
    word_spans: list[tuple[int, int]]  # character spans of the words in ``text``
    word_contributions: np.ndarray   # (W, C)
    special_contribution: np.ndarray  # (C,) the special tokens' total
    truncated: bool = False
    #: the classes' probabilities; by default the softmax of ``logits`` (given when ``logits``
    #: are not the classifier's own, as for a one-logit binary head, see :func:`explain`)
    probabilities: np.ndarray | None = None
    #: what ``logits`` holds: ``"logit"``, or ``"log-odds"`` of a class against the other
    score_name: str = "logit"

    def __post_init__(self) -> None:
        if self.probabilities is None:
            shifted = np.exp(self.logits - self.logits.max())
            self.probabilities = shifted / shifted.sum()

    @property
    def predicted(self) -> int:
        return int(np.argmax(self.logits))

    def class_index(self, label: Any = None) -> int:
        """Index of ``label`` (a class name or index); ``None`` means the predicted class."""
        if label is None:
            return self.predicted
        if label in self.labels:
            return self.labels.index(label)
        if str(label) in [str(name) for name in self.labels]:
            return [str(name) for name in self.labels].index(str(label))
        if isinstance(label, (int, np.integer)) and 0 <= int(label) < len(self.labels):
            return int(label)
        raise SeqpoolError(f"unknown class {label!r}; this classifier has {self.labels}")

    def word_scores(self, label: Any = None) -> np.ndarray:
        """(W,) contribution of each word to ``label``'s logit (default: the predicted class)."""
        return self.word_contributions[:, self.class_index(label)]

    def top_words(self, k: int = 5, label: Any = None) -> list[tuple[str, float]]:
        """The ``k`` words with the largest absolute contribution to ``label``, largest first."""
        scores = self.word_scores(label)
        order = np.argsort(-np.abs(scores), kind="stable")[:k]
        return [(self.words[i], float(scores[i])) for i in order]


def encoder_for(classifier: "PooledClassifier", model: str | os.PathLike | None = None) -> "Encoder":
    """An Encoder for ``model`` (default: the one recorded in the classifier's config, else the
    packaged default model) with the layer and max length the classifier was trained with."""
    from seqpool.encoder import Encoder

    settings = classifier.encoder_settings
    layer, max_length = settings.choose()
    return Encoder(model if model is not None else settings.model, layer=layer, max_length=max_length)


def load_classifier(classifier: "PooledClassifier | str | os.PathLike") -> "PooledClassifier":
    from seqpool.classifier import PooledClassifier

    if isinstance(classifier, PooledClassifier):
        return classifier
    if isinstance(classifier, (str, os.PathLike)):
        return PooledClassifier.from_pretrained(classifier)
    raise SeqpoolError(f"classifier must be a PooledClassifier or its saved folder, got {type(classifier).__name__}")


def _word_groups(word_ids: Sequence[int | None], offsets: Sequence[tuple[int, int]]) -> tuple[
        list[list[int]], list[int]]:
    """Token positions grouped per word (in order) and the positions of special tokens."""
    groups: dict[int, list[int]] = {}
    special: list[int] = []
    for position, (word, span) in enumerate(zip(word_ids, offsets)):
        if word is None or span[0] == span[1]:
            special.append(position)
        else:
            groups.setdefault(word, []).append(position)
    return list(groups.values()), special


def _trimmed(text: str, start: int, end: int) -> tuple[int, int]:
    """A span without surrounding whitespace (byte-level BPE offsets include the leading space)."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _explanation(text: str, tokens: list[str], offsets: list[tuple[int, int]], word_ids: list[int | None],
                 contributions: np.ndarray, logits: np.ndarray, bias: np.ndarray, labels: list[Any],
                 truncated: bool, probabilities: np.ndarray | None = None, score_name: str = "logit") -> Explanation:
    groups, special = _word_groups(word_ids, offsets)
    spans = [_trimmed(text, offsets[g[0]][0], offsets[g[-1]][1]) for g in groups]
    per_word = np.stack([contributions[g].sum(axis=0) for g in groups]) if groups else \
        np.zeros((0, contributions.shape[1]), dtype=contributions.dtype)
    return Explanation(text=text, labels=labels, logits=logits, bias=bias, tokens=tokens,
                       token_contributions=contributions, words=[text[a:b] for a, b in spans], word_spans=spans,
                       word_contributions=per_word, special_contribution=contributions[special].sum(axis=0),
                       truncated=truncated, probabilities=probabilities, score_name=score_name)


def explain(texts: Sequence[str], classifier: "PooledClassifier | str | os.PathLike",
            encoder: "Encoder | None" = None, batch_size: int = 32) -> list[Explanation]:
    """Explain the classifier's logits for each text, token by token and word by word.

    ``encoder`` must be the one that produced the classifier's training states; by default
    it is rebuilt from the classifier's config (or the packaged default model), and one of another
    width or hidden layer than the config records is refused. Merging
    subwords into words needs a fast tokenizer (the default of ``AutoTokenizer``).
    """
    from seqpool.batching import check_texts

    texts = check_texts(texts)
    classifier = load_classifier(classifier)
    encoder = encoder if encoder is not None else encoder_for(classifier)
    if encoder.hidden_size != classifier.dim:
        raise SeqpoolError(f"the classifier was trained on {classifier.dim}-dim states but the encoder gives "
                           f"{encoder.hidden_size}; pass the encoder it was trained with")
    mismatch = classifier.encoder_settings.layer_mismatch(encoder)
    if mismatch is not None:
        raise SeqpoolError(f"{mismatch}; pass encoder=None (built from the classifier's config) or an encoder "
                           f"with layer={classifier.encoder_settings.layer_argument}", parameters=("encoder",))
    if batch_size < 1:
        raise SeqpoolError(f"batch_size must be at least 1, got {batch_size}")
    bias = classifier.head.bias.detach().float().numpy()
    one_logit = _one_logit_head(classifier)
    if one_logit:
        bias = np.array([-bias[1], bias[1]])
    explanations: list[Explanation] = []
    for batch in encoder.text_batches(texts, batch_size):  # input order; tokens with offsets and word ids
        contributions, logits = token_contributions(classifier, batch.hidden_states, batch.attention_mask)
        probabilities = torch.softmax(logits.double(), dim=-1).float().numpy()
        if one_logit:  # class 0's score is class 1's log-odds negated, token by token
            contributions[..., 0], logits[..., 0] = -contributions[..., 1], -logits[..., 1]
        for row, (text, tokenized) in enumerate(zip(batch.texts, batch.tokens)):
            offsets, word_ids = tokenized.offsets, tokenized.word_ids
            explanations.append(_explanation(text, tokenized.tokens, offsets, word_ids,
                                             contributions[row, :len(tokenized.ids)].numpy(), logits[row].numpy(),
                                             bias, list(classifier.labels), _was_truncated(text, offsets, word_ids),
                                             probabilities[row], "log-odds" if one_logit else "logit"))
    return explanations


def _one_logit_head(classifier: "PooledClassifier") -> bool:
    """Whether a binary head holds one logit, class 0's row and bias being exact zeros.

    ``evaluate --save-best`` folds a binary logistic regression that way (logits ``(0, z)``:
    the same softmax as the sigmoid of ``z``), so class 0's own decomposition is all zeros.
    Its true score is the log-odds ``-z``, whose decomposition is class 1's negated.
    """
    weight, bias = classifier.head.weight.detach(), classifier.head.bias.detach()
    return classifier.num_labels == 2 and not weight[0].any() and float(bias[0]) == 0.0 and bool(weight[1].any())


def _was_truncated(text: str, offsets: list[tuple[int, int]], word_ids: list[int | None]) -> bool:
    """Whether the tokens stop before the end of the text (only non-space text counts)."""
    ends = [end for (start, end), word in zip(offsets, word_ids) if word is not None and end > start]
    return bool(text.strip()) and (not ends or max(ends) < len(text.rstrip()))



# -- rendering --------------------------------------------------------------------------


def _intensity(scores: np.ndarray) -> np.ndarray:
    """Scores scaled to [-1, 1] by the largest magnitude (all zeros stays zeros)."""
    peak = float(np.abs(scores).max()) if scores.size else 0.0
    return scores / peak if peak > 0 else np.zeros_like(scores)


def _rgb(value: float) -> tuple[int, int, int]:
    """White to green for positive, white to red for negative (value in [-1, 1])."""
    fade = int(round(255 * (1 - min(abs(value), 1.0))))
    return (fade, 255, fade) if value >= 0 else (255, fade, fade)


def _segments(explanation: Explanation, label: Any = None) -> list[tuple[str, float | None]]:
    """The text cut into (piece, scaled score) with ``None`` for the text between words."""
    scaled = _intensity(explanation.word_scores(label))
    pieces: list[tuple[str, float | None]] = []
    cursor = 0
    for (start, end), value in zip(explanation.word_spans, scaled):
        if start > cursor:
            pieces.append((explanation.text[cursor:start], None))
        pieces.append((explanation.text[start:end], float(value)))
        cursor = end
    if cursor < len(explanation.text):
        pieces.append((explanation.text[cursor:], None))
    return pieces


def _headline(explanation: Explanation, label: Any = None) -> str:
    index = explanation.class_index(label)
    predicted = explanation.predicted
    return (f"predicted {explanation.labels[predicted]!s} (p={explanation.probabilities[predicted]:.3f}); "
            f"contributions to {explanation.labels[index]!s}: {explanation.score_name} "
            f"{explanation.logits[index]:+.3f} = words {explanation.word_scores(label).sum():+.3f} + special tokens "
            f"{explanation.special_contribution[index]:+.3f} + bias {explanation.bias[index]:+.3f}")


#: C0 controls but tab and newline, DEL and the C1 controls (0x9b is a one-byte CSI on many terminals).
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def terminal_safe(text: str) -> str:
    """``text`` with its control characters shown, not obeyed.

    A text is data: its ESC sequences must not set the window title, clear the screen or
    recolour the terminal, with colours on or off (``--no-color`` strips only the styles
    seqpool adds). C0 controls become their visible Unicode pictures (ESC -> U+241B), DEL
    U+2421, C1 controls U+FFFD; tab and newline stay.
    """
    def picture(match: re.Match[str]) -> str:
        code = ord(match.group())
        return chr(0x2400 + code) if code < 0x20 else "\u2421" if code == 0x7F else "\ufffd"

    return _CONTROL.sub(picture, text)


def render_terminal(explanation: Explanation, label: Any = None) -> str:
    """The text with each word's background shaded green (for ``label``) or red (against); control
    characters of the text and the class names are shown as symbols (:func:`terminal_safe`)."""
    import click

    body = "".join(terminal_safe(piece) if value is None else
                   click.style(terminal_safe(piece), fg="black", bg=_rgb(value))
                   for piece, value in _segments(explanation, label))
    return f"{terminal_safe(_headline(explanation, label))}\n{body}"


def render_html(explanations: Sequence[Explanation], label: Any = None) -> str:
    """A self-contained HTML page: one shaded paragraph per text, exact values on hover."""
    blocks = []
    for explanation in explanations:
        scores = iter(explanation.word_scores(label))
        spans = []
        for piece, value in _segments(explanation, label):
            if value is None:
                spans.append(html.escape(piece))
                continue
            r, g, b = _rgb(value)
            spans.append(f'<span style="background:rgb({r},{g},{b})" title="{next(scores):+.4f}">'
                         f"{html.escape(piece)}</span>")
        blocks.append(f"<p class=\"meta\">{html.escape(_headline(explanation, label))}</p>\n"
                      f"<p class=\"text\">{''.join(spans)}</p>")
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>seqpool token map</title>\n"
            "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
            ".text{font-size:1.3em;line-height:1.8}.text span{padding:0.1em 0.15em;border-radius:0.2em}"
            ".meta{color:#555;font-size:0.85em;margin-bottom:0}</style></head><body>\n"
            "<p>Green: the word raises the class score; red: it lowers it (hover for the value).</p>\n"
            + "\n".join(blocks) + "\n</body></html>\n")


def write_html(explanations: Sequence[Explanation], path: str | os.PathLike, label: Any = None) -> Path:
    """Write :func:`render_html` to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, render_html(explanations, label))
    return path


def _wrap(words: list[tuple[str, float]], width: int) -> list[list[tuple[str, float]]]:
    """Greedy line breaking of (word, value) pairs at ``width`` characters."""
    lines: list[list[tuple[str, float]]] = [[]]
    used = 0
    for word, value in words:
        if lines[-1] and used + len(word) + 1 > width:
            lines.append([])
            used = 0
        lines[-1].append((word, value))
        used += len(word) + 1
    return lines


def plot_token_map(explanations: Sequence[Explanation], label: Any = None, width: int = 90) -> Any:
    """A matplotlib heat map: each text's words in boxes shaded by contribution; returns the figure.

    Words are set in a monospace font and wrapped at ``width`` characters.
    """
    import matplotlib.pyplot as plt

    lines: list[str | list[tuple[str, float]]] = []  # a caption or a line of (word, value)
    for explanation in explanations:
        index = explanation.class_index(label)
        lines.append(f"{explanation.labels[explanation.predicted]!s} "
                     f"(p={explanation.probabilities[explanation.predicted]:.2f}); "
                     f"shading: contribution to {explanation.labels[index]!s}")
        lines.extend(_wrap(list(zip(explanation.words, _intensity(explanation.word_scores(label)))), width))
    figure, ax = plt.subplots(figsize=(0.105 * width, max(1.0, 0.32 * len(lines))))
    ax.set_axis_off()
    ax.set_xlim(0, width)
    ax.set_ylim(len(lines), 0)
    for row, line in enumerate(lines):
        if isinstance(line, str):
            ax.text(0, row + 0.6, line, va="center", ha="left", fontsize=8, color="0.4")
            continue
        column = 0
        for word, value in line:
            colour = tuple(channel / 255 for channel in _rgb(float(value)))
            ax.text(column, row + 0.5, word, va="center", ha="left", family="monospace", fontsize=10,
                    bbox={"facecolor": colour, "edgecolor": "none", "boxstyle": "round,pad=0.15"})
            column += len(word) + 1
    return figure


def write_png(explanations: Sequence[Explanation], path: str | os.PathLike, label: Any = None) -> Path:
    """Save :func:`plot_token_map` as a PNG, atomically."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure = plot_token_map(explanations, label)
    try:
        with atomic_path(path, mode="wb") as handle:
            figure.savefig(handle, format="png", dpi=120, bbox_inches="tight")
    finally:
        plt.close(figure)
    return path
