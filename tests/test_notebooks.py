"""Every notebook runs top to bottom against the session's smoke run, and the
committed notebooks carry no outputs."""

from __future__ import annotations

import pytest

from conftest import COMMITTED_PRETRAINED, ROOT

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT_S = 120


def test_there_are_notebooks():
    assert {p.name for p in NOTEBOOKS} >= {"latent_traversals.ipynb", "training_curves.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebook_has_no_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name} cell {i} has outputs"


@pytest.fixture(scope="module")
def pretrained_smoke(smoke_run, tmp_path_factory):
    """The smoke run exported as a ``pretrained/<experiment>`` directory."""
    from bcvae import evaluate

    out = tmp_path_factory.mktemp("pretrained") / "smoke"
    evaluate.export(smoke_run, out)
    return out


# A committed pretrained/<experiment> directory as a reader opens it (BCVAE_RUN=pretrained/capacity25).
COMMITTED = [str(d.relative_to(ROOT)) for d in COMMITTED_PRETRAINED]


@pytest.mark.parametrize("kind", ["run", "pretrained", *COMMITTED])
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_against_the_smoke_run(path, kind, request, monkeypatch):
    if kind.startswith("pretrained/"):
        target = ROOT / kind
    else:
        target = request.getfixturevalue("smoke_run" if kind == "run" else "pretrained_smoke")
    monkeypatch.setenv("BCVAE_RUN", str(target))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})
    client.execute()  # raises CellExecutionError naming the failing cell
    for i, cell in enumerate(nb.cells):
        last_line = cell.source.strip().splitlines()[-1] if cell.source.strip() else ""
        if cell.cell_type == "code" and ("_figure(" in last_line or last_line.startswith("Image(")):
            kinds = {kind for out in cell.outputs for kind in out.get("data", {})}
            assert kinds & {"image/png", "image/gif"}, f"{path.name} cell {i} drew no picture: {kinds}"
