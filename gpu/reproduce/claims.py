"""The claims of the CRAM paper that ``cram reproduce`` re-measures, in one table.

``paper`` is the paper's claim, quoted as docs/results/README.md states it: these are the paper's
figures, never cram's numbers. ``definition`` is how cram measures the quantity (docs/theory.md,
docs/training.md, docs/fit-gamma.md, docs/transfer.md, docs/redundancy.md, docs/kernels.md);
``commands`` are the individual commands whose library calls the step makes.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Claim:
    id: str
    paper: str
    definition: str
    commands: tuple[str, ...]


CLAIMS: tuple[Claim, ...] = (
    Claim(
        "static-bound",
        "Any static routing scheme needs Ω(f·n) attention with recurring patterns of frequency f; "
        "consolidation beats it",
        "exact L1 simulator: slope of recurring attention A_rec against n per static router, held to "
        "(1 − ε̂)·f (P1), with the negative controls F1–F5; CR_K against ORACLE-POS on a stream (P3, P4)",
        ("cram bound --freq 0.1",),
    ),
    Claim(
        "accuracy-budget",
        "100 % retrieval accuracy at 1.6 % attention compute; baselines 68 %",
        "IID accuracy acc of the learned cram router and its attention per query slot ρ_q, against "
        "static routers trained at the matched budget m_e/n_q (95 % Wilson CIs over probe queries); "
        "FRESH accuracy on a pool never seen",
        ("cram train --out RUNS/cram", "cram train --out RUNS/<router> --set router.name=<router>",
         "cram eval RUNS/* --split iid", "cram eval RUNS/* --split fresh"),
    ),
    Claim(
        "attention-fall",
        "Attention use falls 37.8× over training, with a sharp phase transition (~3K steps)",
        "E_rec (share of recurring probe queries attended) from the first to the last evaluation of the "
        "run, the reduction of ρ_all, and fit-gamma's transition: t_c and the sharpness verdict "
        "(logistic width W < 0.5 decades, decisive ΔAIC against a power law)",
        ("cram train --out RUNS/cram", "cram fit-gamma RUNS/cram"),
    ),
    Claim(
        "gamma",
        "The consolidation curve is a power law with γ = 0.43, like humans' 0.4–0.5",
        "fit-gamma on E_rec(step): the best of M1–M8 by AIC, M1's γ with its parametric-bootstrap CI; "
        "the human reference: cram's own power fits Q = μ·t^−a of the bundled savings data",
        ("cram fit-gamma RUNS/cram",),
    ),
    Claim(
        "transfer",
        "Consolidated patterns transfer to unseen tasks with 48–52 % less attention",
        "R(s) = 1 − A/A_ORACLE-POS on TRANSFER(s) pools sharing a fraction s of the training pool, with "
        "bootstrap CIs, against reuse of the training pool (share of recurring slots on shared "
        "patterns × m_r/n_q); accuracy at s = 0",
        ("cram transfer RUNS/cram/last.safetensors",),
    ),
    Claim(
        "redundancy",
        "88 % of GPT-2's attention operations are redundant, not falling in training",
        "the largest fraction of attention outputs a ridge on the state (P1) can replace with the TEST "
        "NLL rising ≤ 0.01 nats/token, with a bootstrap CI over documents; on GPT-2 when a local copy "
        "is given, and over training on a small cram byte-level model",
        ("cram redundancy GPT2_DIR", "cram redundancy RUNS/text --text HELDOUT"),
    ),
    Claim(
        "compute",
        "Skipped attention is saved compute",
        "wall-time speedup, interleaved in one run: routed attention fwd+bwd against dense SDPA at "
        "the smallest ρ and largest T, and routed CRAM's training step and decode per token at that ρ "
        "against the plain hybrid (the same S blocks with plain dense attention) at width 64 and at a "
        "real width, each beside its FLOP-predicted ratio",
        ("cram bench kernels", "cram bench model"),
    ),
)

CLAIM_IDS: tuple[str, ...] = tuple(c.id for c in CLAIMS)


def claim(claim_id: str) -> Claim:
    return next(c for c in CLAIMS if c.id == claim_id)
