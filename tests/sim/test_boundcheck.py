"""sim.boundcheck: the sweep, the stream, the criteria and the controls on a small configuration."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

import cramkit.sim.boundcheck.config as bc
from cramkit.errors import CramError
from cramkit.sim.boundcheck import BoundConfig, run
from cramkit.sim.routers import PoolKeyRouter

SMALL = dict(
    freq=0.1,
    f_e=0.03,
    P=64,
    n_min=128,
    n_max=512,
    seeds=20,
    batch=2,
    T=600,
    stream_P=16,
    n_boot=200,
)


PROGRESS: list[tuple[str, float, float]] = []


@pytest.fixture(scope="module")
def small_result():
    return run(BoundConfig(**SMALL), lambda stage, done, total: PROGRESS.append((stage, done, total)))


def test_progress_reports_each_stage_to_its_end(small_result):
    stages = list(dict.fromkeys(stage for stage, _, _ in PROGRESS))
    assert stages == ["numba warm-up", "sweep", "control F2", "stream"]
    for stage in stages:
        ticks = [(d, t) for s, d, t in PROGRESS if s == stage]
        assert all(0 <= d <= t for d, t in ticks) and ticks[-1][0] == ticks[-1][1]
        assert [d for d, _ in ticks] == sorted(d for d, _ in ticks)


def test_text_report_and_strict_json(small_result):
    from cramkit.jsonable import dumps

    text = small_result.report()
    assert text.splitlines()[-1] == "Result: every criterion holds."
    for row in small_result.routers:
        assert row.name in text
    assert json.loads(dumps(small_result.to_json()))["criteria"] == {k: True for k in small_result.criteria}


def test_small_run_passes_every_criterion(small_result):
    res = small_result
    assert res.ok, {k: c.failures for k, c in res.criteria.items()}
    assert set(res.criteria) == {"P1", "P2", "P3", "P4", "P5"}
    assert set(res.controls) == {"F1", "F2", "F3", "F4", "F5"}
    rows = {r.name: r for r in res.routers}
    assert {"ORACLE-POS", "LEARNED-STATIC", "SKIP-ALL+M", "CR_1", "CR_5"} <= set(rows)
    # Lemma 1 makes the bound tight: each held router's slope sits on its bound within the CI
    for r in res.routers:
        if r.held:
            assert r.ci[0] - 1e-9 <= r.bound <= r.ci[1] + 0.01
    assert not rows["SKIP-ALL+M"].held and rows["SKIP-ALL+M"].static
    assert not rows["CR_2"].static and rows["CR_2"].bound is None
    for k, c in res.controls.items():
        assert c.passed and c.predicted == pytest.approx(c.measured), k
    # CR_K's cumulative recurring attention saturates at K·D_T = K·P on the stream
    for d in res.stream["cr"].values():
        assert d["bound_violations"] == 0 and d["A_rec_cum_T"] <= d["K_times_D_T"] <= d["K_times_P"]
    assert res.stream["oracle_A_rec_cum_T"] == SMALL["T"] * res.stream["m_r"]
    assert res.decisions > 0 and res.decisions_per_second > 0


def test_json_has_the_stable_keys(small_result):
    js = small_result.to_json()
    assert {"freq", "routers", "criteria", "controls", "seconds"} <= set(js)
    for row in js["routers"].values():
        assert {"slope", "ci", "bound", "static", "pass"} <= set(row) and len(row["ci"]) == 2
    assert all(isinstance(v, bool) for v in js["criteria"].values())
    for c in js["controls"].values():
        assert {"predicted", "measured", "pass"} <= set(c)


@dataclass(frozen=True, repr=False)
class _LyingRouter(PoolKeyRouter):
    """Reads the pool but claims to be static."""

    name: str = "LIAR"
    static: bool = True


def test_p1_catches_a_pool_aware_router_that_claims_to_be_static(monkeypatch):
    real = bc.parse_router
    monkeypatch.setattr(
        bc, "parse_router", lambda name: _LyingRouter() if name == "LIAR" else real(name)
    )
    res = run(BoundConfig(**{**SMALL, "routers": ("ORACLE-POS", "LIAR"), "Ks": (2,)}))
    assert not res.criteria["P1"].passed and res.criteria["P2"].passed
    assert any(f.startswith("LIAR") for f in res.criteria["P1"].failures)
    liar = next(r for r in res.routers if r.name == "LIAR")
    assert liar.held and not liar.passed and liar.slope == 0 and liar.bound > 0.05
    assert not res.ok


def test_short_stream_fails_p4_and_says_why():
    res = run(BoundConfig(**{**SMALL, "T": 20, "routers": ("ORACLE-POS",), "Ks": (3,)}))
    assert not res.criteria["P4"].passed and not res.ok
    assert "T_0" in res.criteria["P4"].failures[0]


@pytest.mark.parametrize(
    "change, words",
    [
        ({"freq": 0}, "freq"),
        ({"freq": 1.0}, "freq"),
        ({"freq": float("nan")}, "freq"),
        ({"f_e": 0}, "f_e"),
        ({"P": 10}, "m_r <= P"),
        ({"n_max": 128}, "n range"),
        ({"routers": ("FOO",)}, "unknown router"),
        ({"routers": ("CR_2",)}, "K option"),
        ({"Ks": (0,)}, "K values"),
        ({"seeds": 10}, "at least 20"),
        ({"stream_P": 4}, "stream"),
        ({"freq": 0.4, "f_e": 0.2}, "5·n_q"),
    ],
)
def test_bad_configs_name_the_problem(change, words):
    with pytest.raises(CramError, match=words.replace("(", r"\(")):
        BoundConfig(**{**SMALL, **change})
