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
# the layers, lowest first; a module may import only its own layer and the ones before it
LAYERS = ["cramkit", "cramkit.theory", "cramkit.sim", "cramkit.gpu", "cramkit.cli"]


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
    best = 0
    for i, name in enumerate(LAYERS):
        if module == name or module.startswith(name + "."):
            best = i
    return best


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
