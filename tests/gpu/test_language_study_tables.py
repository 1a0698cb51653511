"""The subword study's tables in docs/results/language.md are what docs/results/language_study.py
prints from the committed docs/results/data/language-study.json (so a number edited by hand, or a
JSON replaced without regenerating the page, fails here), and the script's verdict on the scale
target follows from the numbers in the JSON."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "docs" / "results"


def _study():
    spec = importlib.util.spec_from_file_location("language_study", RESULTS / "language_study.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_language_page_holds_the_study_tables_verbatim():
    mod = _study()
    printed = mod.tables(json.loads((RESULTS / "data" / "language-study.json").read_text(encoding="utf-8")))
    assert printed.strip() in (RESULTS / "language.md").read_text(encoding="utf-8")


def test_scale_verdict_is_gap_against_twice_the_seed_spread():
    mod = _study()

    def run(label, seed, recall):
        s = {"tokenizer": "bpe:8", "seq_len": 4, "d_model": 2, "n_heads": 1, "steps": 1, "batch_size": 1, "lr": 1.0}
        f = {"bpb_recall": recall, "bpb_other": 2.0, "bpb": 2.0}
        return {"scale": "x", "label": label, "seed": seed, "settings": s, "final": f, "curve": []}

    # gaps 0.10 and 0.08, spreads 0.03 (dense) and 0.01: 0.08 > 0.06, met
    met = mod.scale_table([run("dense", 0, 1.00), run("dense", 1, 1.03), run("none", 0, 1.10), run("none", 1, 1.11)])
    assert any("target gap > 2 x spread = 0.0600: met" in line for line in met)
    # the same gaps with a dense spread of 0.05: 0.08 < 0.10, missed
    missed = mod.scale_table([run("dense", 0, 1.00), run("dense", 1, 1.05), run("none", 0, 1.10), run("none", 1, 1.13)])
    assert any("= 0.1000: missed" in line for line in missed)
    assert mod.mean_ci([1.0, 3.0]) == (2.0, 12.706)


def test_osis_text_keeps_verses_and_drops_markup():
    """docs/results/data/osis_text.py (the held-out corpus): verses only, chapter lines, notes and
    headings dropped, words joined across tags, poetry lines apart, entities unescaped."""
    import io

    spec = importlib.util.spec_from_file_location("osis_text", RESULTS / "data" / "osis_text.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    imp = "\n".join([
        "$$$[ Module Heading ]", "<milestone type=\"x-importer\"/>",
        "$$$Genesis 0:0", "<title>Preface</title> Not a verse.",
        "$$$Genesis 1:1",
        "<w lemma=\"a\">In</w> <w>the</w> <w>beginning</w>, <w>God</w><note placement=\"foot\">"
        "<reference>1:1 </reference>A note.</note><w>created</w> it &amp; <q who=\"x\">“light</q>”.",
        "$$$Genesis 1:2", "<title type=\"psalm\">A heading</title><l level=\"1\"/>one<l eID=\"x\"/><l/>two<lb/>three",
        "$$$Genesis 2:1", "<w>Done</w><note>n</note>.",
    ])  # fmt: skip
    out = io.StringIO()
    assert mod.convert(io.StringIO(imp + "\n"), out) == 3
    assert out.getvalue() == ("Genesis 1\n\n  1 In the beginning, God created it & “light”.\n  2 one two three\n"
                              "\n\nGenesis 2\n\n  1 Done.\n")  # fmt: skip
