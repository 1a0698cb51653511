"""Human forgetting data bundled with cram (docs/fit-gamma.md, "Human reference data"), and the
tool's own fits of it.

The files in ``theory/data/`` carry their citation and licence in ``#`` header lines and in
``human.json``. Each data set is savings on relearning against the retention interval (t in
seconds). The toolkit fits them itself and reports its own numbers: with the pure power law
Q = mu t^-a (model M2 with E_inf fixed at 0, unweighted least squares) it reproduces Murre &
Dros's (2015) exponents. A human exponent describes retention against delay, a different quantity
from the consolidation exponent gamma of attention use against training exposure: comparing the
two is an analogy, not evidence.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from functools import cache
from importlib import resources

import numpy as np

from cramkit.errors import CramError
from cramkit.result import Result
from cramkit.theory.fit.data import CurveData, make_gaussian

ANALOGY_NOTE = ("Human exponents measure savings on relearning against the retention delay; "
                "gamma measures attention use against training exposure. Comparing them is an "
                "analogy, not evidence.")
PE_TO_SD = 1 / 0.6745  # a probable error is 0.6745 standard deviations
POWER_FIXED = {"Einf": 0.0}  # Q = a t^-gamma: Murre & Dros's power function


@cache
def _catalogue() -> dict:
    text = resources.files("cramkit.theory.data").joinpath("human.json").read_text(encoding="utf-8-sig")
    return json.loads(text)


def human_names() -> list[str]:
    return list(_catalogue())


def human_info(name: str) -> dict:
    cat = _catalogue()
    if name not in cat:
        raise CramError(f"unknown human data set {name!r}; choose from {', '.join(cat)} (--list-human)")
    return dict(cat[name], name=name)


def _rows(filename: str) -> list[dict]:
    text = resources.files("cramkit.theory.data").joinpath(filename).read_text(encoding="utf-8-sig")
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    return list(csv.DictReader(io.StringIO("\n".join(lines))))


def header_comments(name: str) -> list[str]:
    """The ``#`` lines of a data set's file: citation, licence and what it measures."""
    info = human_info(name)
    text = resources.files("cramkit.theory.data").joinpath(info["file"]).read_text(encoding="utf-8-sig")
    return [ln[1:].strip() for ln in text.splitlines() if ln.startswith("#")]


def load_human(name: str) -> CurveData:
    """The data set ``name`` as Gaussian curve data, t in seconds, savings as a proportion."""
    info = human_info(name)
    rows = _rows(info["file"])
    t = np.array([float(r["t_seconds"]) for r in rows])
    y = np.array([float(r[info["column"]]) for r in rows]) * float(info.get("scale", 1.0))
    sigma = None
    if "sigma_column" in info:
        sigma = np.array([float(r[info["sigma_column"]]) for r in rows]) * float(info.get("scale", 1.0)) * PE_TO_SD
    return make_gaussian(t, y, sigma, name=name, time_unit="seconds")


def fit_power(name: str) -> dict:
    """The tool's own power-law fit Q = mu t^-a (t in seconds) of one bundled data set."""
    from cramkit.theory.fit.core import fit_model

    data = load_human(name)
    fit = fit_model("M2", data, fixed=POWER_FIXED)
    info = human_info(name)
    return {"dataset": name, "measure": info["measure"], "citation": info["citation"],
            "licence": info["licence"], "a": fit.params["gamma"].value,
            "a_stderr": fit.params["gamma"].stderr, "mu": fit.params["a"].value,
            "mu_stderr": fit.params["a"].stderr, "n": fit.n, "chi2": fit.chi2,
            "weighted": data.sigma is not None}


def human_reference() -> list[dict]:
    """:func:`fit_power` for every bundled data set."""
    return [fit_power(n) for n in human_names()]


@dataclass
class HumanCatalogue(Result):
    """``cram fit-gamma --list-human``: every bundled data set with what it measures."""

    rows: list[dict]

    name = "the human data catalogue"

    def to_json(self) -> dict:
        return {"human": self.rows}

    def report(self) -> str:
        out = []
        for r in self.rows:
            out += [f"{r['name']}: {r['title']}", f"    measures: {r['measure']}",
                    f"    source: {r['citation']} ({r['licence']})"]
        out.append("Every one is savings on relearning against the retention delay, a different "
                   "quantity from gamma: comparing them is an analogy, not evidence.")
        return "\n".join(out)


def catalogue() -> HumanCatalogue:
    """The bundled human data sets (:func:`human_info` of each)."""
    return HumanCatalogue([human_info(n) for n in human_names()])
