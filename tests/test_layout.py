"""The package's shape: no import cycles between modules, imports that point down
the pipeline, no module over 400 lines. Static checks over the source (nothing is imported),
so they run in milliseconds."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "igpt_eval"
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    """Dotted module name → file, for every module of the package (``a/__init__.py`` is
    the module ``a``)."""
    mods = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        mods[".".join(parts)] = path
    return mods


def _imported(node: ast.AST, module: str, is_package: bool) -> list[str]:
    """The dotted names an import statement names (a ``from a import b`` names ``a.b`` when
    that is a module, else ``a``)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:  # relative: resolve against the importing module's package
        package = module if is_package else module.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{base}" if base else package
    return [base, *(f"{base}.{a.name}" for a in node.names)]


def import_graph() -> dict[str, set[str]]:
    """Module → the package's modules it imports, anywhere in its body (imports inside
    functions count: they run too, only later).

    Importing ``a.b.c`` runs ``a/__init__`` and ``a/b/__init__`` first, so those are edges
    too, except packages that enclose the importer (they are initialised before it runs):
    a package's ``__init__`` importing its own submodules is therefore no cycle, but a
    submodule importing names from its own package's ``__init__`` is one.
    """
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for module, path in mods.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names = _imported(node, module, path.name == "__init__.py")
            for i, name in enumerate(names):
                if not name.startswith("igpt_eval"):
                    continue
                if isinstance(node, ast.ImportFrom) and i == 0 and len(names) > 1:
                    # ``from a import b, c``: ``a`` itself only when some name is no module
                    if all(n in mods for n in names[1:]):
                        continue
                while name not in mods:  # an attribute: the module that defines it
                    name = name.rpartition(".")[0]
                parts = name.split(".")
                for j in range(1, len(parts) + 1):
                    target = ".".join(parts[:j])
                    enclosing = target != name and module.startswith(target + ".")
                    if target in mods and target != module and not enclosing:
                        graph[module].add(target)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_no_import_cycles():
    assert find_cycles(import_graph()) == []


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The module graph collapsed to the package's top-level members (``igpt_eval.cache``,
    ``igpt_eval.stats``, ...): an edge where any module of one imports any of the other."""
    top = {".".join(m.split(".")[:2]) for m in graph}
    out: dict[str, set[str]] = {t: set() for t in top}
    for module, targets in graph.items():
        a = ".".join(module.split(".")[:2])
        out[a] |= {b for t in targets if (b := ".".join(t.split(".")[:2])) != a}
    return out


def test_no_package_level_cycles():
    """Stronger than no module cycle: no two stages import each other at all."""
    assert find_cycles(package_graph(import_graph())) == []
    # The collapse sees a cycle of packages that no two modules form.
    modules = {"igpt_eval.a.x": {"igpt_eval.b.y"}, "igpt_eval.b.y": {"igpt_eval.a.z"},
               "igpt_eval.a.z": set()}  # fmt: skip
    assert find_cycles(modules) == []
    assert find_cycles(package_graph(modules)) == [["igpt_eval.a", "igpt_eval.b"]]


def test_cycle_finder_sees_cycles():
    """The checker itself: a two-module cycle and a submodule importing its own package's
    ``__init__`` are found; a package importing its submodules is not a cycle."""
    graph = {"p": {"p.a"}, "p.a": {"p.b"}, "p.b": set(), "x": {"y"}, "y": {"x"}}
    assert find_cycles(graph) == [["x", "y"]]
    graph["p.b"].add("p")
    assert sorted(find_cycles(graph)) == [["p", "p.a", "p.b"], ["x", "y"]]


def test_graph_sees_imports_inside_functions():
    graph = import_graph()
    assert "igpt_eval.model.igpt" in graph["igpt_eval.model.checkpoint"]
    assert "igpt_eval.model.checkpoint" not in graph["igpt_eval.model.igpt"]


#: The pipeline's stages, bottom up (docs/design.md). A module imports its own stage, the stages
#: below it, and the shared top-level modules (``errors``, ``io``, ``defaults``,
#: ``results``, ``stats``), which import only each other; ``igpt_eval/__init__`` (the
#: package's lazy front door) is exempt.
STAGES = ("data", "model", "train", "cache", "probes", "analysis", "studies", "reporting", "cli")

#: Upward imports allowed, (importer, stage imported) with the reason: none. A study that
#: writes figures hands its results to ``reporting`` through the command that runs it.
UPWARD: dict[tuple[str, str], str] = {}


def _stage(module: str) -> int | None:
    """A module's place in :data:`STAGES` (-1: a shared top-level module; None: the
    package itself)."""
    parts = module.split(".")
    if len(parts) == 1:
        return None
    return STAGES.index(parts[1]) if parts[1] in STAGES else -1


def upward_imports(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    """(importer, stage) for every import of a later stage than the importer's."""
    found = set()
    for module, targets in graph.items():
        if (here := _stage(module)) is None:
            continue
        for target in targets:
            there = _stage(target)
            if there is not None and there > here:
                found.add((module, STAGES[there]))
    return found


def test_imports_point_down_the_pipeline():
    found = upward_imports(import_graph())
    assert found - UPWARD.keys() == set(), "an import points up the pipeline"
    assert UPWARD.keys() - found == set(), "an allowed upward import is gone: drop its entry"


def test_upward_import_finder():
    graph = {
        "igpt_eval.stats": {"igpt_eval.errors"},
        "igpt_eval.studies.probe": {"igpt_eval.cache.extraction", "igpt_eval.stats"},
        "igpt_eval.probes.sgd": {"igpt_eval.analysis.similarity", "igpt_eval.analysis"},
        "igpt_eval.results": {"igpt_eval.data"},
        "igpt_eval.cli.main": {"igpt_eval.reporting.report", "igpt_eval.data"},
        "igpt_eval": {"igpt_eval.cli.main"},
    }
    assert upward_imports(graph) == {
        ("igpt_eval.probes.sgd", "analysis"),
        ("igpt_eval.results", "data"),
    }


def test_no_long_modules():
    long = {
        str(p.relative_to(PACKAGE.parent)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}, f"modules over {MAX_LINES} lines: split them along a real seam"


#: Calls that run a model; reporting draws from results files and study records only.
_RUNS_A_MODEL = ("load_model(", "open_model(", ".generate(", "model_metrics(", ".features(",
                 "finetune_model(", "compare_models(", "track_runs(")  # fmt: skip


def test_reporting_runs_no_model():
    """Statically: no reporting module calls what runs a model, but for one convenience:
    ``probe_depth_curve`` (a notebook's one call: the probe study, then its figure)."""
    found = {}
    for path in sorted((PACKAGE / "reporting").glob("*.py")):
        code = [
            ln for ln in path.read_text().splitlines() if not ln.lstrip().startswith(("#", '"'))
        ]
        calls = [c for c in _RUNS_A_MODEL if any(c in ln and "`" not in ln for ln in code)]
        if path.name == "curve.py":
            assert sum("probe_model(" in ln for ln in code) == 1
        if calls:
            found[path.name] = calls
    assert found == {}


# --------------------------------------------------------------------------- one import path
def _bound(tree: ast.Module) -> set[str]:
    """Names a module's top level binds itself (defs, classes, assignments), not imports."""
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        targets = node.targets if isinstance(node, ast.Assign) else []
        if isinstance(node, ast.AnnAssign):
            targets = [node.target]
        for t in targets:
            names |= {n.id for n in ast.walk(t) if isinstance(n, ast.Name)}
    return names


def _exports(tree: ast.Module) -> set[str]:
    """A package's public names: its literal ``__all__``, where that spreads or sorts a
    dict of lazily imported names (``_LAZY``, ``_HOME``), that dict's keys too."""
    dicts = {
        t.id: {k.value for k in node.value.keys if isinstance(k, ast.Constant)}
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict)
        for t in node.targets
        if isinstance(t, ast.Name)
    }
    out: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            for n in ast.walk(node.value):
                if isinstance(n, ast.Constant) and isinstance(n.value, str):
                    out.add(n.value)
                elif isinstance(n, ast.Name) and n.id in dicts:
                    out |= dicts[n.id]
    return out


def indirect_imports() -> list[str]:
    """``from a import b`` anywhere in the package where ``b`` is neither bound in ``a``,
    nor a submodule of ``a``, nor a public name of the package ``a``: a name taken from a
    module that only imported it (a second import path for one name)."""
    mods = _modules()
    trees = {m: ast.parse(p.read_text(), filename=str(p)) for m, p in mods.items()}
    found = []
    for module, tree in trees.items():
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom) or node.level or node.module not in mods:
                continue
            source = trees[node.module]
            is_package = mods[node.module].name == "__init__.py"
            for a in node.names:
                if f"{node.module}.{a.name}" in mods or a.name in _bound(source):
                    continue
                if is_package and a.name in _exports(source):
                    continue
                found.append(f"{module}: {a.name} from {node.module}")
    return found


def test_one_import_path_per_name():
    """Each name is imported from the module that defines it, or from its package's public
    list; never through a module that merely imported it."""
    assert indirect_imports() == []


def test_indirect_import_finder(tmp_path, monkeypatch):
    """The finder sees a name taken through a module that imported it (a planted pair)."""
    pkg = tmp_path / "igpt_eval"
    (pkg / "a").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a" / "__init__.py").write_text("__all__ = ['f']\nfrom igpt_eval.a.m import f\n")
    (pkg / "a" / "m.py").write_text("def f():\n    pass\n")
    (pkg / "a" / "n.py").write_text("from igpt_eval.a.m import f\n")
    (pkg / "b.py").write_text("from igpt_eval.a import f\nfrom igpt_eval.a.n import f as g\n")
    monkeypatch.setitem(globals(), "PACKAGE", pkg)
    assert indirect_imports() == ["igpt_eval.b: f from igpt_eval.a.n"]
