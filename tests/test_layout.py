"""The package's shape: imports run one way, each rule has one owner, the CLI starts fast.

These tests read the source (``ast``), so they fail on a layering mistake even where no test
happens to execute the offending import.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import time
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "metamergen"
REPO = PKG.parent

#: Lower layers first. A module may import from its own component and from components of lower
#: layers only; two components of one layer may not import each other.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("defaults", "utils"),
    ("fixations",),
    ("foveation",),
    ("encoders",),
    ("adapters",),
    ("pipeline",),
    ("testing",),
    ("loading",),
    ("training", "study"),
    ("evaluation",),
    ("metamers",),
    ("viz",),
    ("demo",),
    ("serve",),
    ("commands",),
    ("__main__",),
)
RANK = {component: i for i, layer in enumerate(LAYERS) for component in layer}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PKG.rglob("*.py") if "assets" not in p.relative_to(PKG).parts}


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The package module ``name`` refers to (a module, or the module defining an attribute)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _lazy_exports(tree: ast.Module, package: str) -> list[str]:
    """Modules a package ``__init__`` exports names from through ``lazy_exports`` (``_EXPORTS``)."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in node.targets):
            values = ast.literal_eval(node.value).values()
            return [package + v if v.startswith(".") else v for v in values]
    return []


def _imports(module: str) -> dict[str, set[str]]:
    """Package modules ``module`` imports (anywhere in the file, lazy ones too) -> names imported."""
    tree = ast.parse(MODULES[module].read_text())
    found: dict[str, set[str]] = {}
    is_package = MODULES[module].name == "__init__.py"
    base = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("metamergen"):
                    target = _resolve(alias.name)
                    found.setdefault(target, set())
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                prefix = base.rsplit(".", node.level - 1)[0] if node.level > 1 else base
                full = f"{prefix}.{node.module}" if node.module else prefix
            else:
                full = node.module or ""
            if not full.startswith("metamergen"):
                continue
            for alias in node.names:
                target = _resolve(f"{full}.{alias.name}")
                found.setdefault(target, set()).add(alias.name)
    for target in _lazy_exports(tree, module):
        if target.startswith("metamergen"):
            found.setdefault(_resolve(target), set())
    found.pop(module, None)
    return found


GRAPH = {m: _imports(m) for m in MODULES}


def _component(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "metamergen"


def test_the_package_has_no_import_cycle():
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in GRAPH[m]:
            if state.get(n) == 1:
                cycle = stack[stack.index(n) :] + [n]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m)


def test_imports_run_down_the_layers():
    assert set(RANK) >= {_component(m) for m in MODULES} - {"metamergen"}, "a new component needs a layer"
    bad = []
    for module, targets in sorted(GRAPH.items()):
        src = _component(module)
        for target, names in targets.items():
            dst = _component(target)
            if src == dst or src == "metamergen":  # the facade lazily re-exports every layer
                continue
            if dst == "metamergen":  # only the version may be read from the facade
                if names - {"__version__"}:
                    bad.append(f"{module} imports {sorted(names)} from the package facade")
                continue
            if RANK[dst] >= RANK[src]:
                bad.append(f"{module} ({src}, layer {RANK[src]}) imports {target} ({dst}, layer {RANK[dst]})")
    assert not bad, "\n".join(bad)


def _closure(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        todo.extend(GRAPH[m])
    return seen


def _uses_argparse(module: str) -> bool:
    tree = ast.parse(MODULES[module].read_text())
    return any(
        (isinstance(n, ast.Import) and any(a.name == "argparse" for a in n.names))
        or (isinstance(n, ast.ImportFrom) and n.module == "argparse")
        for n in ast.walk(tree)
    )


@pytest.mark.parametrize("entry", ["metamergen.pipeline.pipeline_metamergen", "metamergen.training.trainer"])
def test_the_model_and_the_trainer_reach_no_demo_and_no_command_line(entry):
    reached = _closure(entry)
    assert not {m for m in reached if _component(m) == "demo"}, "reaches the toy world / demo"
    assert not {m for m in reached if _uses_argparse(m)}, "reaches a module that uses argparse"


def test_argparse_and_system_exit_live_in_commands_only():
    offenders = []
    for module, path in MODULES.items():
        if _component(module) in ("commands", "__main__"):
            continue
        text = path.read_text()
        if _uses_argparse(module) or "SystemExit" in text:
            offenders.append(module)
    assert not offenders


def test_no_file_cites_anything_outside_the_repository():
    # spelled in pieces so that this file does not itself cite what it forbids
    patterns = ("DESIGN" + ".md", ".." + "/shared", "shared" + "/")
    files = [p for p in REPO.rglob("*") if p.is_file() and p.suffix in {".py", ".md", ".yaml", ".toml", ".sh", ".json"}]
    files = [p for p in files if not ({".git", ".venv", "node_modules"} & set(p.parts)) and ".egg-info" not in str(p)]
    hits = [f"{p.relative_to(REPO)}: {pat}" for p in files for pat in patterns if pat in p.read_text(errors="ignore")]
    assert not hits, "\n".join(hits)


def test_every_public_name_of_the_facade_imports():
    import metamergen

    for name in metamergen.__all__:
        assert getattr(metamergen, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        metamergen.nope  # noqa: B018


def test_lazy_exports_name_real_objects():
    import importlib

    for module, path in MODULES.items():
        if path.name != "__init__.py":
            continue
        package = importlib.import_module(module)
        for name in getattr(package, "_EXPORTS", {}):
            assert getattr(package, name) is not None, f"{module}.{name}"


def test_help_answers_without_loading_torch():
    """``metamergen --help`` and each subcommand's ``--help`` import no torch, diffusers or transformers."""
    code = (
        "import sys\n"
        "from metamergen.commands import SUBCOMMANDS, build_parser\n"
        "parser = build_parser()\n"
        "for name in ('', *SUBCOMMANDS):\n"
        "    try:\n"
        "        parser.parse_args([name, '--help'] if name else ['--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = sorted(m for m in ('torch', 'diffusers', 'transformers', 'numpy', 'PIL') if m in sys.modules)\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
    )
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    elapsed = time.perf_counter() - start
    assert "HEAVY []" in out.stderr, out.stderr
    print(f"--help of all {len(out.stdout.splitlines())} lines in {elapsed:.2f} s (interpreter start included)")


def test_no_file_points_at_the_projects_internal_issue_numbers():
    import re

    internal = re.compile(r"\b[Ii]ssue #?\d+|\(#\d+\)")
    files = [p for p in REPO.rglob("*") if p.is_file() and p.suffix in {".py", ".md", ".yaml", ".sh"}]
    files = [
        p for p in files if not ({".git", ".venv", "outputs"} & set(p.parts)) and ".egg-info" not in str(p)
    ]  # outputs/: git-ignored run folders
    hits = [
        f"{p.relative_to(REPO)}:{n}"
        for p in files
        for n, line in enumerate(p.read_text(errors="ignore").splitlines(), 1)
        if internal.search(line) and "diffusers issue" not in line and p.name != "test_layout.py"
    ]
    assert not hits, "\n".join(hits)
