"""dvc.yaml's graph is complete: `dvc repro` reruns a stage whenever code it runs has changed.

Each stage's deps must list its script and every src/nanoslm module that script imports, directly or through
other modules, at any depth and also inside functions (a lazy import still runs).
"""

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from conftest import REPO

PACKAGE = REPO / "src" / "nanoslm"


def nanoslm_imports(path: Path, when_imported: bool = False) -> set[str]:
    """Names of the nanoslm modules one file imports (e.g. {'config', 'bench.phases'}), anywhere in it, or with
    when_imported only those its own import runs (its top-level statements, not its functions)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    inside = PACKAGE in path.parents
    here = path.relative_to(PACKAGE).parent.parts if inside else ()
    found = set()
    for node in (_outside_functions(tree) if when_imported else ast.walk(tree)):
        if isinstance(node, ast.Import):
            found |= {a.name.removeprefix("nanoslm.") for a in node.names if a.name.startswith("nanoslm.")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x / from .x import y / from ..x import y
                base = list(here[: len(here) - node.level + 1])
            elif node.module and (node.module == "nanoslm" or node.module.startswith("nanoslm.")):
                base = []
                node = ast.ImportFrom(module=node.module.removeprefix("nanoslm").lstrip(".") or None,
                                      names=node.names, level=0)
            else:
                continue
            prefix = base + (node.module.split(".") if node.module else [])
            if prefix:
                found.add(".".join(prefix))
            for alias in node.names:  # `from . import x` may name a module x
                found.add(".".join(prefix + [alias.name]))
    return {name for name in found if module_file(name) is not None}


def _outside_functions(tree: ast.AST):
    """The nodes of a module that its import runs (an `if TYPE_CHECKING:` block's included), not function bodies."""
    for node in ast.iter_child_nodes(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            yield node
            yield from _outside_functions(node)


def module_file(name: str):
    """The file of nanoslm module `name`, or None when `name` is not a module (a function, a class)."""
    path = PACKAGE.joinpath(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def closure(script: Path) -> set[Path]:
    """Every nanoslm source file that running `script` can import, with the package's __init__ files."""
    todo, seen = [script], set()
    while todo:
        for name in nanoslm_imports(todo.pop()):
            parts = name.split(".")
            for depth in range(1, len(parts) + 1):  # importing a.b runs a/__init__.py first
                f = module_file(".".join(parts[:depth]))
                if f is not None and f not in seen:
                    seen.add(f)
                    todo.append(f)
    return seen | {PACKAGE / "__init__.py"}


STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_deps_list_every_module_its_script_imports(name):
    stage = STAGES[name]
    script = next(part for part in stage["cmd"].split() if part.startswith("stages/"))
    deps = {REPO / d for d in stage["deps"]}
    assert REPO / script in deps, f"{name}: dvc.yaml deps miss its own script {script}"
    covered = lambda f: f in deps or any(d in f.parents for d in deps)  # noqa: E731 - a dir dep covers its files
    missing = sorted(str(f.relative_to(REPO)) for f in closure(REPO / script) if not covered(f))
    assert not missing, f"dvc.yaml stage {name!r} deps miss modules its script imports: {', '.join(missing)}"


def test_the_import_finder_sees_direct_relative_and_lazy_imports(tmp_path):
    # stages/train.py imports the train package, whose loop imports plotting at module level and dvclive lazily
    found = closure(REPO / "stages" / "train.py")
    for module in ("config", "errors", "train/loop", "train/log", "plotting", "atomic", "model"):
        assert PACKAGE / f"{module}.py" in found
    # cli.py imports evaluate_text only inside a function
    assert "evaluate_text" in nanoslm_imports(PACKAGE / "cli.py")
    assert "evaluate_text" not in nanoslm_imports(PACKAGE / "cli.py", when_imported=True)
    assert PACKAGE / "cli.py" not in found


def third_party_imports(files) -> set[str]:
    """Top-level names of the non-stdlib, non-nanoslm modules that `files` import anywhere."""
    names = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n != "nanoslm"}


def required_distributions() -> set[str]:
    """The distributions `pip install .` brings: pyproject's [project] dependencies, without extras."""
    deps = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    return {re.split(r"[<>=!~;\[ ]", d, maxsplit=1)[0].lower().replace("_", "-") for d in deps}


@pytest.mark.parametrize("name", sorted(STAGES))
def test_every_stage_runs_with_the_packages_own_dependencies(name):
    """No stage of the default pipeline may need an optional extra (`pip install .` then `dvc repro` works)."""
    script = REPO / next(part for part in STAGES[name]["cmd"].split() if part.startswith("stages/"))
    provided = importlib.metadata.packages_distributions()
    required = required_distributions()
    missing = {}
    for module in third_party_imports(closure(script) | {script}):
        dists = {d.lower().replace("_", "-") for d in provided.get(module, [module])}
        if not dists & required:
            missing[module] = sorted(dists)
    assert not missing, f"stage {name!r} imports modules outside pyproject's dependencies: {missing}"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_deps_list_no_module_its_script_does_not_import(name):
    """A dep the script never imports would rerun the stage (ten minutes of training) for an unrelated edit."""
    stage = STAGES[name]
    script = next(part for part in stage["cmd"].split() if part.startswith("stages/"))
    imported = closure(REPO / script)
    extra = sorted(d for d in stage["deps"] if d.startswith("src/")
                   and not any(f == REPO / d or REPO / d in f.parents for f in imported))
    assert not extra, f"dvc.yaml stage {name!r} lists modules its script never imports: {', '.join(extra)}"


@pytest.mark.parametrize("name", ["train", "evaluate", "sample"])
def test_readers_of_tokens_do_not_depend_on_the_writer_or_the_download_readers(name):
    """Editing how stories are downloaded or tokens written must not rerun training, evaluation or sampling."""
    script = next(part for part in STAGES[name]["cmd"].split() if part.startswith("stages/"))
    writers = {PACKAGE / f"{m}.py" for m in ("sources", "vocab", "tokenization")}
    assert not closure(REPO / script) & writers


def test_no_stage_script_shadows_a_standard_library_module():
    """`python stages/x.py` puts stages/ first on sys.path: a stages/tokenize.py would replace the stdlib's."""
    shadowing = sorted(p.name for p in (REPO / "stages").glob("*.py") if p.stem in sys.stdlib_module_names)
    assert not shadowing


def test_the_package_has_no_import_cycles():
    """A cycle makes import order matter (a half-initialised module) and ties unrelated modules together."""
    names = [".".join(p.relative_to(PACKAGE).with_suffix("").parts).removesuffix(".__init__")
             for p in PACKAGE.rglob("*.py")]
    # a submodule naming its own package (`from . import x` in serve/app.py) adds no edge: importing it ran the
    # package's __init__ first anyway
    ancestors = lambda n: {".".join(n.split(".")[:i]) for i in range(1, n.count(".") + 1)}  # noqa: E731
    graph = {n: nanoslm_imports(module_file(n), when_imported=True) - {n} - ancestors(n)
             for n in names if n != "__init__"}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join(path[path.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n, [n])
