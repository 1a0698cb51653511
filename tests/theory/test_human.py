"""The bundled human data: citations and licences present, and the tool's own power fits
reproduce Murre & Dros (2015)."""

from __future__ import annotations

import pytest

from cramkit.errors import CramError
from cramkit.theory.human import (
    ANALOGY_NOTE,
    fit_power,
    header_comments,
    human_info,
    human_names,
    human_reference,
    load_human,
)


@pytest.mark.parametrize("name,a", [("murre-dros-ebbinghaus", 0.130), ("murre-dros-mack", 0.093),
                                    ("murre-dros-seitz", 0.099), ("murre-dros-dros", 0.167)])
def test_reproduces_murre_dros_power_exponents(name, a):
    assert round(fit_power(name)["a"], 3) == a


def test_every_data_set_has_citation_licence_and_measure():
    names = human_names()
    assert "ebbinghaus-1885" in names and len(names) == 5
    for n in names:
        info = human_info(n)
        for key in ("citation", "licence", "measure"):
            assert info[key]
        assert "savings" in info["measure"]
        head = " ".join(header_comments(n)).lower()
        assert "licence" in head and ("1885" in head or "2015" in head)
        d = load_human(n)
        assert len(d) == 7 and d.t[0] == 1200 and d.time_unit == "seconds"
        assert 0 < d.y.min() and d.y.max() < 1


def test_ebbinghaus_original_is_weighted_by_probable_errors():
    d = load_human("ebbinghaus-1885")
    assert d.sigma is not None
    assert d.sigma[0] == pytest.approx(0.01 / 0.6745)
    assert d.y[0] == pytest.approx(0.582)
    r = fit_power("ebbinghaus-1885")
    assert r["weighted"] and 0.1 < r["a"] < 0.16


def test_reference_and_analogy_note():
    ref = human_reference()
    assert [r["dataset"] for r in ref] == human_names()
    assert all(r["a_stderr"] > 0 for r in ref)
    assert "analogy, not evidence" in ANALOGY_NOTE
    with pytest.raises(CramError):
        human_info("nobody")
