"""The package's import rules (shared/DESIGN.md), read from the source with ``ast``: every
import counts, including those inside functions, so none can hide a cycle."""

from __future__ import annotations

import ast
import re

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
    ("bcvae.model", set()),     # the model and the losses read in one sitting, nothing else needed
    ("bcvae.losses", set()),
])
def test_the_core_imports_at_most_errors(module, allowed):
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
    modules = [m for m in GRAPH if _package_of(m) in ("bcvae.viz", "bcvae.latents", "bcvae.plots", "bcvae.metrics",
                                                       "bcvae.evaluate", "bcvae.checkpoint", "bcvae.distributed")]
    for module in modules:
        assert "bcvae.train" not in GRAPH[module], module


def test_only_track_imports_wandb_and_nothing_imports_cli():
    assert [m for m, deps in GRAPH.items() if "wandb" in deps] == ["bcvae.track"]
    assert [m for m, deps in GRAPH.items() if "bcvae.cli" in deps] == ["bcvae.__main__"]


def test_only_distributed_talks_to_torch_distributed():
    assert [m for m, deps in GRAPH.items() if "torch.distributed" in deps] == ["bcvae.distributed"]
    assert GRAPH["bcvae.distributed"] == {"torch.distributed"}, "it imports nothing from the package"


# Each module (a subpackage counts as one) and what it may import from the package (and
# the outside modules with one door). README.md, "Architecture", is this table in words.
MAY_IMPORT = {
    "bcvae.errors": set(),
    "bcvae.config": {"bcvae.errors"},
    "bcvae.model": set(),
    "bcvae.losses": set(),
    "bcvae.distributed": {"torch.distributed"},
    "bcvae.data": {"bcvae.config", "bcvae.errors"},
    "bcvae.track": {"bcvae.errors", "wandb"},
    "bcvae.checkpoint": {"bcvae.config", "bcvae.errors", "bcvae.model"},
    "bcvae.metrics": {"bcvae.config", "bcvae.errors", "bcvae.data"},
    "bcvae.encode": {"bcvae.data"},
    "bcvae.latents": {"bcvae.data", "bcvae.losses", "bcvae.track"},
    "bcvae.viz": {"bcvae.data", "bcvae.latents"},
    "bcvae.evaluate": {"bcvae.checkpoint", "bcvae.config", "bcvae.data", "bcvae.encode", "bcvae.errors",
                       "bcvae.losses", "bcvae.metrics", "bcvae.model", "bcvae.track"},
    "bcvae.train": {"bcvae.checkpoint", "bcvae.config", "bcvae.data", "bcvae.distributed", "bcvae.encode",
                    "bcvae.errors", "bcvae.evaluate", "bcvae.losses", "bcvae.metrics", "bcvae.model",
                    "bcvae.track", "bcvae.viz"},
    "bcvae.crossval": {"bcvae.checkpoint", "bcvae.config", "bcvae.distributed", "bcvae.errors", "bcvae.track",
                       "bcvae.train"},
    "bcvae.plots": {"bcvae.checkpoint", "bcvae.data", "bcvae.encode", "bcvae.latents", "bcvae.track", "bcvae.viz"},
    "bcvae.sweep": {"bcvae.config", "bcvae.errors", "bcvae.train"},
    "bcvae.reproduce": {"bcvae.checkpoint", "bcvae.config", "bcvae.encode", "bcvae.errors", "bcvae.evaluate",
                        "bcvae.latents", "bcvae.track", "bcvae.viz"},
    "bcvae.tc_bias": {"bcvae.checkpoint", "bcvae.data", "bcvae.errors", "bcvae.latents", "bcvae.losses"},
    "bcvae.decoded_factors": {"bcvae.checkpoint", "bcvae.data", "bcvae.encode", "bcvae.errors", "bcvae.latents",
                              "bcvae.losses", "bcvae.metrics"},
    "bcvae.within_factors": {"bcvae.checkpoint", "bcvae.data", "bcvae.encode", "bcvae.errors", "bcvae.latents"},
    "bcvae.factor_costs": {"bcvae.data", "bcvae.errors"},
    "bcvae.shift_forces": {"bcvae.checkpoint", "bcvae.data", "bcvae.errors", "bcvae.latents", "bcvae.losses",
                           "bcvae.model"},
    "bcvae.adam_steps": {"bcvae.checkpoint", "bcvae.data", "bcvae.errors", "bcvae.latents", "bcvae.losses",
                         "bcvae.model"},
    "bcvae.encoder_units": {"bcvae.checkpoint", "bcvae.data", "bcvae.errors", "bcvae.latents"},
    "bcvae.plateau": {"bcvae.checkpoint", "bcvae.errors", "bcvae.latents", "bcvae.reproduce", "bcvae.track",
                      "bcvae.viz"},
}
ENTRY_POINTS = {"bcvae", "bcvae.__main__", "bcvae.cli"}   # the command line may import anything


def test_every_module_imports_only_what_the_architecture_allows():
    for module, deps in GRAPH.items():
        node = _package_of(module)
        if node not in ENTRY_POINTS:
            outside = {_package_of(d) for d in deps} - {node, "bcvae"} - MAY_IMPORT[node]
            assert not outside, f"{module} imports {sorted(outside)}: not in its row of MAY_IMPORT (and the README)"


def test_the_architecture_and_the_readme_list_every_module():
    assert {_package_of(m) for m in GRAPH} - ENTRY_POINTS == set(MAY_IMPORT)
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Architecture\n", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"^\| `([a-z_]+)(?:\.py|/)` \|", section, flags=re.M))
    assert named == {m.split(".", 1)[1] for m in MAY_IMPORT} | {"cli"}, named
