"""Typed training configuration: a TOML file plus ``--set key=value`` overrides, strictly checked.

The configuration is a tree of frozen dataclasses: :class:`RunConfig` holds ``task`` (the task's
name) and the sections ``model``, ``router``, ``train`` and one section per task: ``srcd`` *is*
:class:`cramkit.sim.srcd.SRCDConfig` (the generator's own config, nested as it is: its fields and
defaults are declared once, in ``sim/srcd.py``), ``text`` and ``tokens`` (see docs/tasks.md). The
run config builds its task (:meth:`RunConfig.build_task`), as in zoology's config pattern.

One checking mechanism for every section (:mod:`cramkit.gpu.model.config`): each field's type comes from its annotation (loading
refuses an unknown key, a value of the wrong type or a non-finite number, naming the key), and each
section's ``validate()`` checks ranges and choices, declared beside the field as metadata
(:func:`setting`); relations between fields are a section's ``_relations()``, relations between
sections :meth:`RunConfig.validate`. Every error is one line naming the key.

Presets live in ``gpu/presets/<name>.toml``: ``quick`` (the default of ``cram train``), ``paper``
(longer) and ``text`` (byte-level language modelling).

``srcd.world_seed`` (the seed of the SRCD pool) lives in the ``train`` section as
``train.world_seed``: it is a seed of the run, not a parameter of the task family. The TOML key
``srcd.world_seed`` (older run folders, ``--set srcd.world_seed=1``) is still read, into
``train.world_seed``.
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
from cramkit.gpu.model.config import ModelConfig, RouterConfig, Section, check_field, setting
from cramkit.sim.srcd import SRCDConfig

PRESET_DIR = Path(__file__).resolve().parent.parent / "presets"  # gpu/presets


TASKS = ("srcd", "text", "tokens")


DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class TrainConfig(Section):
    """Optimisation, logging and the run's seeds."""

    steps: int = setting(3000, lo=1)
    batch_size: int = setting(64, lo=1)
    lr: float = setting(3e-3, lo=0.0, lo_open=True)
    min_lr_frac: float = setting(0.1, lo=0.0, hi=1.0)
    warmup_steps: int = setting(100, lo=0)
    schedule: str = setting("cosine", choices=("cosine", "constant"))  # after warm-up
    weight_decay: float = setting(0.01, lo=0.0)
    grad_clip: float = setting(1.0, lo=0.0)
    seed: int = setting(0, lo=0)
    world_seed: int = setting(0, lo=0)  # SRCD: the seed of the training pool (TOML alias srcd.world_seed)
    eval_every: int = setting(250, lo=1)
    eval_log_points: int = setting(0, lo=0, hi=10_000)  # extra evaluations at this many log-spaced steps
    eval_sequences: int = setting(512, lo=1)  # size of the fixed probe set (SRCD, tokens)
    ckpt_every: int = setting(500, lo=1)
    keep_checkpoints: bool = True  # keep every checkpoint (consolidation curves need them)
    threads: int = setting(0, lo=0)  # torch CPU threads; 0 = leave torch's default
    epi_weight: float = setting(1.0, lo=0.0)  # weight of the episodic path's own loss
    sem_weight: float = setting(1.0, lo=0.0)  # weight of the semantic memory's own loss
    distill_weight: float = setting(1.0, lo=0.0)
    # the jump guard: an evaluation whose validation loss exceeds this factor times the best earlier
    # one is flagged (metrics "val_jump", summary "val_jumps")
    jump_factor: float = setting(1.05, lo=1.0, lo_open=True)
    # clip the gradient of the CRAM layers' own modules (memory, router, their norms) apart from the
    # rest, so that their losses' gradient never scales the task's down through the shared norm
    # (only where those losses are isolated, router.aux_grad != "shared")
    clip_apart: bool = True
    device: str = setting("auto", choices=DEVICES)


@dataclass(frozen=True)
class TextConfig(Section):
    """Language modelling on a text file (``task = "text"``): every position is a target; bytes
    or subword tokens (``tokenizer``), docs/tasks.md."""

    data: str = ""
    seq_len: int = setting(128, lo=2)
    val_frac: float = setting(0.05, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
    eval_batches: int = setting(8, lo=1)
    # "bytes", "bpe:<vocab>" (trained on the corpus, offline) or a tokenizer.json path (gpu/tasks/tokenizer.py)
    tokenizer: str = "bytes"
    split: str = setting("tail", choices=("tail", "documents"))  # validation: the tail, or every k-th blank-line document
    errors: str = setting("strict", choices=("strict", "replace"))  # a file that is not UTF-8: refuse, or read with U+FFFD
    eval_data: str = ""  # a held-out corpus scored beside the validation split at every evaluation

    def _relations(self, name: str) -> None:
        from cramkit.gpu.tasks.tokenizer import parse_spec

        parse_spec(self.tokenizer)


@dataclass(frozen=True)
class TokensConfig(Section):
    """Token files (``task = "tokens"``, format in docs/tasks.md)."""

    data: str = ""
    vocab_size: int = setting(0, lo=0)  # 0: the largest token id in the file + 1
    val_frac: float = setting(0.1, lo=0.0, hi=1.0, lo_open=True, hi_open=True)  # when the file has no split


#: the sections of a run config and their classes (``srcd`` is the generator's own config)
SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "router": RouterConfig,
    "srcd": SRCDConfig,
    "train": TrainConfig,
    "text": TextConfig,
    "tokens": TokensConfig,
}


#: TOML keys read into another section: (section, key) -> (section, key)
ALIASES = {("srcd", "world_seed"): ("train", "world_seed")}


@dataclass(frozen=True)
class RunConfig:
    task: str = "srcd"
    model: ModelConfig = field(default_factory=ModelConfig)
    router: RouterConfig = field(default_factory=RouterConfig)
    srcd: SRCDConfig = field(default_factory=SRCDConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    text: TextConfig = field(default_factory=TextConfig)
    tokens: TokensConfig = field(default_factory=TokensConfig)

    # ------------------------------------------------------------------------------------------
    def srcd_config(self) -> SRCDConfig:
        """The run's :class:`cramkit.sim.srcd.SRCDConfig` (the ``srcd`` section itself)."""
        return self.srcd

    @property
    def world_seed(self) -> int:
        """The SRCD pool's seed (``train.world_seed``)."""
        return self.train.world_seed

    def budget(self) -> float:
        """SRCD: attention budget per query slot of the static routers (default m_e / n_q)."""
        if self.router.budget >= 0:
            return float(self.router.budget)
        return self.srcd.m_e / self.srcd.n_q

    def build_task(self, *, device: Any = "cpu", rank: int = 0, world_size: int = 1, progress: Any = None):
        """The :class:`cramkit.gpu.tasks.Task` this config describes (loads its data; ``progress``
        hears about a long corpus preparation)."""
        from cramkit.gpu.tasks import build_task

        return build_task(self, device=device, rank=rank, world_size=world_size, progress=progress)

    def validate(self) -> None:
        """Every section's own checks, then the relations between the task and the model."""
        check_field("task", self.task, {"choices": TASKS})
        for name in SECTIONS:
            section = getattr(self, name)
            if isinstance(section, Section):
                section.validate(name)
            # srcd: SRCDConfig validated itself on construction
        m = self.model
        if self.task == "srcd":
            if "G" in m.pattern:
                raise CramError("the SRCD task uses S and A layers; G (plain attention) is for task = 'text' or 'tokens'")
            if m.max_len and m.max_len < self.srcd.n:
                raise CramError(f"model.max_len ({m.max_len}) must be 0 (no position table) or >= srcd.n ({self.srcd.n})")
        elif self.task == "text":
            if m.max_len and m.max_len < self.text.seq_len:
                raise CramError(f"model.max_len ({m.max_len}) must be >= text.seq_len ({self.text.seq_len})")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())


def _check_type(key: str, value: Any, typ: Any) -> Any:
    """Return ``value`` converted to ``typ`` or raise CramError (int -> float is allowed)."""
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise CramError(f"config key {key} must be a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise CramError(f"config key {key} must be finite, got {value!r}")
        return value
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise CramError(f"config key {key} must be an integer, got {value!r}")
        return value
    if typ is bool:
        if not isinstance(value, bool):
            raise CramError(f"config key {key} must be true or false, got {value!r}")
        return value
    if typ is str:
        if not isinstance(value, str):
            raise CramError(f"config key {key} must be a string, got {value!r}")
        return value
    raise CramError(f"config key {key} has an unsupported type {typ!r}")  # pragma: no cover


def field_types(cls) -> dict[str, Any]:
    """A section's field names and their types (from the annotations)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _known_keys(section: str) -> list[str]:
    return sorted([*field_types(SECTIONS[section]), *(k for s, k in ALIASES if s == section)])


def _build_section(name: str, cls, data: Any):
    if not isinstance(data, dict):
        raise CramError(f"config section [{name}] must be a table, got {data!r}")
    types_ = field_types(cls)
    unknown = sorted(set(data) - set(types_))
    if unknown:
        raise CramError(f"unknown config key(s) {[f'{name}.{k}' for k in unknown]}; known: {_known_keys(name)}")
    return cls(**{k: _check_type(f"{name}.{k}", v, types_[k]) for k, v in data.items()})


def _resolve_aliases(data: dict[str, Any]) -> dict[str, Any]:
    """Move aliased keys (``srcd.world_seed``) to their section; both given and different: error."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for (sec, key), (dst, dkey) in ALIASES.items():
        if isinstance(out.get(sec), dict) and key in out[sec]:
            value = out[sec].pop(key)
            target = out.setdefault(dst, {})
            if not isinstance(target, dict):
                continue  # reported as "must be a table" below
            if dkey in target and target[dkey] != value:
                raise CramError(f"config keys {sec}.{key} and {dst}.{dkey} are the same setting; give one")
            target[dkey] = value
    return out


def from_dict(data: dict[str, Any]) -> RunConfig:
    """Build a :class:`RunConfig` from nested dicts; unknown keys and wrong types are errors."""
    if not isinstance(data, dict):
        raise CramError("a configuration must be a table of sections")
    unknown = sorted(set(data) - set(SECTIONS) - {"task"})
    if unknown:
        raise CramError(f"unknown config section(s) or key(s) {unknown}; known: {['task', *sorted(SECTIONS)]}")
    data = _resolve_aliases(data)
    kw: dict[str, Any] = {}
    if "task" in data:
        kw["task"] = _check_type("task", data["task"], str)
    for name, cls in SECTIONS.items():
        if name in data:
            kw[name] = _build_section(name, cls, data[name])
    cfg = RunConfig(**kw)
    cfg.validate()
    if cfg.router.aux_grad == "auto":  # SRCD needs its losses in the backbone; language is hurt by them
        aux = "shared" if cfg.task == "srcd" else "isolated"
        cfg = dataclasses.replace(cfg, router=dataclasses.replace(cfg.router, aux_grad=aux))
    return cfg


#: settings added after runs were first recorded, each with the value that reproduces how a run
#: recorded without it was trained: before ``router.aux_grad`` existed, CRAM's own losses reached the
#: backbone ("shared"), at every target position, under one clipping norm
RECORD_DEFAULTS: dict[tuple[str, str], Any] = {
    ("router", "aux_grad"): "shared",
    ("router", "aux_share"): 1.0,
    ("train", "clip_apart"): False,
    ("router", "open_steps"): 0,  # the router trained from step 0
}


def with_record_defaults(data: Any) -> Any:
    """A run's recorded config (its config.toml, a checkpoint's metadata) with the keys it was
    recorded without set to :data:`RECORD_DEFAULTS`, not to today's defaults: an older run resumes
    and evaluates as it was trained."""
    if not isinstance(data, dict):
        return data
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for (sec, key), value in RECORD_DEFAULTS.items():
        section = out.setdefault(sec, {})
        if isinstance(section, dict):
            section.setdefault(key, value)
    return out


def from_record(data: Any) -> RunConfig:
    """:func:`from_dict` for a run's recorded config (see :func:`with_record_defaults`)."""
    return from_dict(with_record_defaults(data))


def validate(cfg: RunConfig) -> None:
    """Check a run config built in Python (``from_dict`` and ``load_config`` already do)."""
    cfg.validate()


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
        if len(parts) != 2 or parts[0] not in SECTIONS:
            raise CramError(f"unknown config key {key!r}; use section.key with a section in {sorted(SECTIONS)}")
        section, name = parts
        if name not in _known_keys(section):
            raise CramError(f"unknown config key {key!r}; known in [{section}]: {_known_keys(section)}")
        sec, name = ALIASES.get((section, name), (section, name))
        if not isinstance(out.get(sec, {}), dict):
            raise CramError(f"config section [{sec}] must be a table")
        out.setdefault(sec, {})[name] = parse_value(raw.strip())
        for (asec, akey), dst in ALIASES.items():  # the override replaces the file's value under any spelling
            if dst == (sec, name) and isinstance(out.get(asec), dict):
                out[asec].pop(akey, None)
    return out


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def preset_task(name: str) -> str:
    """The task of a preset (``quick``: srcd, ``text``: text)."""
    return str(load_toml(_preset_path(name)).get("task", "srcd"))


def config_task(path: str | Path) -> str:
    """The task a TOML config file names (``srcd`` when it names none)."""
    task = load_toml(path).get("task", "srcd")
    return task if isinstance(task, str) else "srcd"


def _preset_path(name: str) -> Path:
    path = PRESET_DIR / f"{name}.toml"
    if not path.is_file():
        raise CramError(f"unknown preset {name!r}; choose one of {preset_names()}")
    return path


def load_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CramError(f"config file {path} does not exist")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8-sig"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise CramError(f"config file {path} is not valid TOML: {exc}") from None


def load_config(
    config: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    preset: str | None = None,
    record: bool = False,
) -> RunConfig:
    """Resolve a configuration: preset (default ``quick``) or TOML file, then ``--set`` overrides.

    A TOML file is complete by itself (missing keys take the dataclass defaults; the ``srcd``
    defaults are :class:`cramkit.sim.srcd.SRCDConfig`'s); ``preset`` and ``config`` are mutually
    exclusive. ``record``: ``config`` is a run's own config.toml (:func:`with_record_defaults`).
    """
    if config is not None and preset is not None:
        raise CramError("give either a preset or a config file, not both")
    data = load_toml(_preset_path(preset or "quick") if config is None else config)
    if record:
        data = with_record_defaults(data)
    return from_dict(apply_overrides(data, overrides))
