"""The package's shape: its import graph runs one way (cli down to errors) and its modules stay small.

Every ``import`` of a seqpool module is an arrow, at module level or inside a function alike (a lazy
import still runs the imported module's code, so it is the same dependency paid later). Imports
under ``if TYPE_CHECKING:`` are for type checkers only: they are not arrows for the layering, but
they are for the cycle check (two modules that name each other's types are one concept split in
two, whether or not the names run). Importing ``a.b.c`` also runs the package ``a.b``'s
``__init__``, so it is an arrow to that package too.

The layering, bottom to top (a module may import its own layer or any lower one; the graph must
also have no cycles, inside a layer included):

0. ``foundation``: errors, _version, _lazy (lazy re-exports): import nothing of seqpool.
1. ``services``: io (readers, writers, atomic, digest, safetensors headers), devices, threads, progress,
   serialization, stats, quantize: each
   reads/writes files, checks settings or computes numbers; none knows about strategies, tokenizers or models (io "only reads and writes", so it sits *below* the encoder,
   and serialization's atomic write is io's one ``atomic_path``).
2. ``registry``: torch-free records; built-in records name their functions
   as ``"module:attribute"`` strings, resolved on use, so the registry sits under the math. Beside
   it model_reader (a model folder's JSON and safetensors headers, no weights), which names a
   folder's sentence-transformers pooling modes through the records (their one table).
3. ``math``: the strategy grammar (expressions); the pure half of the pooling package (its
   ``__init__``, pooling.functional, pooling.moments), local, prompts, long_texts: pure functions
   over tensors; the options of prompts/long texts/compact vectors (vector_options); texts into
   batches (batching, shared by encoder and encode_plan so neither imports the other for it).
4. ``modules``: the learned half of the pooling package (pooling.base, the one pooler base class,
   and one module per learned pooler, pooling.pooler by name), layer plans, TokenStates, the
   model's head after pooling (model_head).
5. ``encoder``: encoder, encode_plan, model_loading (builds the tokenizer and model the Encoder owns).
6. ``applications``: classifier, explain, pipeline, st_export, model_info (``seqpool inspect``).
7. ``orchestration``: embed, evaluation, distributed.
8. ``cli``.
9. the package root ``seqpool``: lazy re-exports only, so nothing below may import it
   (``from seqpool import stats`` runs through the root; name the module: ``import seqpool.stats``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "seqpool"
MAX_LINES = 600

LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("foundation", ("errors", "_version", "_lazy")),
    ("services", ("io", "devices", "threads", "progress", "serialization", "stats", "quantize", "checks")),
    ("registry", ("registry", "model_reader")),
    ("math", ("expressions", "pooling", "pooling.functional", "pooling.moments", "local", "prompts", "long_texts",
              "vector_options", "batching")),
    ("modules", ("pooling.base", "pooling.attention", "pooling.squeeze_excitation", "pooling.gem",
                 "pooling.attentive_stats", "pooling.latent_attention", "pooling.scalar_mix", "pooling.pooler",
                 "layer_plan", "states", "model_head")),
    ("encoder", ("encoder", "encode_plan", "model_loading", "int8")),
    ("applications", ("classifier", "explain", "pipeline", "st_export", "model_info", "export")),
    ("orchestration", ("embed", "evaluation", "distributed", "engine")),
    ("cli", ("cli",)),
]
ROOT_LAYER = len(LAYERS)

#: Mutually recursive pairs, each one concept split in two files (listed, so a new cycle fails).
#: None today: the registry names the expression grammar (a layer above it) by a "module:attr"
#: string, as it names every built-in function, so no import runs back down to up.
KNOWN_CYCLES: set[frozenset[str]] = set()


def _modules() -> dict[str, Path]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


MODULES = _modules()


def _owning_module(name: str) -> str:
    while name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the nodes inside ``if TYPE_CHECKING:`` blocks."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                skipped.update(id(n) for n in ast.walk(child))
    return skipped


def _targets(module: str, node: ast.Import | ast.ImportFrom, is_package: bool) -> set[str]:
    """The seqpool modules an import statement runs (the packages' __init__ on the way included)."""
    names: list[str] = []
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        if node.level:
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[: len(base) - node.level + 1]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        names = [source]
        # ``from seqpool.io import atomic`` imports the submodule; ``from seqpool import stats``
        # goes through the root package first: an arrow to the root, whatever it resolves to.
        if source != "seqpool":
            names += [f"{source}.{alias.name}" for alias in node.names if f"{source}.{alias.name}" in MODULES]
    targets = set()
    for name in names:
        if name != "seqpool" and not name.startswith("seqpool."):
            continue
        target = _owning_module(name)
        targets.add(target)
        parts = target.split(".")
        # its packages' __init__ run first, unless one is the importer's own package (already running)
        targets.update(package for package in (".".join(parts[:i]) for i in range(2, len(parts)))
                       if not (module + ".").startswith(package + "."))
    targets.discard(module)
    return targets


def import_graph(type_checking: bool = False) -> dict[str, dict[str, int]]:
    """module -> {imported module: line of the first import}; with ``type_checking``, the imports
    under ``if TYPE_CHECKING:`` count too."""
    graph: dict[str, dict[str, int]] = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        skipped = set() if type_checking else _type_checking_nodes(tree)
        edges: dict[str, int] = {}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in skipped:
                for target in _targets(module, node, path.name == "__init__.py"):
                    edges.setdefault(target, node.lineno)
        graph[module] = edges
    return graph


def layer_of(module: str) -> int:
    """The layer of the longest LAYERS entry that names ``module`` or a package above it
    (``pooling.gem`` is named itself; ``io.readers`` by its package ``io``)."""
    if module == "seqpool":
        return ROOT_LAYER
    parts = module.split(".")[1:]
    for length in range(len(parts), 0, -1):
        name = ".".join(parts[:length])
        for index, (_, members) in enumerate(LAYERS):
            if name in members:
                return index
    raise AssertionError(f"{module} is in no layer: add it to LAYERS in {Path(__file__).name}")


def _cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, {}):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


GRAPH = import_graph()
#: every arrow, the type checker's included: what the cycle check runs on
TYPED_GRAPH = import_graph(type_checking=True)


def test_every_module_has_a_layer():
    for module in MODULES:
        layer_of(module)


def test_no_import_runs_up_the_layering():
    upward = [f"{MODULES[source].relative_to(PACKAGE.parent)}:{line} imports {target} "
              f"({LAYERS[layer_of(source)][0]} -> {'root' if layer_of(target) == ROOT_LAYER else LAYERS[layer_of(target)][0]})"
              for source, edges in GRAPH.items() for target, line in edges.items()
              if source != "seqpool" and layer_of(target) > layer_of(source)]
    assert upward == [], "\n".join(upward)


def test_import_graph_has_no_cycles():
    """No cycle at all, not even one that only a type checker follows (``if TYPE_CHECKING:``)."""
    cycles = [cycle for cycle in _cycles(TYPED_GRAPH) if frozenset(cycle) not in KNOWN_CYCLES]
    assert cycles == [], "\n".join(" <-> ".join(cycle) for cycle in cycles)


def test_known_cycles_are_still_real():
    """A listed exception that no longer exists must leave the list (it cannot hide a new one)."""
    present = {frozenset(cycle) for cycle in _cycles(TYPED_GRAPH)}
    assert KNOWN_CYCLES <= present


def test_the_cycle_check_sees_type_checking_imports():
    """An import only a type checker runs is no arrow for the layering, but is one for the cycle check."""
    assert all(set(GRAPH[module]) <= set(TYPED_GRAPH[module]) for module in GRAPH)
    # e.g. the lazy packages (seqpool, seqpool.evaluation) import their exports under TYPE_CHECKING
    assert any(set(TYPED_GRAPH[module]) - set(GRAPH[module]) for module in GRAPH)


def test_the_checker_sees_what_it_checks():
    """The graph holds arrows of each kind the rules are about (so an empty violation list means something)."""
    assert "seqpool.errors" in GRAPH["seqpool.pooling"]  # module level
    assert "seqpool.io.atomic" in GRAPH["seqpool.states"]  # inside a function
    assert "seqpool.io" in GRAPH["seqpool.serialization"]  # a package's __init__ runs too
    assert GRAPH["seqpool.errors"] == {}
    fake = ast.parse("from seqpool import stats\n")
    assert _targets("seqpool.evaluation.protocol", fake.body[0], False) == {"seqpool"}  # via the root
    lazy = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import seqpool.cli\n")
    assert len(_type_checking_nodes(lazy)) > 0
    assert _cycles({"a": {"b": 1}, "b": {"a": 1}, "c": {"a": 1}}) == [["a", "b"]]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_is_at_most_600_lines(module):
    lines = len(MODULES[module].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{MODULES[module]} has {lines} lines; split it by concern"
