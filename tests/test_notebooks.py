"""The notebooks run top to bottom (nbclient, the venv's python3 kernel) against a tiny trained
run, and the stored .ipynb files are exactly what notebooks/_build.py writes, without outputs."""

import importlib.util
import json
import math
from pathlib import Path

import jax
import nbformat
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"


def _build_module():
    spec = importlib.util.spec_from_file_location("notebooks_build", NOTEBOOKS / "_build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _execute(name: str, monkeypatch, **env: str) -> nbformat.NotebookNode:
    """The notebook after running every cell; a cell that raises fails the test (nbclient raises
    CellExecutionError). The kernel inherits this process's environment, so env reaches it."""
    monkeypatch.setenv("COTJAX_REPO", str(REPO))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(nb, kernel_name="python3", timeout=300,
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    return nb


def _outputs(nb, mime: str) -> list[str]:
    """Every output of this MIME type (stream text counts as text/plain), in cell order."""
    out = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            if o.output_type == "stream" and mime == "text/plain":
                out.append(o.text)
            elif mime in o.get("data", {}):
                out.append(o.data[mime])
    return out


def test_stored_notebooks_are_the_build_without_outputs():
    build = _build_module()
    assert set(build.NOTEBOOKS) == {p.name for p in NOTEBOOKS.glob("*.ipynb")}
    for name, cells in build.NOTEBOOKS.items():
        stored = nbformat.read(NOTEBOOKS / name, as_version=4)
        nbformat.validate(stored)
        expected = build.make(cells)
        assert [(c.cell_type, c.id, c.source) for c in stored.cells] == \
               [(c.cell_type, c.id, c.source) for c in expected.cells], \
               f"{name} differs from notebooks/_build.py: run `python notebooks/_build.py`"
        code = [c for c in stored.cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in code), name


def test_inspect_data_runs_on_a_config_with_its_own_tokenizer(tiny_run, monkeypatch):
    nb = _execute("inspect_data.ipynb", monkeypatch,
                  COTJAX_NB_CONFIG=str(tiny_run["config_file"]))
    [tokens] = _outputs(nb, "text/html")
    assert tokens.count("<span") > 100  # the packed row, token by token
    assert "font-weight:bold" in tokens  # tokens that carry loss are marked
    text = "".join(_outputs(nb, "text/plain"))
    stats = json.loads(text[text.index("{\n"):text.index("\n}") + 2])
    assert stats["examples"] > 0 and 0 < stats["packing_efficiency"] <= 1
    assert _outputs(nb, "image/png")  # the length histogram


def test_explore_checkpoint_shows_config_params_curves_and_answers(tiny_run, monkeypatch):
    from cotjax import checkpoint, load

    nb = _execute("explore_checkpoint.ipynb", monkeypatch,
                  COTJAX_NB_WORKDIR=str(tiny_run["workdir"]), COTJAX_NB_QUESTIONS="2",
                  COTJAX_NB_MAX_NEW_TOKENS="16",
                  # two devices: the run's mesh (fsdp=2) fits, so parameters show their sharding
                  XLA_FLAGS="--xla_force_host_platform_device_count=2")
    text = "".join(_outputs(nb, "text/plain"))
    assert "model: random" in text and "fsdp: 2" in text  # the run's config
    summary = json.loads(next(line for line in text.splitlines() if '"parameters"' in line))
    _, model_cfg = checkpoint.read_run_config(tiny_run["workdir"])
    shapes, _ = load.abstract_params(model_cfg)
    assert summary["parameters"] == sum(math.prod(s.shape) for s in jax.tree.leaves(shapes))
    params, answers, interventions = _outputs(nb, "text/html")
    assert "implied answer" in interventions and "steps kept" in interventions
    assert "<td>layers/wq</td><td>(2, 32, 4, 8)</td>" in params
    assert "P(&#x27;fsdp&#x27;" in params or "&#x27;fsdp&#x27;)" in params  # sharded over fsdp
    # the loss and accuracy figure; the committed early-answering curves
    assert len(_outputs(nb, "image/png")) == 2
    assert "<th>base</th><th>fine-tuned</th>" in answers
    assert answers.count("gold: ") == 2 and answers.count("steps valid") == 4
