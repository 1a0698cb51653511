"""The benchmark tables in docs/results are generated from the JSON kept next to them: each page
must contain, verbatim, what docs/results/data/tables.py prints for each of its JSON files (so a
number edited by hand, or a JSON replaced without regenerating the page, fails here)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "docs" / "results" / "data"

# page -> (kind, JSON files whose tables it holds)
PAGES = {
    "model-speed.md": ("model", ["model-speed-cpu-hybrid-w64", "model-speed-cpu-hybrid-w512",
                                 "model-speed-cpu-hybrid-w512-t8192", "model-speed-cpu-w512-sampled",
                                 "model-speed-cpu", "model-speed-cpu-decode", "model-speed-cpu-decode-64steps",
                                 "model-speed-cpu-targets",
                                 "model-speed-cuda", "model-speed-cuda-long"]),
    "kernels.md": ("kernels", ["kernels-cuda", "kernels-cuda-long"]),
}


def _tables():
    spec = importlib.util.spec_from_file_location("results_tables", DATA / "tables.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _render(mod, kind: str, name: str) -> str:
    data = json.loads((DATA / f"{name}.json").read_text(encoding="utf-8"))
    body = mod.model_tables(data) if kind == "model" else mod.kernel_table(data)
    return "\n".join([mod.machine_line(data), "", body.strip()])


@pytest.mark.parametrize("page", sorted(PAGES))
def test_page_tables_match_their_json(page):
    mod = _tables()
    text = (ROOT / "docs" / "results" / page).read_text(encoding="utf-8")
    kind, names = PAGES[page]
    for name in names:
        assert _render(mod, kind, name) in text, f"{page}: tables of data/{name}.json differ; regenerate them"


def test_tables_catch_an_edited_number():
    mod = _tables()
    data = json.loads((DATA / "model-speed-cuda.json").read_text(encoding="utf-8"))
    before = mod.model_tables(data)
    data["cases"][0]["us_per_token"] *= 2
    assert mod.model_tables(data) != before


def test_linear_flop_crossover():
    mod = _tables()
    # cram: 10 + 0.1 T, plain hybrid: 4 + 1 T -> equal at T = 6/0.9
    assert mod.linear_crossover({"cram": {1: 10.1, 2: 10.2}, "hybrid": {1: 5, 2: 6}}) == pytest.approx(6 / 0.9)
    assert mod.linear_crossover({"cram": {1: 10, 2: 11}, "hybrid": {1: 5, 2: 6}}) is None  # same slope, dearer
    assert mod.linear_crossover({"cram": {1: 1, 2: 1}, "hybrid": {1: 5, 2: 6}}) == 0.0  # cheaper everywhere
    assert mod.linear_crossover({"cram": {2: 1}, "hybrid": {1: 5, 2: 6}}) is None  # one T: no fit
