"""Recall tokens (gpu/tasks/recall.py): the vectorised classification against its definition."""

from __future__ import annotations

import math

import torch
from hypothesis import given
from hypothesis import strategies as st

from cramkit.gpu.tasks.recall import (
    recall_hits,
    recall_hits_reference,
    recall_metrics,
    recall_table,
)


def test_a_known_sequence():
    # a b c a b d a b : the second "a b" and the third "a b" repeat a bigram
    x = torch.tensor([[0, 1, 2, 0, 1, 3, 0]])
    y = torch.tensor([[1, 2, 0, 1, 3, 0, 1]])
    assert recall_hits(x, y).tolist() == [[False, False, False, True, False, False, True]]


def test_rows_do_not_see_each_other_and_ignored_targets_never_hit():
    x = torch.tensor([[5, 5, 5], [5, 5, 5]])
    y = torch.tensor([[5, 5, -1], [-1, 5, 5]])
    assert recall_hits(x, y).tolist() == [[False, True, False], [False, False, True]]


@given(st.integers(1, 4), st.integers(1, 24), st.integers(1, 6), st.data())
def test_vectorised_equals_the_definition(b, t, vocab, data):
    xs = [[data.draw(st.integers(0, vocab - 1)) for _ in range(t)] for _ in range(b)]
    ys = [[data.draw(st.integers(-1, vocab - 1)) for _ in range(t)] for _ in range(b)]
    got = recall_hits(torch.tensor(xs), torch.tensor(ys)).tolist()
    assert got == recall_hits_reference(xs, ys)


@given(st.lists(st.integers(0, 3), min_size=2, max_size=40))
def test_next_token_targets_of_a_stream(stream):
    x, y = torch.tensor([stream[:-1]]), torch.tensor([stream[1:]])
    want = [[(stream[t], stream[t + 1]) in {(stream[s], stream[s + 1]) for s in range(t)} for t in range(len(stream) - 1)]]
    assert recall_hits(x, y).tolist() == want


def test_metrics_by_class():
    hits = torch.tensor([[True, False, False, True]])
    loss = torch.tensor([[1.0, 2.0, 4.0, 3.0]])
    nbytes = torch.tensor([[1, 2, 2, 1]])
    route = torch.tensor([[1.0, 0.0, 1.0, 1.0]])
    m = recall_metrics(hits, loss, nbytes, route)
    assert m["recall_share"] == 0.5 and m["val_loss_recall"] == 2.0 and m["val_loss_other"] == 3.0
    assert math.isclose(m["bpb_recall"], 4.0 / math.log(2) / 2) and math.isclose(m["bpb_other"], 6.0 / math.log(2) / 4)
    assert m["rho_recall"] == 1.0 and m["rho_other"] == 0.5 and math.isclose(m["attn_share_recall"], 2 / 3)
    rows = recall_table(hits, loss, nbytes, None)
    assert [r["n"] for r in rows] == [2, 2] and rows[0]["rho"] is None
    none = recall_metrics(torch.zeros(1, 2, dtype=torch.bool), loss[:, :2], nbytes[:, :2], None)
    assert none["val_loss_recall"] is None and "rho_recall" not in none


def test_huge_vocabularies_take_the_row_of_three_path():
    """Token ids too large for one int64 key per (row, bigram) give the same hits."""
    big = 1 << 31
    x = torch.tensor([[big - 1, 5, big - 1, 5, big - 1]])
    y = torch.tensor([[5, big - 1, 5, big - 1, 7]])
    assert recall_hits(x, y).tolist() == recall_hits_reference(x.tolist(), y.tolist()) == [[False, False, True, True, False]]
