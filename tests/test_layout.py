"""The module map of docs/architecture.md is the import order: a module imports only
modules listed above it (deferred imports included), so there are no import cycles."""

import ast
import pathlib
import re

REPO = pathlib.Path(__file__).resolve().parents[1]


def _module_map() -> list[str]:
    text = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    block = text.split("```")[1]
    return [m.group(1) for line in block.splitlines()
            if (m := re.match(r"(mofa/[\w/]+?(?:\.py|/))\s", line + " "))]


def _rank(entries: list[str], path: str):
    """Index of the map entry holding `path` (a file or a package folder), or None."""
    for i, entry in enumerate(entries):
        if path == entry or (entry.endswith("/") and path.startswith(entry)):
            return i
    return None


def _imported_paths(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "mofa":
            if node.module == "mofa":
                yield from (f"mofa/{a.name}" for a in node.names)
            else:
                yield "mofa/" + node.module[len("mofa."):].replace(".", "/")
        elif isinstance(node, ast.Import):
            yield from ("/".join(a.name.split(".")) for a in node.names
                        if a.name.split(".")[0] == "mofa" and "." in a.name)


def test_every_module_is_on_the_map_and_imports_only_what_is_above_it():
    entries = _module_map()
    assert len(entries) > 20, entries
    unmapped, upward = [], []
    for file in sorted((REPO / "mofa").rglob("*.py")):
        path = file.relative_to(REPO).as_posix()
        if path == "mofa/__init__.py":
            continue
        own = _rank(entries, path)
        if own is None:
            unmapped.append(path)
            continue
        for target in _imported_paths(ast.parse(file.read_text(encoding="utf-8"))):
            rank = _rank(entries, target + ".py")
            rank = _rank(entries, target + "/") if rank is None else rank
            if rank is not None and rank > own:
                upward.append(f"{path} imports {target} (listed below it)")
    assert not unmapped, f"modules missing from docs/architecture.md: {unmapped}"
    assert not upward, "\n".join(upward)
