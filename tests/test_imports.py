"""The package's import rules (shared/DESIGN.md), read from the source with ``ast``: every
import counts, including those inside functions, so none can hide a cycle."""

from __future__ import annotations

import ast

import pytest

from conftest import ROOT

PACKAGE = ROOT / "bcvae"


def _module_name(path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path) -> set[str]:
    """bcvae modules (and ``wandb``) imported anywhere in ``path``, TYPE_CHECKING blocks aside."""
    tree = ast.parse(path.read_text())
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
            and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}   # "from bcvae import viz"
    modules = {m for m in GRAPH_NODES if any(f == m for f in found)}
    for outside, prefixes in EXTERNAL.items():
        if any(f == p or f.startswith(p + ".") for f in found for p in prefixes):
            modules.add(outside)
    return modules


EXTERNAL = {"wandb": ("wandb",), "torch.distributed": ("torch.distributed", "torch.nn.parallel")}
"""Outside modules with one door each: W&B (track), multi-process training (distributed)."""


FILES = sorted(PACKAGE.rglob("*.py"))
GRAPH_NODES = {_module_name(p) for p in FILES}
GRAPH = {_module_name(p): _imports(p) - {_module_name(p)} for p in FILES}


def _package_of(module: str) -> str:
    """``bcvae.data.folds`` -> ``bcvae.data``: a subpackage counts as one node."""
    return ".".join(module.split(".")[:2])


def test_no_import_cycles():
    graph = {}
    for module, deps in GRAPH.items():   # a subpackage counts as one node
        graph.setdefault(_package_of(module), set()).update(_package_of(d) for d in deps if d not in EXTERNAL)
    for node in graph:
        graph[node].discard(node)
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == "open":
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(dep):] + [dep]))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)


@pytest.mark.parametrize("module, allowed", [
    ("bcvae.errors", set()),
    ("bcvae.config", {"bcvae.errors"}),
    ("bcvae.model", {"bcvae.config", "bcvae.errors"}),
    ("bcvae.losses", {"bcvae.config", "bcvae.errors"}),
])
def test_the_core_imports_only_config_and_errors(module, allowed):
    assert GRAPH[module] - {"bcvae"} <= allowed, GRAPH[module]


@pytest.mark.parametrize("package, allowed", [
    ("bcvae.data", {"bcvae.config", "bcvae.errors"}),
    ("bcvae.metrics", {"bcvae.config", "bcvae.errors", "bcvae.data"}),   # arrays and callables in
])
def test_a_subpackage_imports_only_what_it_may_and_itself(package, allowed):
    modules = [m for m in GRAPH if _package_of(m) == package]
    assert len(modules) > 1, modules
    for module in modules:
        outside = {_package_of(d) for d in GRAPH[module]} - {package, "bcvae"} - allowed
        assert not outside, (module, outside)


def test_figures_and_metrics_never_reach_into_the_trainer():
    modules = [m for m in GRAPH if _package_of(m) in ("bcvae.viz", "bcvae.metrics", "bcvae.evaluate",
                                                       "bcvae.checkpoint", "bcvae.distributed")]
    for module in modules:
        assert "bcvae.train" not in GRAPH[module], module


def test_only_track_imports_wandb_and_nothing_imports_cli():
    assert [m for m, deps in GRAPH.items() if "wandb" in deps] == ["bcvae.track"]
    assert [m for m, deps in GRAPH.items() if "bcvae.cli" in deps] == ["bcvae.__main__"]


def test_only_distributed_talks_to_torch_distributed():
    assert [m for m, deps in GRAPH.items() if "torch.distributed" in deps] == ["bcvae.distributed"]
    assert GRAPH["bcvae.distributed"] == {"torch.distributed"}, "it imports nothing from the package"
