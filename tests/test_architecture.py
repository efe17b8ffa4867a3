"""The package's import directions (README, "Architecture"), read from the source with ``ast``: no import cycle,
including imports inside functions, and none of the forbidden directions."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cs_lightning"

# (importer layer, imported layer): never allowed. A layer is a subpackage (models, data, backbones, callbacks,
# commands) or a top-level module by name.
FORBIDDEN = [
    ("models", "data"),
    ("data", "models"),
    ("prompts", "data"),
    ("prompts", "models"),
    ("prompts", "backbones"),
    ("io", "checkpoints"),
    ("errors", "*"),
]
# backbones may use nothing of ours but these (plus themselves)
BACKBONE_ALLOWED = {"backbones", "errors", "pretrained"}


def modules(root: Path) -> dict[str, Path]:
    """Every module of the package under ``root``, by dotted name (a package by its ``__init__``)."""
    found = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package modules ``name`` imports anywhere in its file (module level or inside functions), except
    under ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = {id(node) for stmt in ast.walk(tree) if isinstance(stmt, ast.If)
            and "TYPE_CHECKING" in ast.unparse(stmt.test) for node in ast.walk(stmt)}
    is_package = path.name == "__init__.py"
    top = name.split(".")[0]
    out = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            # "from package import submodule" imports the submodule; "from module import name" the module
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            if target.split(".")[0] != top:
                continue
            while target not in known and "." in target:
                target = target.rsplit(".", 1)[0]
            if target in known and target != name:
                out.add(target)
    return out


def graph(root: Path) -> dict[str, set[str]]:
    known = modules(root)
    return {name: imports(name, path, known) for name, path in known.items()}


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
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

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def violations(edges: dict[str, set[str]]) -> list[str]:
    bad = []
    for importer, targets in sorted(edges.items()):
        source = layer(importer)
        for target in sorted(targets):
            dest = layer(target)
            if dest == source or dest == "__init__":
                continue
            if dest == "commands":
                bad.append(f"{importer} -> {target}: nothing outside cs_lightning.commands imports a command")
            if source == "backbones" and dest not in BACKBONE_ALLOWED:
                bad.append(f"{importer} -> {target}: backbones use only errors and pretrained")
            for a, b in FORBIDDEN:
                if source == a and (dest == b or b == "*"):
                    bad.append(f"{importer} -> {target}: {a} must not import {b}")
    return bad


def test_the_package_has_no_import_cycle():
    edges = graph(PACKAGE)
    assert len(edges) > 40  # the walk really read the package
    assert cycles(edges) == []


def test_the_package_keeps_the_import_directions():
    edges = graph(PACKAGE)
    assert "cs_lightning.prompts" in edges["cs_lightning.models.reply"]  # imports inside functions count too
    assert violations(edges) == []


def write_package(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / "cs_lightning" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "cs_lightning"


@pytest.mark.parametrize("files, expected", [
    # a cycle through an import inside a function, as export and callbacks once had
    ({"__init__.py": "", "export.py": "from cs_lightning.callbacks.artifacts import replace_dir\n",
      "callbacks/__init__.py": "",
      "callbacks/artifacts.py": "def f():\n    from cs_lightning.export import export\n"},
     {"cycles": [["cs_lightning.callbacks.artifacts", "cs_lightning.export"]], "violations": []}),
    # models reaching into data, and a library module importing a command (relative imports resolved)
    ({"__init__.py": "", "models/__init__.py": "", "models/reply.py": "from ..data.dialogue import x\n",
      "data/__init__.py": "", "data/dialogue.py": "x = 1\n", "commands/__init__.py": "",
      "commands/export.py": "", "export.py": "from cs_lightning.commands import export\n"},
     {"cycles": [], "violations": [
         "cs_lightning.export -> cs_lightning.commands.export: nothing outside cs_lightning.commands imports a command",
         "cs_lightning.models.reply -> cs_lightning.data.dialogue: models must not import data"]}),
])
def test_the_checker_finds_cycles_and_forbidden_imports(tmp_path, files, expected):
    edges = graph(write_package(tmp_path, files))
    assert {"cycles": cycles(edges), "violations": violations(edges)} == expected
