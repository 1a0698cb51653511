"""Typed training configuration: a TOML file plus ``--set key=value`` overrides, strictly checked.

The configuration is a tree of frozen dataclasses (:class:`RunConfig` with the sections ``model``,
``router``, ``srcd``, ``train``, ``text``). Loading is strict: an unknown section or key, or a value
of the wrong type, raises :class:`cramkit.errors.CramError` naming the offending key, so a
misspelled setting can never be silently ignored.

Presets live in ``gpu/presets/<name>.toml``: ``quick`` (the default of ``cram train``), ``paper``
(longer) and ``text`` (byte-level language modelling with dense attention).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

import tomli_w

from cramkit.errors import CramError

PRESET_DIR = Path(__file__).with_name("presets")

ROUTERS = (
    "cram",
    "dense",
    "none",
    "stride",
    "random",
    "oracle-pos",
    "learned-static",
    "skip-all",
)
TASKS = ("srcd", "text")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture. ``pattern`` lists the layers: ``S`` = SSM block, ``A`` = CRAM retrieval block,
    ``G`` = plain dense causal attention block (used by the text task)."""

    pattern: str = "SA"
    d_model: int = 128
    n_heads: int = 4  # attention heads of the CRAM / dense attention layers
    ssm_heads: int = 4
    ssm_head_dim: int = 32
    d_state: int = 16
    conv_width: int = 4
    mlp_mult: int = 2
    memory_hidden: int = 256  # hidden width of the semantic memory MLP
    router_hidden: int = 64  # hidden width of the router MLP (0 = linear router)
    max_len: int = 0  # > 0 adds learned absolute position embeddings (text task)
    tie_embeddings: bool = True
    chunk_size: int = 64


@dataclass(frozen=True)
class RouterConfig:
    """Which router the CRAM layers use and how the learned ones are trained."""

    name: str = "cram"
    budget: float = -1.0  # attention budget per query for static routers; < 0: m_e / n_q
    target: str = "error"  # "error": z = 1[l_m > tau]; "utility": z = 1[l_m - l_a > delta]
    tau: float = 0.05  # nats, for target = "error"
    delta: float = 0.05  # nats, for target = "utility"
    explore: float = 0.05  # fraction of positions that attend in training regardless of the router
    init_bias: float = 4.0  # router logit bias at step 0 (> 0: every position attends)
    static_frac: float = 0.3  # learned-static: share of steps spent training the router on another pool
    static_scope: str = "all"  # learned-static top-k over "all" positions or only the "queries" slots
    loss_weight: float = 1.0


@dataclass(frozen=True)
class SRCDSection:
    """SRCD task parameters (see ``cramkit.sim.srcd.SRCDConfig``) and the world seed."""

    n: int = 64
    m_r: int = 6
    m_e: int = 2
    P: int = 64
    alpha: float = 1.0
    U: int = 256
    v: int = 256
    d: int = 8
    chi: float = 0.0
    n_filler: int = 16
    leak: str = "none"
    world_seed: int = 0


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and logging."""

    steps: int = 3000
    batch_size: int = 64
    lr: float = 3e-3
    min_lr_frac: float = 0.1
    warmup_steps: int = 100
    schedule: str = "cosine"  # "cosine" or "constant" (after warm-up)
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0
    eval_every: int = 250
    eval_log_points: int = 0  # extra evaluations at this many log-spaced steps (early curve detail)
    eval_sequences: int = 512  # size of the fixed IID probe set
    ckpt_every: int = 500
    keep_checkpoints: bool = True  # keep every checkpoint (consolidation curves need them)
    threads: int = 0  # torch CPU threads; 0 = leave torch's default
    epi_weight: float = 1.0  # weight of the episodic path's own loss
    sem_weight: float = 1.0  # weight of the semantic memory's own loss
    distill_weight: float = 1.0
    device: str = "auto"  # "auto", "cpu" or "cuda"


@dataclass(frozen=True)
class TextConfig:
    """Byte-level language modelling (``task = "text"``)."""

    data: str = ""
    seq_len: int = 128
    val_frac: float = 0.05
    eval_batches: int = 8


@dataclass(frozen=True)
class RunConfig:
    task: str = "srcd"
    model: ModelConfig = field(default_factory=ModelConfig)
    router: RouterConfig = field(default_factory=RouterConfig)
    srcd: SRCDSection = field(default_factory=SRCDSection)
    train: TrainConfig = field(default_factory=TrainConfig)
    text: TextConfig = field(default_factory=TextConfig)

    # ------------------------------------------------------------------------------------------
    def srcd_config(self):
        """The ``cramkit.sim.srcd.SRCDConfig`` of this run (validated by the generator)."""
        from cramkit.sim.srcd import SRCDConfig

        d = dataclasses.asdict(self.srcd)
        d.pop("world_seed")
        return SRCDConfig.from_dict(d)

    def budget(self) -> float:
        """Attention budget per query slot of the static routers (default m_e / n_q)."""
        if self.router.budget >= 0:
            return float(self.router.budget)
        n_q = self.srcd.m_r + self.srcd.m_e
        return self.srcd.m_e / n_q if n_q else 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())


_SECTIONS = {
    "model": ModelConfig,
    "router": RouterConfig,
    "srcd": SRCDSection,
    "train": TrainConfig,
    "text": TextConfig,
}


def _check_type(key: str, value: Any, typ: Any) -> Any:
    """Return ``value`` converted to ``typ`` or raise CramError (int -> float is allowed)."""
    if typ is float or typ == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise CramError(f"config key {key} must be a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise CramError(f"config key {key} must be finite, got {value!r}")
        return value
    if typ is int or typ == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise CramError(f"config key {key} must be an integer, got {value!r}")
        return value
    if typ is bool or typ == "bool":
        if not isinstance(value, bool):
            raise CramError(f"config key {key} must be true or false, got {value!r}")
        return value
    if typ is str or typ == "str":
        if not isinstance(value, str):
            raise CramError(f"config key {key} must be a string, got {value!r}")
        return value
    raise CramError(f"config key {key} has an unsupported type {typ!r}")  # pragma: no cover


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _build_section(name: str, cls, data: Any):
    if not isinstance(data, dict):
        raise CramError(f"config section [{name}] must be a table, got {data!r}")
    types_ = _field_types(cls)
    unknown = sorted(set(data) - set(types_))
    if unknown:
        raise CramError(f"unknown config key(s) {[f'{name}.{k}' for k in unknown]}; known: {sorted(types_)}")
    kw = {k: _check_type(f"{name}.{k}", v, types_[k]) for k, v in data.items()}
    return cls(**kw)


def from_dict(data: dict[str, Any]) -> RunConfig:
    """Build a :class:`RunConfig` from nested dicts; unknown keys and wrong types are errors."""
    if not isinstance(data, dict):
        raise CramError("a configuration must be a table of sections")
    unknown = sorted(set(data) - set(_SECTIONS) - {"task"})
    if unknown:
        raise CramError(f"unknown config section(s) or key(s) {unknown}; known: {['task', *sorted(_SECTIONS)]}")
    kw: dict[str, Any] = {}
    if "task" in data:
        kw["task"] = _check_type("task", data["task"], str)
    for name, cls in _SECTIONS.items():
        if name in data:
            kw[name] = _build_section(name, cls, data[name])
    cfg = RunConfig(**kw)
    validate(cfg)
    return cfg


def validate(cfg: RunConfig) -> None:
    """Range checks that the dataclass types cannot express."""
    m, r, t = cfg.model, cfg.router, cfg.train
    if cfg.task not in TASKS:
        raise CramError(f"task must be one of {TASKS}, got {cfg.task!r}")
    if not m.pattern or set(m.pattern) - set("SAG"):
        raise CramError(f"model.pattern must be a non-empty string of S, A and G, got {m.pattern!r}")
    for key in ("d_model", "n_heads", "ssm_heads", "ssm_head_dim", "d_state", "conv_width", "mlp_mult",
                "memory_hidden", "chunk_size"):  # fmt: skip
        if getattr(m, key) < 1:
            raise CramError(f"model.{key} must be >= 1, got {getattr(m, key)}")
    if m.d_model % m.n_heads:
        raise CramError(f"model.d_model ({m.d_model}) must be divisible by model.n_heads ({m.n_heads})")
    if m.router_hidden < 0 or m.max_len < 0:
        raise CramError("model.router_hidden and model.max_len must be >= 0")
    if r.name not in ROUTERS:
        raise CramError(f"router.name must be one of {ROUTERS}, got {r.name!r}")
    if r.target not in ("error", "utility"):
        raise CramError(f"router.target must be 'error' or 'utility', got {r.target!r}")
    if r.budget > 1:
        raise CramError(f"router.budget must be <= 1 (negative: m_e / n_q), got {r.budget}")
    if not 0 <= r.explore <= 1:
        raise CramError(f"router.explore must be in [0, 1], got {r.explore}")
    if r.static_scope not in ("all", "queries"):
        raise CramError(f"router.static_scope must be 'all' or 'queries', got {r.static_scope!r}")
    if not 0 < r.static_frac < 1:
        raise CramError(f"router.static_frac must be in (0, 1), got {r.static_frac}")
    if min(r.tau, r.delta, r.loss_weight) < 0:
        raise CramError("router.tau, router.delta and router.loss_weight must be >= 0")
    for key in ("steps", "batch_size", "eval_every", "eval_sequences", "ckpt_every"):
        if getattr(t, key) < 1:
            raise CramError(f"train.{key} must be >= 1, got {getattr(t, key)}")
    if t.lr <= 0 or not 0 <= t.min_lr_frac <= 1 or t.warmup_steps < 0 or t.weight_decay < 0:
        raise CramError("train.lr must be > 0, train.min_lr_frac in [0, 1], warmup_steps and weight_decay >= 0")
    if t.eval_log_points < 0:
        raise CramError(f"train.eval_log_points must be >= 0, got {t.eval_log_points}")
    if t.grad_clip < 0 or t.threads < 0 or t.seed < 0:
        raise CramError("train.grad_clip, train.threads and train.seed must be >= 0")
    if t.schedule not in ("cosine", "constant"):
        raise CramError(f"train.schedule must be 'cosine' or 'constant', got {t.schedule!r}")
    if t.device not in ("auto", "cpu", "cuda"):
        raise CramError(f"train.device must be 'auto', 'cpu' or 'cuda', got {t.device!r}")
    if min(t.epi_weight, t.sem_weight, t.distill_weight) < 0:
        raise CramError("loss weights must be >= 0")
    if cfg.task == "srcd":
        if cfg.srcd.world_seed < 0:
            raise CramError("srcd.world_seed must be >= 0")
        if "G" in m.pattern:
            raise CramError("the SRCD task uses S and A layers; G (plain attention) is for task = 'text'")
        scfg = cfg.srcd_config()  # the generator validates its own constraints
        if m.max_len and m.max_len < scfg.n:
            raise CramError(f"model.max_len ({m.max_len}) must be 0 (no position table) or >= srcd.n ({scfg.n})")
    else:
        if cfg.text.seq_len < 2 or not 0 < cfg.text.val_frac < 1 or cfg.text.eval_batches < 1:
            raise CramError("text.seq_len must be >= 2, text.val_frac in (0, 1), text.eval_batches >= 1")
        if "A" in m.pattern:
            raise CramError("the text task uses dense attention (G) and SSM (S) layers, not CRAM (A) layers")
        if m.max_len and m.max_len < cfg.text.seq_len:
            raise CramError(f"model.max_len ({m.max_len}) must be >= text.seq_len ({cfg.text.seq_len})")


def parse_value(text: str) -> Any:
    """A ``--set`` value: a TOML literal (``3``, ``0.5``, ``true``, ``"x"``) or a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Apply ``key=value`` strings (``section.key=value`` or ``task=...``) to nested dicts."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for item in overrides:
        if "=" not in item:
            raise CramError(f"--set expects key=value, got {item!r}")
        key, _, raw = item.partition("=")
        key = key.strip()
        parts = key.split(".")
        if len(parts) == 1 and parts[0] == "task":
            out["task"] = parse_value(raw.strip())
            continue
        if len(parts) != 2 or parts[0] not in _SECTIONS:
            raise CramError(f"unknown config key {key!r}; use section.key with a section in {sorted(_SECTIONS)}")
        section, name = parts
        if name not in _field_types(_SECTIONS[section]):
            raise CramError(f"unknown config key {key!r}; known in [{section}]: {sorted(_field_types(_SECTIONS[section]))}")
        out.setdefault(section, {})[name] = parse_value(raw.strip())
    return out


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def load_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CramError(f"config file {path} does not exist")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise CramError(f"config file {path} is not valid TOML: {exc}") from None


def load_config(
    config: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    preset: str | None = None,
) -> RunConfig:
    """Resolve a configuration: preset (default ``quick``) or TOML file, then ``--set`` overrides.

    A TOML file is complete by itself (missing keys take the dataclass defaults, which equal the
    quick preset); ``preset`` and ``config`` are mutually exclusive.
    """
    if config is not None and preset is not None:
        raise CramError("give either a preset or a config file, not both")
    if config is None:
        name = preset or "quick"
        path = PRESET_DIR / f"{name}.toml"
        if not path.is_file():
            raise CramError(f"unknown preset {name!r}; choose one of {preset_names()}")
        data = load_toml(path)
    else:
        data = load_toml(config)
    return from_dict(apply_overrides(data, overrides))

