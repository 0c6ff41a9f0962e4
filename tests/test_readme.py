"""Every ```python block of README.md runs, so the README cannot drift from the code.

The blocks run in order in one namespace, as a reader pastes them into one session, in an
empty working folder. The README names two things a user brings; the test stands in for
them, and nothing else:

* ``mr.jsonl``, the user's labelled corpus: a small generated two-class file (fast);
* the Hub id ``sentence-transformers/all-MiniLM-L6-v2`` (the pipeline example): a local
  folder of that name linking to the packaged copy of the same model (no network);
* ``minilm-onnx``, the folder the README's ``seqpool export -o minilm-onnx`` makes (the
  onnxruntime example): made here by the same command.

``examples/reviews.jsonl`` is no stand-in: the clone's own file is copied in, since the README's
commands run from the clone's root. ``test_readme_evaluate_command_runs_offline`` runs the README's
first ``seqpool evaluate`` command, as written, from the repository root with the Hub off.

A block whose first line is ``# readme-test: skip (<reason>)`` is not run (today: the Ray
cluster and Spark recipes, which tests/test_distributed.py runs locally instead).
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
REPO = README.parent
SKIP = re.compile(r"#\s*readme-test:\s*skip\s*\((?P<reason>[^)]+)\)")


def python_blocks(markdown: str) -> list[tuple[int, str]]:
    """(line number, code) of every fenced ```python block, in order."""
    blocks, current, start = [], None, 0
    for number, line in enumerate(markdown.splitlines(), start=1):
        if current is None and line.strip() == "```python":
            current, start = [], number + 1
        elif current is not None and line.strip() == "```":
            blocks.append((start, "\n".join(current) + "\n"))
            current = None
        elif current is not None:
            current.append(line)
    assert current is None, f"README.md: the ```python block at line {start} is never closed"
    return blocks


def skip_reason(code: str) -> str | None:
    first = code.lstrip().splitlines()[0] if code.strip() else ""
    match = SKIP.fullmatch(first.strip())
    return match.group("reason") if match else None


def test_block_extraction_and_skip_marker():
    markdown = "text\n```python\nx = 1\n```\n```bash\nls\n```\n```python\n# readme-test: skip (needs a GPU)\ny\n```\n"
    blocks = python_blocks(markdown)
    assert blocks == [(3, "x = 1\n"), (9, "# readme-test: skip (needs a GPU)\ny\n")]
    assert [skip_reason(code) for _, code in blocks] == [None, "needs a GPU"]


def labelled_corpus(path: Path, per_class: int = 30) -> None:
    """A small two-class stand-in for the user's ``mr.jsonl`` (one review per line, label 0/1)."""
    good = ["a fine film", "a warm and funny story", "great acting", "a charming , moving tale", "a joy to watch"]
    bad = ["a dull one", "a boring , lifeless film", "bad acting", "a tedious mess", "a waste of time"]
    rows = [{"text": f"{words[i % 5]} {i}", "label": label}
            for label, words in ((1, good), (0, bad)) for i in range(per_class)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


@pytest.mark.integration
def test_readme_python_blocks_run(tmp_path, monkeypatch):
    from seqpool.encoder import default_model_path

    blocks = python_blocks(README.read_text(encoding="utf-8"))
    assert len(blocks) >= 7, "README.md lost its Python examples?"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SEQPOOL_CACHE", str(tmp_path / "cache"))
    labelled_corpus(tmp_path / "mr.jsonl")
    (tmp_path / "examples").mkdir()
    shutil.copy(REPO / "examples" / "reviews.jsonl", tmp_path / "examples" / "reviews.jsonl")
    (tmp_path / "sentence-transformers").mkdir()
    (tmp_path / "sentence-transformers" / "all-MiniLM-L6-v2").symlink_to(default_model_path(), target_is_directory=True)
    from click.testing import CliRunner

    from seqpool.cli import main

    exported = CliRunner().invoke(main, ["export", "-o", str(tmp_path / "minilm-onnx")])
    assert exported.exit_code == 0, exported.output
    namespace: dict = {"__name__": "readme"}
    skipped = []
    for line, code in blocks:
        reason = skip_reason(code)
        if reason is not None:
            skipped.append((line, reason))
            continue
        try:
            exec(compile(code, f"README.md:{line}", "exec"), namespace)  # noqa: S102 - the README is ours
        except Exception as error:  # the failing block's README line, not a bare traceback
            pytest.fail(f"README.md, the ```python block at line {line} fails: {type(error).__name__}: {error}")
    # keep skips rare, and each one must name the test that runs its code instead
    assert len(skipped) <= 2, f"keep skips rare: {skipped}"
    assert all("tests/test_" in reason for _, reason in skipped), f"a skip must name its test: {skipped}"


def marked_command(markdown: str, marker: str) -> str:
    """The first line of the code block after ``<!-- marker -->`` (as .ci/run reads the README's
    two commands), with a backslash-continued line joined."""
    lines = markdown.splitlines()
    start = lines.index(f"<!-- {marker} -->")
    assert lines[start + 1].startswith("```"), f"README.md: no code block right after <!-- {marker} -->"
    command = ""
    for line in lines[start + 2:]:
        command += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            return command.strip()
    raise AssertionError(f"README.md: the block after <!-- {marker} --> is never closed")


def test_marked_command_reads_the_line_after_the_marker():
    markdown = "x\n<!-- c -->\n```bash\nseqpool evaluate --train a \\\n    --folds 5\nnext\n```\n"
    assert marked_command(markdown, "c") == "seqpool evaluate --train a --folds 5"


@pytest.mark.integration
def test_readme_evaluate_command_runs_offline(tmp_path, monkeypatch):
    """The README's first ``seqpool evaluate`` command works on a fresh clone without a network:
    its data ship in examples/, its model in the package (the Hub is switched off here)."""
    from click.testing import CliRunner

    from seqpool.cli import main

    command = marked_command(README.read_text(encoding="utf-8"), "evaluate-command")
    words = shlex.split(command)
    assert words[:2] == ["seqpool", "evaluate"] and "examples/reviews.jsonl" in words, command
    monkeypatch.chdir(REPO)
    for variable in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(variable, "1")
    monkeypatch.setenv("SEQPOOL_CACHE", str(tmp_path / "cache"))
    result = CliRunner().invoke(main, words[1:])
    assert result.exit_code == 0, result.output
    assert "examples/reviews.jsonl (100 texts, 2 classes); 5-fold stratified CV" in result.output
    assert "Best: " in result.output
