"""The whole ``cram fit-gamma`` analysis as one library call: ``run(FitConfig(...), progress)``.

Input: run directories / metrics.jsonl / CSV files (one per seed), a bundled human data set, or
Proposition 3's exact count-model curve. Output: a :class:`FitGammaResult` holding one JSON-ready
dict with every model's fit (value, stderr, CI for each parameter; chi2, AIC, BIC, out-of-sample
score), the model ranking, gamma with its CI (bootstrap over runs for several runs; parametric
bootstrap and profile likelihood for one), the logit cross-check and t_min sensitivity, the
transition verdict, and the tool's own fits of the bundled human data. Its ``report()`` is the
text of :func:`cramkit.theory.fit.report.fit_gamma_report`, its ``plot(path)`` the figure of
:func:`cramkit.theory.fit.plot.plot_fit_gamma`.

Example::

    from cramkit.theory.fit.analysis import FitConfig, run
    res = run(FitConfig(runs=("runs/seed0", "runs/seed1"), time="exposures"))
    print(res.report())
    res.to_json()["gamma"]["ci"]
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cramkit.errors import CramError
from cramkit.jsonable import to_jsonable
from cramkit.progress import Progress, report_to
from cramkit.result import Result
from cramkit.theory.curves import MODEL_NAMES, get_model, tc_numeric
from cramkit.theory.fit.core import FitResult, fit_model, single_thread_blas
from cramkit.theory.fit.data import (
    MAX_FIT_POINTS,
    TIME_UNITS,
    CurveData,
    bin_log_t,
    make_binomial,
    pool,
    read_curve,
)
from cramkit.theory.fit.uncertainty import (
    BootstrapResult,
    bootstrap_runs,
    logit_ls_crosscheck,
    out_of_sample,
    parametric_bootstrap,
    profile_ci,
    t_min_sensitivity,
)

Z95 = 1.959963984540054
N_MAX_COUNT_MODEL = 1e15  # the largest N of a count-model grid


@dataclass(frozen=True)
class CountModelSpec:
    """Proposition 3's exact curve as input: Zipf exponent ``alpha``, threshold ``K``, ``P``
    patterns, optionally the N range [n_min, n_max] (see :func:`count_model_data`)."""

    alpha: float
    K: int
    P: int = 10**6
    n_min: float | None = None
    n_max: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.alpha, bool) or not math.isfinite(self.alpha) or self.alpha < 0:
            raise CramError(f"alpha must be a finite number >= 0, got {self.alpha}")
        if (self.n_min is None) != (self.n_max is None):
            raise CramError("give both ends of the N range or neither")
        if self.n_min is not None and not 0 < self.n_min < self.n_max <= N_MAX_COUNT_MODEL:
            raise CramError(f"the N range needs 0 < N_MIN < N_MAX <= 1e15, got {self.n_min:g} {self.n_max:g}")

    def kwargs(self) -> dict[str, Any]:
        out = {"alpha": self.alpha, "K": self.K, "P": self.P}
        if self.n_min is not None:
            out.update(n_min=self.n_min, n_max=self.n_max)
        return out


@dataclass(frozen=True)
class FitConfig:
    """The settings of one analysis. Exactly one input: ``runs`` (paths), ``human`` (a bundled
    data set's name) or ``count_model``. ``primary`` (default: M2 with E_inf fixed at 0 for human
    data, the pure power law Murre & Dros fit, else M1) is the model whose gamma gets the
    bootstrap and profile CIs; ``fixed`` holds its parameters that are not fitted (lmfit's
    vary=False). ``all_models`` prints every model's block in the report."""

    runs: tuple[str, ...] = ()
    human: str | None = None
    count_model: CountModelSpec | None = None
    time: str = "step"
    models: tuple[str, ...] = MODEL_NAMES
    primary: str | None = None
    fixed: Mapping[str, float] | None = None
    t_min: float | None = None
    resamples: int = 2000
    seed: int = 0
    with_human: bool = True
    all_models: bool = False
    model_list: tuple[str, ...] = field(init=False)  # models to fit, the primary first if added
    primary_model: str = field(init=False)
    fixed_params: dict[str, float] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "runs", tuple(str(p) for p in self.runs))
        given = sum((bool(self.runs), self.human is not None, self.count_model is not None))
        if given != 1:
            raise CramError("give exactly one input: RUN paths, --human NAME or --count-model")
        if self.time not in TIME_UNITS:
            raise CramError(f"unknown time unit {self.time!r}; choose from {', '.join(TIME_UNITS)}")
        models = [get_model(m).name for m in self.models]
        if not models:
            raise CramError("give at least one model")
        primary = get_model(self.primary or ("M2" if self.human is not None else "M1")).name
        fixed = dict(self.fixed or {})
        if self.primary is None and self.human is not None and not fixed:
            fixed = {"Einf": 0.0}
        if any(not math.isfinite(v) for v in fixed.values()):
            raise CramError(f"a fixed value must be a finite number, got {fixed}")
        if primary not in models:
            models = [primary, *models]
        if self.resamples < 0:
            raise CramError("resamples must be >= 0")
        if self.seed < 0:
            raise CramError(f"seed must be >= 0, got {self.seed}")
        if self.t_min is not None and not (math.isfinite(self.t_min) and self.t_min > 0):
            raise CramError(f"t_min must be a positive finite number, got {self.t_min}")
        object.__setattr__(self, "model_list", tuple(models))
        object.__setattr__(self, "primary_model", primary)
        object.__setattr__(self, "fixed_params", fixed)


def count_model_data(*, alpha: float, K: int, P: int = 10**6, n_min: float | None = None,
                     n_max: float | None = None, points: int = 40, probes: float = 1e4) -> CurveData:
    """Proposition 3's exact curve as binomial data with ``probes`` nominal probe queries per
    point and expected (noise-free) counts k = probes * E_rec(N). The default N range is
    [1e3, 1e7] for alpha > 1 (the power-law regime) and [K P / 100, 10 K P] otherwise (around
    the step at N ~ K P)."""
    from cramkit.theory.count_model import exact_curve

    if alpha > 1:
        n_min = 1e3 if n_min is None else n_min
        n_max = 1e7 if n_max is None else n_max
    else:
        n_min = K * P / 100 if n_min is None else n_min
        n_max = 10.0 * K * P if n_max is None else n_max
    if not (0 < n_min < n_max) or points < 3:
        raise CramError("the count-model grid needs 0 < n_min < n_max and at least 3 points")
    if probes <= 0:
        raise CramError("probes must be positive")
    N = np.geomspace(n_min, n_max, int(points))
    e = exact_curve(N, alpha=alpha, K=K, P=int(P))
    return make_binomial(N, probes * e, np.full(N.size, float(probes)),
                         name=f"count model (alpha={alpha:g}, K={K}, P={int(P)})",
                         time_unit="recurring queries N")


# --- the steps of the analysis ----------------------------------------------------------------

@dataclass
class _Input:
    data: CurveData  # what is fitted (several runs pooled)
    runs: list[CurveData]  # the runs one by one (empty unless RUN paths were given)
    source: dict
    warnings: list[str]


@dataclass
class _Uncertainty:
    boot: BootstrapResult | None
    profiles: dict[str, tuple[float | None, float | None]]
    logit: FitResult | None
    sensitivity: list[dict]


def _fit_size(data: CurveData) -> CurveData:
    """A large input binned in log t (a warning says so); small ones unchanged."""
    return bin_log_t(data) if len(data) > MAX_FIT_POINTS else data


def _load(config: FitConfig) -> _Input:
    """Read the input, apply t_min, and check that several runs are of one kind."""
    runs: list[CurveData] = []
    if config.runs:
        runs = [_fit_size(read_curve(p, time=config.time)) for p in config.runs]
        data = runs[0] if len(runs) == 1 else pool(runs)
        source = {"type": "runs", "paths": list(config.runs)}
    elif config.human is not None:
        from cramkit.theory.human import human_info, load_human

        data = load_human(config.human)
        info = human_info(config.human)
        source = {"type": "human", "name": config.human, "measure": info["measure"],
                  "citation": info["citation"], "licence": info["licence"]}
    else:
        cm = config.count_model.kwargs()
        data = count_model_data(**cm)
        source = {"type": "count_model", **cm}
    warnings = list(data.warnings)
    if config.t_min is not None:
        data = data.subset(data.t >= config.t_min)
        runs = [r.subset(r.t >= config.t_min) for r in runs]
        if len(data) == 0:
            raise CramError(f"no data points at t >= {config.t_min:g}")
    if 1 < len(runs) < 10:
        warnings.append(f"only {len(runs)} runs: a bootstrap over fewer than 10 seeds gives a "
                        "coarse interval")
    if len({r.kind for r in runs}) > 1:
        raise CramError("some runs have counts and some do not; give runs of one kind")
    return _Input(data, runs, source, warnings)


def _fit_models(config: FitConfig, data: CurveData, progress: Progress | None) -> dict[str, FitResult]:
    tick = report_to(progress)
    fits = {}
    for i, m in enumerate(config.model_list):
        tick("fit models", i, len(config.model_list))
        fits[m] = fit_model(m, data, fixed=_fixed_for(config, m))
    tick("fit models", len(config.model_list), len(config.model_list))
    return fits


def _fixed_for(config: FitConfig, model: str) -> dict[str, float] | None:
    return dict(config.fixed_params) if (config.fixed_params and model == config.primary_model) else None


def _uncertainty(config: FitConfig, inp: _Input, pfit: FitResult, grid: np.ndarray,
                 progress: Progress | None) -> _Uncertainty:  # fmt: skip
    """gamma's (and the primary model's) intervals: a bootstrap over runs for several runs; a
    parametric bootstrap and profile-likelihood intervals for one; the two robustness checks."""
    primary, data, fixed = config.primary_model, inp.data, config.fixed_params or None
    common = dict(fixed=fixed, n_resamples=config.resamples, seed=config.seed, grid=grid,
                  progress=progress)  # fmt: skip
    profiles = {}
    if len(inp.runs) > 1:
        boot = bootstrap_runs(primary, inp.runs, pfit, **common) if config.resamples else None
    else:
        boot = parametric_bootstrap(primary, data, pfit, **common) if config.resamples else None
        profiles = {n: profile_ci(primary, data, pfit, n, fixed=fixed)
                    for n, p in pfit.params.items() if not p.fixed}  # fmt: skip
    return _Uncertainty(boot, profiles, logit_ls_crosscheck(primary, data, pfit, fixed=fixed),
                        t_min_sensitivity(primary, data, fixed=fixed))  # fmt: skip


def _param_rows(config: FitConfig, m: str, f: FitResult, unc: _Uncertainty) -> dict[str, dict]:
    rows = {}
    for n, p in f.params.items():
        ci, method = None, None
        if m == config.primary_model and unc.boot is not None and not p.fixed:
            ci, method = unc.boot.ci(n), unc.boot.method
        elif p.stderr is not None:
            ci, method = (p.value - Z95 * p.stderr, p.value + Z95 * p.stderr), "wald"
        row = {"value": p.value, "stderr": p.stderr, "ci": list(ci) if ci else None,
               "ci_method": method, "fixed": p.fixed, "at_bound": p.at_bound}  # fmt: skip
        if m == config.primary_model and n in unc.profiles:
            row["profile_ci"] = list(unc.profiles[n])
        rows[n] = row
    return rows


def _fit_rows(config: FitConfig, data: CurveData, fits: dict[str, FitResult], oos: dict,
              unc: _Uncertainty) -> list[dict]:  # fmt: skip
    """One JSON row per model: parameters with CIs, information criteria, derived times."""
    aic_min = min(f.aic for f in fits.values())
    bic_min = min(f.bic for f in fits.values())
    weights = {m: math.exp(-0.5 * (f.aic - aic_min)) for m, f in fits.items()}
    wsum = sum(weights.values())
    rows = []
    for m, f in fits.items():
        model = get_model(m)
        if m == "M8":  # the breakpoint: M8's slope is piecewise constant in log t
            tc = 10 ** f.params["log10_t_b"].value
        else:
            with np.errstate(all="ignore"):
                tc = tc_numeric(model, f.values, float(data.t[0]), float(data.t[-1]))
        rows.append({
            "dataset": data.name, "model": m, "title": model.title, "formula": model.formula,
            "params": _param_rows(config, m, f, unc), "gamma": f.gamma, "aic": f.aic, "bic": f.bic,
            "delta_aic": f.aic - aic_min, "delta_bic": f.bic - bic_min,
            "akaike_weight": weights[m] / wsum, "n": f.n, "nvary": f.nvary, "chi2": f.chi2,
            "redchi": f.redchi, "neg_log_likelihood": f.nll if f.kind == "binomial" else None,
            "W": model.width(f.values), "half_life": model.half_life(f.values), "t_c": tc,
            "out_of_sample": oos[m], "converged": f.success, "warnings": f.warnings,
        })  # fmt: skip
    return rows


def _gamma_summary(config: FitConfig, pfit: FitResult, unc: _Uncertainty) -> dict | None:
    gname = get_model(config.primary_model).gamma_param
    if gname is None:
        return None
    gp, boot = pfit.params[gname], unc.boot
    return {"model": config.primary_model, "value": gp.value, "stderr": gp.stderr,
            "ci": (list(boot.ci(gname)) if boot is not None and boot.ci(gname) else None),
            "ci_method": boot.method if boot is not None else None,
            "n_resamples": boot.n_resamples if boot is not None else 0,
            "n_failed": boot.n_failed if boot is not None else 0,
            "profile_ci": list(unc.profiles[gname]) if gname in unc.profiles else None,
            "logit_ls": unc.logit.params[gname].value if unc.logit is not None else None,
            "t_min_sensitivity": unc.sensitivity}  # fmt: skip


def _plot_data(config: FitConfig, data: CurveData, fits: dict[str, FitResult], grid: np.ndarray,
               boot: BootstrapResult | None) -> dict:  # fmt: skip
    band = None
    if boot is not None and boot.band() is not None:
        lo, hi = boot.band()
        band = {"model": config.primary_model, "t": grid.tolist(), "lo": lo.tolist(), "hi": hi.tolist()}
    return {"t": data.t.tolist(), "y": data.y.tolist(),
            "n": None if data.n is None else data.n.tolist(),
            "sigma": None if data.sigma is None else data.sigma.tolist(),
            "grid": grid.tolist(),
            "curves": {m: f.predict(grid).tolist() for m, f in fits.items()}, "band": band}  # fmt: skip


def _estimation(data: CurveData) -> str:
    if data.kind == "binomial":
        return "binomial maximum likelihood (k attended of N probe queries)"
    return "least squares (values only" + (", weighted by 1/sigma^2)" if data.sigma is not None else ")")


def run(config: FitConfig, progress: Progress | None = None) -> FitGammaResult:
    """Run the full analysis; see the module docstring."""
    inp = _load(config)
    data, warnings = inp.data, inp.warnings
    with single_thread_blas(), np.errstate(all="ignore"):
        fits = _fit_models(config, data, progress)
        for f in fits.values():
            warnings.extend(f.warnings)
        oos = {m: out_of_sample(m, data, fixed=_fixed_for(config, m)) for m in fits}
        grid = np.geomspace(float(data.t[0]), float(data.t[-1]), 200)
        pfit = fits[config.primary_model]
        unc = _uncertainty(config, inp, pfit, grid, progress)

    from cramkit.theory.transition import transition_analysis

    gamma = _gamma_summary(config, pfit, unc)
    result = {
        "dataset": data.name, "source": inp.source, "kind": data.kind,
        "estimation": _estimation(data),
        "time_unit": data.time_unit, "n": len(data), "n_runs": max(1, len(inp.runs)),
        "t_range": [float(data.t[0]), float(data.t[-1])],
        "fits": _fit_rows(config, data, fits, oos, unc),
        "best_model": min(fits, key=lambda m: fits[m].aic), "primary_model": config.primary_model,
        "gamma": gamma, "transition": transition_analysis(data, fits),
        "warnings": list(dict.fromkeys(warnings)),
        "plot": _plot_data(config, data, fits, grid, unc.boot),
    }  # fmt: skip
    if config.count_model is not None:
        result["count_model"] = _count_model_summary(config.count_model.kwargs(), gamma)
    if config.with_human:
        from cramkit.theory.human import ANALOGY_NOTE, human_reference

        result["human_reference"] = human_reference()
        result["human_note"] = ANALOGY_NOTE
    return FitGammaResult(to_jsonable(result), all_models=config.all_models)


def _count_model_summary(cm: dict, gamma: dict | None) -> dict:
    from cramkit.theory.count_model import asymptotic_constant, predicted_gamma, uniform_width

    alpha, K = float(cm["alpha"]), int(cm["K"])
    out: dict = {"alpha": alpha, "K": K, "P": int(cm.get("P", 10**6))}
    if alpha > 1:
        out["predicted_gamma"] = predicted_gamma(alpha)
        out["asymptotic_constant"] = asymptotic_constant(alpha, K)
        if gamma is not None:
            out["gamma_minus_predicted"] = gamma["value"] - out["predicted_gamma"]
    else:
        out["predicted_gamma"] = None
        out["note"] = ("gamma = 1 - 1/alpha holds only for alpha > 1"
                       + ("; at alpha = 0 the curve is the sigmoid F_K(N/P)" if alpha == 0 else ""))
    if alpha == 0:
        out["uniform_width"] = uniform_width(K)
    return out


@dataclass
class FitGammaResult(Result):
    """The analysis as one JSON-ready dict (``data``; its ``plot`` entry holds the curves the
    figure draws and is left out of :meth:`to_json`)."""

    data: dict[str, Any]
    all_models: bool = False

    name = "cram fit-gamma"

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.data.items() if k != "plot"}

    def report(self) -> str:
        from cramkit.theory.fit.report import fit_gamma_report

        return fit_gamma_report(self.data, all_models=self.all_models)

    def plot(self, path: str | os.PathLike) -> None:
        from cramkit.theory.fit.plot import plot_fit_gamma

        plot_fit_gamma(self.data, path)
