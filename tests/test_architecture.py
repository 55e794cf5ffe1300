"""The module graph: imports point one way along the data flow (no cycles, even through imports
inside functions), and the text checkers stay free of JAX."""

import ast
import pathlib

import pytest

PKG = pathlib.Path(__file__).resolve().parents[1] / "cotjax"
HEAVY = {"jax", "flax", "optax", "orbax", "grain", "torch", "transformers"}


def _imports(path: pathlib.Path) -> set[str]:
    """Top-level package names and cotjax modules imported anywhere in a file."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "cotjax":
                out |= {f"cotjax.{a.name}" for a in node.names}
            else:
                out.add(node.module)
    return out


def _graph() -> dict[str, set[str]]:
    mods = {p.stem: _imports(p) for p in PKG.glob("*.py") if p.stem != "__init__"}
    return {m: {i.split(".")[1] for i in deps if i.startswith("cotjax.")} - {m}
            for m, deps in mods.items()}


def _cycle(graph) -> list[str] | None:
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == "open":
                return stack[stack.index(d):] + [d]
            if d not in state and (found := visit(d)):
                return found
        stack.pop()
        state[m] = "done"
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_no_import_cycle_among_cotjax_modules():
    assert _cycle(_graph()) is None, " -> ".join(_cycle(_graph()))


def test_the_cycle_finder_finds_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


@pytest.mark.parametrize("module", ["steps", "scoring", "records", "formatting", "synthetic",
                                    "defaults", "report", "distill",
                                    "faithfulness", "prm", "host", "gguf_file"])
def test_pure_python_modules_import_no_jax_even_indirectly(module):
    graph, seen, todo = _graph(), set(), [module]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        heavy = {i.split(".")[0] for i in _imports(PKG / f"{m}.py")} & HEAVY
        assert not heavy, f"{module} imports {m}, which imports {sorted(heavy)}"
        todo += graph[m]


def test_no_module_is_a_grab_bag():
    sizes = {p.name: len(p.read_text().splitlines()) for p in PKG.glob("*.py")}
    big = {name: n for name, n in sizes.items() if n > 620 and name != "model.py"}
    assert not big, big


def test_the_readme_layout_lists_every_module_after_what_it_imports():
    """README.md's layout says each module imports only modules listed before it."""
    import re

    text = (PKG.parent / "README.md").read_text()
    block = text[text.index("cotjax/\n  host.py"):text.index("configs/ launch/")]
    order = re.findall(r"\b([a-z_]+)\.py\b", block)
    graph = _graph()
    assert sorted(order) == sorted(graph), "the layout lists every module once"
    seen = set()
    for m in order:
        assert graph[m] <= seen, f"{m} imports {sorted(graph[m] - seen)}, listed after it"
        seen.add(m)
