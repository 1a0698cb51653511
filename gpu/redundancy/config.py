"""Options of ``cram redundancy``: the measurement's settings (:class:`RedundancyConfig`) and the
command's whole input (:class:`RedundancyRun`: the model, the corpus and the tokenizer as well).

See docs/redundancy.md for what each option changes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace

from cramkit.errors import CramError

PREDICTORS = ("p0", "p1", "plocal", "p2")


@dataclass(frozen=True)
class RedundancyConfig:
    """Options of the measurement; every field is validated, unknown keys are rejected."""

    window: int | None = None  # tokens per window; None: min(1024, model context)
    max_tokens: int | None = 3000  # all splits together (4:1:2); None: the whole corpus
    batch_windows: int = 4
    min_pos: int = 32
    predictors: tuple[str, ...] | None = None  # None: chosen for the model's width (see resolve)
    local_window: int = 2  # P-local uses x_t .. x_{t-w}
    taus: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3)
    sweep_taus: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3)
    patch_predictor: str | None = None  # None: p1 if measured, else the first non-constant one
    budget: float = 0.01  # nats/token
    per_layer_patch: bool = False  # one more TEST pass per layer; on for a full measurement
    gate: bool = True
    context_swap: bool = True
    mlp_tokens: int = 4000
    mlp_epochs: int = 10
    gate_tokens: int = 4000
    layers: tuple[int, ...] | None = None
    bootstrap: int = 1000
    seed: int = 0

    def __post_init__(self):
        if self.window is not None and self.window < 2:
            raise CramError(f"window must be at least 2 tokens, got {self.window}")
        if self.max_tokens is not None and self.max_tokens < 14:
            raise CramError(f"max_tokens must be at least 14, got {self.max_tokens}")
        if self.batch_windows < 1:
            raise CramError("batch_windows must be at least 1")
        if self.min_pos < 0:
            raise CramError("min_pos must be non-negative")
        if self.predictors is not None:  # None: resolve() picks them for the model
            self._check_predictors()
        elif self.patch_predictor not in (None, "p1", "p2"):
            raise CramError(
                f"the patch predictor '{self.patch_predictor}' is not in the default predictor set; "
                "name it in predictors"
            )
        if self.local_window < 1:
            raise CramError("local_window must be at least 1")
        for name in ("taus", "sweep_taus"):
            v = getattr(self, name)
            if not v or any(not (math.isfinite(t) and 0 < t <= 10) for t in v):
                raise CramError(f"{name} must be non-empty thresholds in (0, 10], got {v}")
        if not (math.isfinite(self.budget) and self.budget >= 0):
            raise CramError(
                f"budget must be a non-negative number of nats/token, got {self.budget}"
            )
        if self.mlp_tokens < 16 or self.gate_tokens < 16 or self.mlp_epochs < 1:
            raise CramError(
                "mlp_tokens and gate_tokens must be at least 16 and mlp_epochs at least 1"
            )
        if self.bootstrap < 0:
            raise CramError("bootstrap must be non-negative")

    def _check_predictors(self) -> None:
        bad = [p for p in self.predictors if p not in PREDICTORS]
        if bad or not self.predictors:
            raise CramError(f"unknown predictor(s) {bad}; choose from {', '.join(PREDICTORS)}")
        if self.patch_predictor is None:
            choices = [p for p in self.predictors if p != "p0"]
            object.__setattr__(
                self, "patch_predictor", "p1" if "p1" in choices else (choices or ["p1"])[0]
            )
        if self.patch_predictor not in self.predictors or self.patch_predictor == "p0":
            raise CramError(
                f"the patch predictor '{self.patch_predictor}' must be one of the measured, non-constant "
                f"predictors {[p for p in self.predictors if p != 'p0']}"
            )

    def resolve(self, d_model: int) -> RedundancyConfig:
        """Fill the default predictor set for a model of width ``d_model``.

        P-local's ridge works on ``(w + 1) d`` features and its eigendecomposition dominated a
        default run of GPT-2 small (about a minute per layer on 2 cores); the MLP costs ``8 d^2``
        per token and step. The default therefore measures P-local only when ``(w + 1) d <= 1536``
        and P2 only when ``d <= 512``; name them in ``predictors`` to force them.
        """
        if self.predictors is not None:
            return self
        preds = ["p0", "p1"]
        if (self.local_window + 1) * d_model <= 1536:
            preds.append("plocal")
        if d_model <= 512:
            preds.append("p2")
        if self.patch_predictor not in (None, *preds):
            raise CramError(
                f"the patch predictor '{self.patch_predictor}' is not measured; add it to predictors"
            )
        return replace(self, predictors=tuple(preds), patch_predictor=self.patch_predictor or "p1")

    @classmethod
    def from_dict(cls, d: dict) -> RedundancyConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise CramError(f"unknown redundancy option(s): {', '.join(sorted(unknown))}")
        return cls(**d)


@dataclass(frozen=True)
class RedundancyRun:
    """Everything ``cram redundancy`` needs: the model path (a GPT-2 directory, a cram text
    checkpoint or a cram run folder), the corpus (None: the bundled one), the tokenizer choice
    (``auto``, ``bytes`` or a directory) and the measurement's options."""

    model: str
    text: str | None = None
    tokenizer: str = "auto"
    options: RedundancyConfig = field(default_factory=RedundancyConfig)

    def __post_init__(self):
        if not self.model:
            raise CramError("name a model: a GPT-2 directory, a cram checkpoint or a cram run folder")
