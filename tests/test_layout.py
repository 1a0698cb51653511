"""The package layout: one import root, every package folder installed, no upward imports."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
SETUP = PYPROJECT["tool"]["setuptools"]
# the layers, lowest first; a module may import only its own layer and the ones before it. Inside
# gpu/: the kernels, then the network (gpu/model), the tasks, the run (gpu/run), then what is built
# on runs (transfer, redundancy, bench, reproduce: the rest of cramkit.gpu). A module belongs to the
# layer of its longest matching name.
LAYERS = ["cramkit", "cramkit.theory", "cramkit.sim", "cramkit.gpu.ops", "cramkit.gpu.model", "cramkit.gpu.tasks",
          "cramkit.gpu.run", "cramkit.gpu", "cramkit.cli"]
MAX_LINES = 500  # no module under gpu/ is longer (gpu/ops kernels excepted)


def _package_of(folder: Path) -> str:
    rel = folder.relative_to(ROOT)
    for name, where in sorted(SETUP["package-dir"].items(), key=lambda kv: -len(kv[1])):
        if rel == Path(where) or Path(where) in rel.parents:
            rest = rel.relative_to(where).parts
            return ".".join((name, *rest))
    raise AssertionError(f"{rel} is not under any mapped folder")


def _package_folders() -> list[Path]:
    out = []
    for where in SETUP["package-dir"].values():
        out += [p.parent for p in (ROOT / where).rglob("__init__.py") if "__pycache__" not in p.parts]
    return out


def test_every_package_folder_is_listed():
    listed = set(SETUP["packages"])
    missing = sorted(_package_of(f) for f in _package_folders() if _package_of(f) not in listed)
    assert not missing, f"add these to [tool.setuptools] packages in pyproject.toml: {missing}"


def test_one_import_root():
    assert all(name == "cramkit" or name.startswith("cramkit.") for name in SETUP["package-dir"])
    assert all(p == "cramkit" or p.startswith("cramkit.") for p in SETUP["packages"])


def _layer(module: str) -> int:
    matches = [(len(name), i) for i, name in enumerate(LAYERS) if module == name or module.startswith(name + ".")]
    return max(matches)[1] if matches else 0


def test_no_import_runs_upward():
    bad = []
    for folder in {f for f in _package_folders()}:
        for path in folder.glob("*.py"):
            own = _layer(_package_of(folder))
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = []
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module]
                elif isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                for mod in names:
                    if mod.startswith("cramkit") and _layer(mod) > own:
                        bad.append(f"{path.relative_to(ROOT)} imports {mod}")
    assert not bad, bad


def test_no_bare_layer_imports():
    """Nothing imports the folders by their bare names (theory, sim, gpu, cram_cli)."""
    bad = []
    for path in list(ROOT.glob("*/**/*.py")):
        if ".venv" in path.parts or "build" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            mods = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                mods = [node.module]
            elif isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            bad += [f"{path.relative_to(ROOT)}: {m}" for m in mods
                    if m.split(".")[0] in {"theory", "sim", "gpu", "cram_cli"}]
    assert not bad, bad


def _module_of(path: Path) -> str:
    pkg = _package_of(path.parent)
    return pkg if path.stem == "__init__" else f"{pkg}.{path.stem}"


def _imports(path: Path, *, top_level_only: bool, modules: frozenset[str] = frozenset()) -> set[str]:
    """The cramkit modules ``path`` imports; ``from pkg import name`` is an import of the module
    ``pkg.name`` when that is one of ``modules``, else of ``pkg``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = {f"{node.module}.{a.name}" for a in node.names} & modules
            out |= subs if len(subs) == len(node.names) else subs | {node.module}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
    return {m for m in out if m.startswith("cramkit")}


def test_module_imports_have_no_cycle():
    """The graph of module-level imports between the package's modules is acyclic (lazy imports
    inside functions are held to the layers by test_no_import_runs_upward)."""
    paths = [p for f in _package_folders() for p in f.glob("*.py")]
    mods = {_module_of(p): p for p in paths}
    graph = {m: {d for d in _imports(p, top_level_only=True, modules=frozenset(mods)) if d in mods and d != m}
             for m, p in mods.items()}
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(d):] + [m, d]) if d in stack else f"{m} -> {d}")
            if d not in state:
                visit(d, stack + [m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])


def test_gpu_modules_stay_short():
    """Each file under gpu/ is one job: none passes MAX_LINES (the op kernels in gpu/ops excepted)."""
    gpu = ROOT / SETUP["package-dir"]["cramkit.gpu"]
    long = [f"{p.relative_to(ROOT)}: {n} lines" for p in gpu.rglob("*.py")
            if "ops" not in p.relative_to(gpu).parts and (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES]
    assert not long, long


def test_network_does_not_import_the_run():
    """gpu/model (the network) never imports gpu/run (training, checkpoints, evaluation)."""
    model = ROOT / SETUP["package-dir"]["cramkit.gpu"] / "model"
    bad = [f"{p.name} imports {m}" for p in model.glob("*.py") for m in _imports(p, top_level_only=False)
           if m.startswith("cramkit.gpu.run")]
    assert not bad, bad
