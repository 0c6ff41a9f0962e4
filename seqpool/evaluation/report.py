"""Presenting what evaluate measured: the table ``seqpool evaluate`` prints and the plot, and
the check, made before the run, that the JSON and plot paths can be written.

The functions take an :class:`~seqpool.evaluation.records.EvaluationRecord` (every
:class:`~seqpool.evaluation.result.EvaluationResult` is one), so this module never imports the
result that calls it.

Nothing here computes a statistic; it only formats what the protocol measured. Accuracies
and their CIs are printed inside [0, 100] % (the result already holds clipped CIs; the
report clips again so a result built by hand cannot print 101 %), and the method note says so.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from seqpool.errors import SeqpoolError
from seqpool.evaluation.records import EvaluationRecord
from seqpool.evaluation.settings import ALPHA, parameter_error
from seqpool.io import atomic_path, resolve_output
from seqpool.stats import MIN_SEED_DF, MIN_SPLIT_DF, clip_interval


def _percent(value: float | None, digits: int = 2) -> str:
    if value is None or not np.isfinite(value):
        return "-"
    return f"{100 * value:.{digits}f}"


def _interval(ci: tuple[float, float] | None, digits: int = 2, bounds: tuple[float, float] = (0.0, 1.0)) -> str:
    """``[low, high]`` in percent, inside ``bounds`` (accuracies: [0, 1]; differences: [-1, 1])."""
    if ci is None or not all(np.isfinite(ci)):
        return "-"
    low, high = clip_interval(ci, *bounds)
    return f"[{_percent(low, digits)}, {_percent(high, digits)}]"


@dataclass(frozen=True)
class _Delta:
    """Another strategy seen from the best one: ``other - best`` with its CI and Holm p."""

    diff: float
    ci: tuple[float, float] | None
    p_adjusted: float
    significant: bool
    p_at_floor: bool = False

    def p_text(self) -> str:
        """``0.0127``, ``<1e-4``, or ``≤0.0008`` when the raw p-value is the bootstrap's floor."""
        if self.p_at_floor:
            return f"≤{self.p_adjusted:.4f}"
        return "<1e-4" if self.p_adjusted < 1e-4 else f"{self.p_adjusted:.4f}"


def _against_best(result: EvaluationRecord) -> dict[str, _Delta]:
    deltas = {}
    for c in result.comparisons:
        if result.best not in (c.a, c.b):
            continue
        sign = -1.0 if c.a == result.best else 1.0  # comparisons hold a - b
        ci = None if c.ci95 is None else tuple(sorted(sign * x + 0.0 for x in c.ci95))
        at_floor = c.p_value <= c.extra.get("p_value_floor", -1.0) * (1 + 1e-9)
        deltas[c.b if c.a == result.best else c.a] = _Delta(sign * c.diff + 0.0, ci, c.p_adjusted, c.significant,
                                                            at_floor)
    return deltas


def format_table(result: EvaluationRecord) -> str:
    """Strategy, accuracy, CI, difference to the best with its CI, Holm-adjusted p, rank."""
    cv = result.protocol.get("mode") == "cross-validation"
    deltas = _against_best(result)
    spread = "std" if cv else "SE"
    header = ["rank", "strategy", f"accuracy % (mean ± {spread})", "95% CI", f"Δ to {result.best} [95% CI]",
              "p (Holm)", "macro-F1 %"]
    rows = []
    for name, res in sorted(result.strategies.items(), key=lambda item: item[1].rank):
        delta = deltas.get(name)
        rows.append([str(res.rank), name + (" (learned)" if res.learned else ""),
                     f"{_percent(res.mean)} ± {_percent(res.std if cv else res.standard_error)}", _interval(res.ci95),
                     "-" if delta is None else f"{100 * delta.diff:+.2f} {_interval(delta.ci, bounds=(-1.0, 1.0))}",
                     "-" if delta is None else delta.p_text() + (" *" if delta.significant else ""),
                     _percent(res.macro_f1_mean)])
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [_describe_protocol(result), "",
             "  ".join(cell.ljust(width) for cell, width in zip(header, widths)).rstrip(),
             "  ".join("-" * width for width in widths)]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines += ["", _verdict(result, deltas), _method_note(result), _variance_note(result), _timing_note(result)]
    if result.learning_curve:
        lines += ["", _curve_table(result.learning_curve)]
    if result.by_length:
        lines += ["", _length_table(result.by_length, result.best)]
    if result.saved:
        saved = result.saved
        c = f", C={saved['chosen_c']:g}" if saved.get("chosen_c") is not None else ""
        lines += ["", f"Saved {saved['strategy']} fitted on all {saved['examples']} training texts{c} to "
                      f"{saved['path']} (training accuracy {_percent(saved['training_accuracy'])} %)."]
    return "\n".join(line for line in lines if line is not None) + "\n"


def _describe_protocol(result: EvaluationRecord) -> str:
    p = result.protocol
    data = p["data"]["train"]
    if p["mode"] == "cross-validation":
        design = f"{p['folds']}-fold stratified CV x {p['repeats']} repeat{'s' if p['repeats'] > 1 else ''}"
        source = f"{data['source']} ({data['examples']} texts, {len(data['labels'])} classes)"
    else:
        design = "train/test" + (f", {p['repeats']} seeds for learned strategies" if p["repeats"] > 1 else "")
        test = p["data"]["test"]
        source = f"{data['source']} ({data['examples']}) -> {test['source']} ({test['examples']})"
    layer = p["layer"][0] if len(p["layer"]) == 1 else p["layer"]
    return f"seqpool evaluate: {source}; {design}; model {p['model']} layer {layer}; seed {p['seed']}"


def _verdict(result: EvaluationRecord, against_best: dict[str, _Delta]) -> str:
    better = [f"{name} (p{'' if c.p_text()[0] in '<≤' else '='}{c.p_text()})"
              for name, c in against_best.items() if c.significant]
    not_better = [name for name, c in against_best.items() if not c.significant]
    text = f"Best: {result.best}."
    if better:
        text += f" Significantly better (Holm-adjusted p < {ALPHA}) than: {', '.join(better)}."
    if not_better:
        text += f" Not significantly better than: {', '.join(not_better)}."
    return text


def _method_note(result: EvaluationRecord) -> str:
    tests = sorted({c.test for c in result.comparisons})
    if result.protocol["mode"] == "cross-validation":
        ci = "Nadeau-Bengio corrected t interval over the CV scores"
    else:
        ci = "bootstrap over test examples (and seeds for learned strategies)"
    return (f"CI: {ci}, clipped to [0, 100] %. Tests: {', '.join(tests) or 'none'}; "
            f"Holm correction over {len(result.comparisons)} "
            f"comparison{'s' if len(result.comparisons) != 1 else ''}. '*' = significant at {ALPHA}.")


def _variance_note(result: EvaluationRecord) -> str | None:
    parts = []
    for name, res in result.strategies.items():
        if res.learned and res.variance and "split" in res.variance:
            parts.append(_seed_split(name, res.variance))
        elif res.learned and res.variance and len(res.scores) > 1:
            parts.append(f"{name}: seed sd {_percent(np.sqrt(res.variance['seed']))} vs test-sample sd "
                         f"{_percent(np.sqrt(res.variance['test_sample']))} points")
    return ("Variance: " + "; ".join(parts) + ".") if parts else None


def _seed_split(name: str, v: dict[str, Any]) -> str:
    """The seed share with its degrees of freedom and 95 % interval, or why the design cannot say
    (fewer df than :data:`seqpool.stats.MIN_SEED_DF` / ``MIN_SPLIT_DF``, whose comment says why)."""
    if "seed_df" not in v:  # a result recorded before intervals were
        return f"{name}: {100 * v['seed_share']:.0f}% of the fold-score variance from the seed (no interval)"
    df = f"{v['split_df']} and {v['seed_df']} df"
    if not v["enough_to_split"]:
        return (f"{name}: too few repeats to split the variance ({v['splits']} splits x {v['seeds']} seeds: {df}; "
                f"needs {MIN_SPLIT_DF} and {MIN_SEED_DF}: more repeats or folds)")
    return (f"{name}: {100 * v['seed_share']:.0f}% of the fold-score variance from the seed, 95% CI "
            f"{_interval(v['seed_share_ci95'], 0)} % (one-way ANOVA, {df}; sd split "
            f"{_percent(np.sqrt(v['split']))}, seed {_percent(np.sqrt(v['seed']))} points)")


def _timing_note(result: EvaluationRecord) -> str:
    t = result.timings
    encode = [f"encode {t['encode_seconds']:.1f} s" if t["encode_seconds"] else "",
              f"cache load {t['cache_load_seconds']:.1f} s" if t["cache_load_seconds"] else ""]
    curve = f", learning curve {t['learning_curve_seconds']:.1f} s" if t["learning_curve_seconds"] else ""
    return (f"Time: {', '.join(part for part in encode if part)}; evaluation {t['evaluation_seconds']:.1f} s "
            f"(pool {t['pool_seconds']:.1f} s, fit {t['fit_seconds_parameter_free']:.1f} s parameter-free + "
            f"{t['fit_seconds_learned']:.1f} s learned{curve}).")


def _curve_table(curve: dict[str, Any]) -> str:
    sizes = curve["sizes"]
    header = ["strategy", *[f"n={n}/class" for n in sizes]]
    rows = [[name, *[f"{_percent(point['mean'], 1)} {_interval(point['ci95'], 1)}" for point in points]]
            for name, points in curve["strategies"].items()]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [f"Learning curve: accuracy % [95% CI], {curve['experiments']} balanced subsamples per size, "
             f"tested on {curve['test']} ({curve['test_examples']} examples)"]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in [header, *rows]]
    return "\n".join(lines)


def _length_table(analysis: dict[str, Any], best: str) -> str:
    """Accuracy % [95% CI] per token-length bin, then each bin's differences to the best."""
    bins = analysis["bins"]
    header = ["strategy", *[f"{b['min_tokens']}-{b['max_tokens']} tok (n={b['examples']})" for b in bins]]
    rows = [[name, *[f"{_percent(point['mean'], 1)} {_interval(point['ci95'], 1)}" for point in points]]
            for name, points in analysis["strategies"].items()]
    deltas: dict[str, list[str]] = {}  # a cell per bin from the start: a bin without a test shows "-"
    for column, comparisons in enumerate(analysis["comparisons"]):
        for c in comparisons:
            if best not in (c["a"], c["b"]):
                continue
            other, sign = (c["b"], -1.0) if c["a"] == best else (c["a"], 1.0)
            ci = None if c["ci95"] is None else tuple(sorted(sign * x + 0.0 for x in c["ci95"]))
            deltas.setdefault(other, ["-"] * len(bins))[column] = (
                f"{100 * sign * c['diff']:+.1f} {_interval(ci, 1, (-1.0, 1.0))}" + (" *" if c["significant"] else ""))
    rows += [[f"Δ {name} - {best}", *cells] for name, cells in deltas.items()]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [f"By length: accuracy % [95% CI] in {len(bins)} token-length quantile bins "
             f"(requested {analysis['k']}); {analysis['ci_method']}; '*' = significant at {ALPHA}"]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    return "\n".join(lines)


def check_output_paths(json_path: str | os.PathLike | None = None, plot_path: str | os.PathLike | None = None) -> None:
    """Fail before the (long) evaluation if an output file could not be written.

    :func:`~seqpool.evaluation.evaluate` calls it first, before reading data or loading a model.
    """
    outputs = {"json_path": json_path, "plot_path": plot_path}
    for parameter, path in outputs.items():
        if path is None:
            continue
        folder = Path(path).expanduser().resolve().parent
        existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
        if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK):
            raise parameter_error(f"cannot write {parameter} {os.fspath(path)}: {existing or folder} is not a "
                                  f"writable folder", parameter)
        try:  # the one atomic writer's rules: a folder or socket is refused, a device or FIFO streamed to
            resolve_output(Path(path).expanduser())
        except SeqpoolError as error:
            raise parameter_error(f"{parameter}: {error}", parameter) from None
    if json_path is not None and plot_path is not None and \
            Path(json_path).expanduser().resolve() == Path(plot_path).expanduser().resolve():
        raise parameter_error(f"json_path and plot_path are the same file ({os.fspath(json_path)})",
                              "json_path", "plot_path")
    if plot_path is not None:
        from matplotlib.figure import Figure

        formats = Figure().canvas.get_supported_filetypes()
        suffix = Path(plot_path).suffix.lstrip(".").lower()
        if suffix not in formats:
            raise parameter_error(f"cannot write a plot as {Path(plot_path).name!r}: use one of "
                                  f".{', .'.join(sorted(formats))}", "plot_path")


def plot_result(result: EvaluationRecord, path: str | os.PathLike) -> Path:
    """Strip plot of each strategy's scores with its mean and 95% CI (plus the learning
    curve when there is one), written atomically; the format follows the file extension."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    check_output_paths(plot_path=path)
    path = Path(path)
    order = sorted(result.strategies, key=lambda name: result.strategies[name].rank)
    panels = 1 + bool(result.learning_curve) + bool(result.by_length)
    figure, axes = plt.subplots(1, panels, figsize=(max(6.0, 1.1 * len(order)) + 5 * (panels - 1), 4.5),
                                squeeze=False)
    _plot_scores(axes[0][0], result, order)
    if result.learning_curve:
        _plot_curve(axes[0][1], result.learning_curve)
    if result.by_length:
        _plot_by_length(axes[0][-1], result.by_length)
    figure.tight_layout()
    suffix = path.suffix.lstrip(".").lower()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(path, mode="wb") as handle:
            figure.savefig(handle, format=suffix, dpi=120)
    finally:
        plt.close(figure)
    return path


def _plot_scores(axis: Any, result: EvaluationRecord, order: list[str]) -> None:
    rng = np.random.default_rng(0)  # jitter only: the plot is deterministic too
    for x, name in enumerate(order):
        res = result.strategies[name]
        scores = 100 * np.asarray(res.scores)
        axis.scatter(x + rng.uniform(-0.15, 0.15, scores.size), scores, s=12, alpha=0.5, color="tab:blue")
        low, high = 100 * np.asarray(res.ci95)
        axis.errorbar(x + 0.3, 100 * res.mean, yerr=[[100 * res.mean - low], [high - 100 * res.mean]],
                      fmt="o", color="black", capsize=4)
    axis.set_xticks(range(len(order)), order, rotation=30, ha="right")
    unit = "fold" if result.protocol["mode"] == "cross-validation" else "seed"
    axis.set_ylabel(f"accuracy % (dots: per {unit}; bar: mean, 95% CI)")
    axis.set_title(f"best: {result.best}")
    axis.grid(axis="y", alpha=0.3)


def _plot_by_length(axis: Any, analysis: dict[str, Any]) -> None:
    labels = [f"{b['min_tokens']}-{b['max_tokens']}" for b in analysis["bins"]]
    for name, points in analysis["strategies"].items():
        means = 100 * np.asarray([p["mean"] for p in points], dtype=float)
        lows, highs = (100 * np.asarray([p["ci95"][i] for p in points], dtype=float) for i in (0, 1))
        axis.plot(range(len(points)), means, marker="o", label=name)
        axis.fill_between(range(len(points)), lows, highs, alpha=0.12)
    axis.set_xticks(range(len(labels)), labels)
    axis.set_xlabel("tokens per text (quantile bins)")
    axis.set_ylabel("accuracy % (95% CI)")
    axis.set_title("by length")
    axis.legend(fontsize="small")
    axis.grid(alpha=0.3)


def _plot_curve(axis: Any, curve: dict[str, Any]) -> None:
    for name, points in curve["strategies"].items():
        sizes = [p["n_per_class"] for p in points]
        means = 100 * np.asarray([p["mean"] for p in points])
        lows, highs = (100 * np.asarray([p["ci95"][i] for p in points]) for i in (0, 1))
        axis.plot(sizes, means, marker="o", label=name)
        axis.fill_between(sizes, lows, highs, alpha=0.15)
    axis.set_xscale("log", base=2)
    axis.set_xlabel("training examples per class")
    axis.set_ylabel("accuracy % (95% CI)")
    axis.legend(fontsize="small")
    axis.grid(alpha=0.3)
