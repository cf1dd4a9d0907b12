"""The notebooks run top to bottom (fast settings: MOFA_NOTEBOOK_FAST=1)."""

import pathlib

import pytest

pytestmark = pytest.mark.slow  # each notebook runs end to end in a kernel

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = pathlib.Path(__file__).resolve().parents[1] / "notebooks"


@pytest.fixture(autouse=True)
def _environment_kernel(monkeypatch):
    """Kernelspecs of this environment (ipykernel's) before any user-registered one."""
    monkeypatch.setenv("JUPYTER_PREFER_ENV_PATH", "1")


def test_python3_kernel_is_this_environment():
    """nbclient starts kernel "python3" from this environment's kernelspec (ipykernel)."""
    import sys

    from jupyter_client.kernelspec import KernelSpecManager

    argv = KernelSpecManager().get_kernel_spec("python3").argv
    # jupyter_client runs "python" as sys.executable, the interpreter running the tests.
    assert argv[0] in ("python", sys.executable), argv


@pytest.mark.parametrize("name", ["quickstart", "renderer_playground"])
def test_notebook_runs(name, tmp_path, monkeypatch):
    # The kernel is a child process: it inherits MOFA_CACHE_DIR (conftest) and these.
    monkeypatch.setenv("MOFA_NOTEBOOK_FAST", "1")
    monkeypatch.setenv("MOFA_NOTEBOOK_WORKDIR", str(tmp_path / "workdir"))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    # The suite's 8 devices: the quickstart notebook's fast settings are
    # `test_quickstart_trains_end_to_end_and_writes_outputs`'s, so whichever runs second
    # loads the other's programs from the persistent compilation cache (conftest).
    monkeypatch.setenv("JAX_NUM_CPU_DEVICES", "8")
    monkeypatch.delenv("MOFA_PHOTO", raising=False)
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    client = nbclient.NotebookClient(notebook, kernel_name="python3", timeout=300,
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code"
               for o in cell.get("outputs", [])]
    assert any("image/png" in o.get("data", {}) for o in outputs)


def test_every_notebook_is_valid_and_has_no_outputs():
    """Stored clean: outputs would be stale and bloat the repository."""
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        nbformat.validate(notebook)
        assert notebook.metadata.kernelspec.name == "python3", path
        assert not any(cell.get("outputs") for cell in notebook.cells
                       if cell.cell_type == "code"), path
