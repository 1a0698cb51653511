"""A run folder's file names and the schema of its metrics log, declared once.

``cram train --out DIR`` writes (see docs/training.md):

- ``DIR/config.toml``: the full run config;
- ``DIR/metrics.jsonl``: one JSON object per evaluation, keys as in :data:`METRICS_FIELDS`;
- ``DIR/last.safetensors``: the newest checkpoint; ``DIR/checkpoints/step_NNNNNNN.safetensors``:
  the kept ones;
- ``DIR/summary.json``: the run's summary, written when the run ends;
- ``DIR/tokenizer.json``: a subword text run's tokenizer (its hash in every checkpoint);
- ``DIR/tensorboard/``: with ``--tensorboard``, the metrics as TensorBoard event files.
- ``DIR/run_id``: the run's identity, written once when the run starts; every checkpoint of the
  run carries it in its signed metadata (``run_id``), so a checkpoint of another run is told apart.

Writers (``cramkit.gpu.run.train``) and readers (``cramkit.theory.fit.data``, ``cramkit.gpu.run.eval``,
``cramkit.gpu.redundancy``) import these names instead of spelling them.
"""

from __future__ import annotations

from pathlib import Path

CONFIG = "config.toml"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
LAST = "last.safetensors"
CHECKPOINTS = "checkpoints"
CHECKPOINT_SUFFIX = ".safetensors"
RUN_ID = "run_id"

# time axes of an evaluation record (any one can be the curve's t in ``cram fit-gamma --time``)
TIME_FIELDS = ("step", "exposures", "cum_lr")

#: the fields of an evaluation record in metrics.jsonl that readers rely on, with their meaning
METRICS_FIELDS: dict[str, str] = {
    "step": "optimizer steps taken before this evaluation (0 = at initialisation)",
    "exposures": "SRCD only: expected presentations of each pool pattern so far",
    "cum_lr": "sum of the learning rate over the steps taken",
    "wall_s": "seconds since the run (or its resume) started",
    "loss": "mean training loss since the previous evaluation (null at step 0)",
    "rho_q": "attention per query slot on the probe set (routed query slots / query slots)",
    "rec_attended": "recurring probe queries that attended (the count behind E_rec)",
    "rec_total": "recurring probe queries in the probe set",
    "E_rec": "rec_attended / rec_total",
    # text runs (cramkit.gpu.tasks.text, .recall): every position is a target
    "val_loss": "text: mean loss (nats per token) on the validation windows",
    "bpb": "text: bits per UTF-8 byte of the validation targets (byte and BPE models compare)",
    "rho_all": "routed fraction of all positions, averaged over CRAM layers",
    "recall_share": "text: fraction of positions that are associative-recall hits (bigram seen before in the context)",
    "val_loss_recall": "text: mean loss on recall hits",
    "val_loss_other": "text: mean loss on the other positions",
    "bpb_recall": "text: bits per byte on recall hits",
    "bpb_other": "text: bits per byte on the other positions",
    "rho_recall": "text: routed fraction of recall hits (CRAM layers)",
    "rho_other": "text: routed fraction of the other positions",
    "attn_share_recall": "text: share of all routed positions that are recall hits",
    "train_recall_share": "text and token files: fraction of the training targets since the previous evaluation "
                          "that are recall hits",
    "train_loss_recall": "text and token files: mean task loss on the recall hits of the training batches since "
                         "the previous evaluation",
    "train_loss_other": "text and token files: mean task loss on the other training targets",
    "train_rho_recall": "text and token files: routed fraction of the training recall hits (CRAM layers)",
    "train_rho_other": "text and token files: routed fraction of the other training targets (CRAM layers)",
    "heldout_bpb": "text with text.eval_data: bits per byte on the held-out corpus (also heldout_val_loss, "
                   "heldout_rho_all, heldout_bpb_recall, ...)",
    "val_jump": "text and token tasks: val_loss exceeds train.jump_factor times the best earlier val_loss (the jump guard)",
    "train_probe_frac": "router.target = gain: share of the positions where attention ran for the router's label "
                        "only (the probe), at the last training step before this evaluation",
}


def step_checkpoint_name(step: int) -> str:
    """File name of the kept checkpoint at ``step`` (inside :data:`CHECKPOINTS`)."""
    return f"step_{step:07d}{CHECKPOINT_SUFFIX}"


def metrics_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / METRICS


def last_checkpoint(run_dir: str | Path) -> Path:
    return Path(run_dir) / LAST


def kept_checkpoints(run_dir: str | Path) -> list[Path]:
    """The kept checkpoints of a run in step order (empty when there are none)."""
    folder = Path(run_dir) / CHECKPOINTS
    return sorted(folder.glob("step_*" + CHECKPOINT_SUFFIX)) if folder.is_dir() else []


# --- ownership and event lines (written by ``cramkit.gpu.run.runfolder``) ---------------------------

#: the lock file a run's owner holds (``fcntl.flock``) for the life of the run
LOCK = ".lock"
#: ``--overwrite`` moves an earlier run's files into ``DIR/replaced-<UTC time>/`` (never deletes them)
REPLACED_PREFIX = "replaced-"
#: the tokenizer of a subword text run (``text.tokenizer = "bpe:N"`` or a file), its hash in the checkpoints
TOKENIZER = "tokenizer.json"
#: TensorBoard event files of ``cram train --tensorboard``
TENSORBOARD = "tensorboard"
#: the files and folders that make a folder hold a run
RUN_FILES = (CONFIG, METRICS, SUMMARY, LAST, CHECKPOINTS, RUN_ID, "last.json", TOKENIZER, TENSORBOARD)  # last.json: the older two-file format

#: an event line in metrics.jsonl (a resume with changed settings, an overwrite) carries this key;
#: evaluation records never do. Readers that want evaluations skip lines that have it.
EVENT = "event"


def run_dir_of(path: str | Path) -> Path:
    """The run folder of a checkpoint file (``DIR/last.safetensors``, ``DIR/checkpoints/step_*``),
    or the folder itself."""
    p = Path(path)
    if p.is_dir():
        return p
    return p.parent.parent if p.parent.name == CHECKPOINTS else p.parent


def read_run_id(run_dir: str | Path) -> str | None:
    """The run id written in ``run_dir`` (None for a folder made before run ids, or none at all)."""
    from cramkit.io import os_errors

    path = Path(run_dir) / RUN_ID
    if not path.is_file():
        return None
    with os_errors(f"reading {path}"):
        text = path.read_text(encoding="utf-8", errors="replace").strip()
    return text or None


def is_event(record: dict) -> bool:
    """Whether a metrics.jsonl record is an event line rather than an evaluation."""
    return EVENT in record


def evaluations(records: list[dict]) -> list[dict]:
    """The evaluation records of a metrics log, event lines left out."""
    return [r for r in records if not is_event(r)]
