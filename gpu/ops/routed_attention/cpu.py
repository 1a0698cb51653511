"""CPU paths of routed attention.

Four exact algorithms, chosen by a cost model in :func:`routed_attention_cpu`:

* **key-block** (:class:`KeyBlockRoutedAttention`): the routed queries of every row gathered
  once (sorted lanes) and the keys walked in blocks of width ``W``. Forward: the scores
  ``(B, H, M, T)`` are filled block by block, only for the lanes that see the block (``-inf``
  elsewhere, the causal mask only on the lanes whose position falls inside it), one softmax,
  the output accumulated block by block; the probabilities are kept. Backward: one pass over
  the key blocks, each block's ``dv`` and ``dk`` rows computed whole and written once, straight
  into their strided place in the ``[B, T, H, D]`` gradients (no read-modify-write of
  full-size buffers); ``dq`` of the gathered rows accumulates in a small buffer. Work is about
  ``sum_{t routed} (t + 1) + M W / 2`` pairs; it keeps ``B H M T`` probabilities, so it is a
  candidate only up to ``_KB_LIMIT`` of them.
* **blocked** (:class:`BlockedRoutedAttention`): positions are cut into blocks of width ``W``.
  Block ``j`` gathers the routed queries of every batch row that fall in ``[jW, (j+1)W)``
  (rows padded to the block's largest count) and reads only the key prefix up to the block's last
  routed position: one batched score matmul, a causal bias on the block's own ``<= W`` tail
  columns (never a ``T x T`` mask), an in-place softmax and one value matmul. The backward pass
  accumulates ``dk``, ``dv`` in place (``baddbmm_``) on the same prefixes, the longest prefix
  first so that it initialises the buffers. Work is about
  ``sum_{t routed} (t + W/2)``; ``W = T`` is the plain "gather, attend to everything, scatter"
  scheme, small ``W`` trades wasted tail work for more, smaller matmuls.
* **gathered**: the routed queries of every row gathered into one batch, one fused SDPA call
  against all ``T`` keys with a ``[B, M, T]`` boolean mask, rows scattered back. Few calls, so it
  wins on small problems (short ``T``, large batch) where call overhead dominates.
* **dense**: fused causal SDPA on every position, non-routed rows zeroed afterwards; it wins
  only when nearly every position is routed.

The cost model prices each candidate ``W`` (powers of two and ``T``) of the blocked and
key-block paths from the actual routed counts per block, the gathered path from the largest routed count and the dense path from
``T``, with per-element and per-call constants measured on a 2-core CPU. Half-precision inputs
are computed in float32 and cast back.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# Cost-model constants (seconds), fitted to interleaved single-thread timings at T=4096, H=4,
# D=64 on the shared 2-core sandbox; only their ratios matter for the choice.
_PAIR_DIM = 0.4e-9  # blocked: per (query, key, head, head-dim) element, all six matmuls
_PAIR = 4e-9  # blocked: per (query, key, head) element, bias/softmax/softmax-backward passes
_KEY = 5.5e-9  # blocked: per (key, head, head-dim) element of a block's prefix (8 memory passes)
_BLOCK = 400e-6  # blocked: fixed cost of one block (about 20 small tensor calls)
_BLOCKED_CALL = 1e-3  # blocked: transposed copies of k, v and the gradient buffers
_DENSE_PAIR_DIM = 0.37e-9  # fused dense kernel: per (query, key, head, head-dim) element
_DENSE_PAIR = 2.5e-9  # fused dense kernel: per (query, key, head) element
_DENSE_CALL = 1e-3
_GATHER_PAIR_DIM = 0.3e-9  # gathered masked SDPA: per (query, key, head, head-dim) element
_GATHER_PAIR = 4e-9  # gathered masked SDPA: per (query, key, head) element (the mask)
_GATHER_CALL = 1.5e-3
_KB_PAIR_DIM = 0.3e-9  # key-block: per (query, key, head, head-dim) element, all six matmuls
_KB_PAIR = 4e-9  # key-block: per (query, key, head) element of the planned blocks (mask, dS, bmm edges)
_KB_ROW = 3e-9  # key-block: per (query, key, head) element of the full rows (fill, softmax)
_KB_BLOCK = 400e-6  # key-block: fixed cost of one key block (about 12 small tensor calls)
_KB_CALL = 3e-3  # key-block: gathers, scatters, the plan, the autograd function
# Score/probability elements kept for the backward pass before it recomputes them instead.
_SAVE_LIMIT = 1 << 26
# The key-block path keeps all (B, H, M, T) probabilities; beyond this many it is not a candidate.
_KB_LIMIT = 1 << 25


def routed_rows_bucket(most: int, t_len: int, least: int = 16) -> int:
    """How many rows hold ``most`` routed rows when their count is bucketed: 0 for none, else the
    power of two >= ``most`` (at least ``least``), at most ``t_len``. A compiled consumer then
    sees a few lengths instead of one per routed count."""
    return min(t_len, max(least, 1 << (most - 1).bit_length())) if most else 0


def routed_index(mask: torch.Tensor, *, pad: int = 0, bucket: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted routed positions per row, padded: ``(idx [B, M], valid [B, M])``, M = the largest
    routed count (``bucket``: rounded up by :func:`routed_rows_bucket`). One host read.

    Padding entries hold ``pad`` and ``valid`` False.
    """
    counts = mask.sum(1)
    m = int(counts.max()) if mask.numel() else 0
    lanes = routed_rows_bucket(m, mask.shape[1]) if bucket else m
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :lanes]
    valid = torch.arange(lanes, device=mask.device)[None, :] < counts[:, None]
    return torch.where(valid, order, pad), valid


def routed_attention_gathered(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, *, scale: float
) -> torch.Tensor:
    """Gather the routed queries, run masked SDPA against all keys, scatter the rows back.

    The simple exact baseline that the blocked path is measured against.
    """
    bsz, t_len, h, d = q.shape
    idx, valid = routed_index(mask)
    m = idx.shape[1]
    gidx = idx[:, :, None, None].expand(bsz, m, h, d)
    qg = q.gather(1, gidx).transpose(1, 2)  # (B, H, M, D)
    keys = torch.arange(t_len, device=q.device)
    allowed = keys[None, None, :] <= idx[:, :, None]  # (B, M, T)
    og = F.scaled_dot_product_attention(
        qg, k.transpose(1, 2), v.transpose(1, 2), attn_mask=allowed[:, None], scale=scale
    ).transpose(1, 2)  # (B, M, H, D)
    og = og * valid[:, :, None, None].to(og.dtype)
    sidx = torch.where(valid, idx, t_len)[:, :, None, None].expand(bsz, m, h, d)
    out = q.new_zeros(bsz, t_len + 1, h, d).scatter(1, sidx, og)
    return out[:, :t_len]


def routed_attention_dense(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, *, scale: float
) -> torch.Tensor:
    """Fused causal SDPA over every position, then non-routed rows set to exactly zero."""
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True, scale=scale
    ).transpose(1, 2)
    return torch.where(mask[:, :, None, None], out, torch.zeros((), dtype=out.dtype))


def block_plan(mask: torch.Tensor, width: int):
    """Per-block gather plan for the blocked path.

    Returns a list of ``(start, length, gather_pos [B, n], scatter_pos [B, n])`` for every block
    that holds a routed query: ``start = jW``; ``length`` = 1 + the block's last routed position;
    padding lanes gather position ``start`` and scatter to the dummy row ``T``.
    """
    bsz, t_len = mask.shape
    width = max(1, min(int(width), t_len))
    n_blocks = -(-t_len // width)
    padded = F.pad(mask, (0, n_blocks * width - t_len)).view(bsz, n_blocks, width)
    counts = padded.sum(-1)  # (B, nb)
    per_block = counts.max(0).values.tolist()  # rows are padded to the largest count
    order = torch.argsort((~padded).to(torch.int8), dim=-1, stable=True)  # routed lanes first
    offsets = torch.arange(n_blocks, device=mask.device)[None, :, None] * width
    pos = order + offsets  # (B, nb, W) absolute positions, routed ones first in each block
    lane = torch.arange(width, device=mask.device)[None, None, :]
    valid = lane < counts[..., None]
    last = torch.where(valid, pos, -1).amax(dim=(0, 2)).tolist()  # (nb,)
    plan = []
    for j, n in enumerate(per_block):
        if n == 0:
            continue
        start = j * width
        pj, vj = pos[:, j, :n], valid[:, j, :n]
        plan.append((start, last[j] + 1, torch.where(vj, pj, start), torch.where(vj, pj, t_len)))
    return plan


def _plan_cost(cum: np.ndarray, width: int, t_len: int, heads: int, dim: int) -> float:
    """Estimated seconds of the blocked path for one width; ``cum`` is the routed count prefix
    sum per row, ``[B, T + 1]``."""
    starts = np.arange(0, t_len, width)
    ends = np.minimum(starts + width, t_len)
    n = (cum[:, ends] - cum[:, starts]).max(axis=0).astype(np.float64)  # padded queries per block
    used = n > 0
    pairs = float((n * ends).sum()) * cum.shape[0]
    keys = float(ends[used].sum()) * cum.shape[0]
    compute = pairs * heads * (_PAIR_DIM * dim + _PAIR) + keys * heads * dim * _KEY
    return compute + int(used.sum()) * _BLOCK + _BLOCKED_CALL


def _keyblock_cost(cum: np.ndarray, block: int, t_len: int, heads: int, dim: int) -> float:
    """Estimated seconds of the key-block path for one key block width (``cum`` as in
    :func:`_plan_cost`)."""
    bsz = cum.shape[0]
    m = int(cum[:, -1].max())
    last = int(np.argmax(cum == cum[:, -1:], axis=1).max())  # 1 + the last routed position
    starts = np.arange(0, t_len, block)
    widths = np.minimum(starts + block, t_len) - starts
    lanes = m - cum[:, starts].min(axis=0)  # lanes that see each block
    used = (starts < last) & (lanes > 0)
    pairs = float((lanes * widths)[used].sum()) * bsz
    rows = float(bsz * m * t_len)
    compute = pairs * heads * (_KB_PAIR_DIM * dim + _KB_PAIR) + rows * heads * _KB_ROW
    return compute + int(used.sum()) * _KB_BLOCK + _KB_CALL


def _widths(t_len: int, smallest: int) -> list[int]:
    """Candidate block widths: powers of two from ``smallest`` below ``T``, and ``T``."""
    widths = {t_len}
    w = smallest
    while w < t_len:
        widths.add(w)
        w *= 2
    return sorted(widths)


def _routed_prefix_sums(mask: torch.Tensor) -> np.ndarray:
    bsz, t_len = mask.shape
    cum = np.zeros((bsz, t_len + 1), dtype=np.int64)
    np.cumsum(mask.detach().cpu().numpy(), axis=1, out=cum[:, 1:])
    return cum


def keyblock_width(mask: torch.Tensor, heads: int, dim: int) -> tuple[int, float]:
    """The key-block path's best key block width and its estimated seconds (``inf`` when its
    ``(B, H, M, T)`` probabilities would exceed ``_KB_LIMIT`` elements)."""
    return _best_keyblock(_routed_prefix_sums(mask), mask.shape[1], heads, dim)


def _best_keyblock(cum: np.ndarray, t_len: int, heads: int, dim: int) -> tuple[int, float]:
    most = int(cum[:, -1].max()) if cum.size else 0
    if cum.shape[0] * heads * most * t_len > _KB_LIMIT:
        return t_len, float("inf")
    return min(((w, _keyblock_cost(cum, w, t_len, heads, dim)) for w in _widths(t_len, 64)), key=lambda c: c[1])


def choose_cpu_algorithm(mask: torch.Tensor, heads: int, dim: int) -> tuple[str, int]:
    """Pick ``("dense", T)``, ``("gathered", T)``, ``("keyblock", W)`` or ``("blocked", W)`` by
    the cost model in the module docstring (NumPy on the mask: a few microseconds per candidate
    width)."""
    bsz, t_len = mask.shape
    cum = _routed_prefix_sums(mask)
    dense = bsz * t_len * (t_len + 1) / 2 * heads * (_DENSE_PAIR_DIM * dim + _DENSE_PAIR) + _DENSE_CALL
    best = ("dense", t_len, dense)
    most = int(cum[:, -1].max()) if cum.size else 0
    gathered = bsz * most * t_len * heads * (_GATHER_PAIR_DIM * dim + _GATHER_PAIR) + _GATHER_CALL
    if gathered < best[2]:
        best = ("gathered", t_len, gathered)
    w, cost = _best_keyblock(cum, t_len, heads, dim)
    if cost < best[2]:
        best = ("keyblock", w, cost)
    for w in _widths(t_len, 32):
        cost = _plan_cost(cum, w, t_len, heads, dim)
        if cost < best[2]:
            best = ("blocked", w, cost)
    return best[0], best[1]


def _tail_bias(gpos: torch.Tensor, start: int, length: int, dtype: torch.dtype) -> torch.Tensor | None:
    """Additive causal bias ``(B, 1, n, length - start)`` for the block's own columns."""
    if length - 1 <= start:
        return None
    cols = torch.arange(start, length, device=gpos.device)
    bias = torch.zeros(*gpos.shape, length - start, dtype=dtype, device=gpos.device)
    return bias.masked_fill_(gpos[..., None] < cols, float("-inf"))[:, None]


def _block_probs(qs, kh, gpos, start, length):
    """Softmax probabilities ``(B, H, n, L)`` of pre-scaled queries against the key prefix."""
    s = torch.matmul(qs, kh[:, :, :length].transpose(-1, -2))  # (B, H, n, L)
    bias = _tail_bias(gpos, start, length, s.dtype)
    if bias is not None:
        s[..., start:] += bias
    return torch.softmax(s, -1, out=s)


def _flat(x: torch.Tensor, length: int) -> torch.Tensor:
    """``(B, H, T, D)`` contiguous -> the ``(B*H, length, D)`` prefix view, for ``baddbmm_``."""
    b, h, t, d = x.shape
    return x.view(b * h, t, d)[:, :length]


class BlockedRoutedAttention(torch.autograd.Function):
    """Exact routed attention over position blocks; see the module docstring."""

    @staticmethod
    def forward(ctx, q, k, v, mask, scale, width):
        bsz, t_len, h, d = q.shape
        work = torch.float64 if q.dtype == torch.float64 else torch.float32
        qw = q.to(work)
        kh = k.to(work).transpose(1, 2).contiguous()  # (B, H, T, D): contiguous prefixes
        vh = v.to(work).transpose(1, 2).contiguous()
        out = torch.zeros(bsz, t_len + 1, h, d, dtype=work, device=q.device)  # row T: padding
        rows = torch.arange(bsz, device=q.device)[:, None]
        plan = []
        saved = 0
        for start, length, gpos, spos in block_plan(mask, width):
            qs = qw[rows, gpos].transpose(1, 2) * scale  # (B, H, n, D)
            p = _block_probs(qs, kh, gpos, start, length)
            og = torch.matmul(p, vh[:, :, :length])  # (B, H, n, D)
            out[rows, spos] = og.transpose(1, 2)
            saved += p.numel()
            plan.append([start, length, gpos, spos, qs, p])
        if saved > _SAVE_LIMIT:  # keep memory bounded: recompute in backward
            for item in plan:
                item[5] = None
        ctx.plan = plan
        ctx.scale = scale
        ctx.in_dtype = q.dtype
        ctx.save_for_backward(kh, vh)
        return out[:, :t_len].to(q.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        kh, vh = ctx.saved_tensors
        scale = ctx.scale
        bsz, h, t_len, d = kh.shape
        gw = grad_out.to(kh.dtype)
        dq = torch.zeros(bsz, t_len + 1, h, d, dtype=kh.dtype, device=kh.device)  # row T: padding
        # Prefix lengths grow block by block, so the last block covers every earlier prefix: it
        # initialises dk, dv (beta=0 ignores the uninitialised memory) and the rest is zeroed.
        dkh = torch.empty_like(kh)
        dvh = torch.empty_like(vh)
        rows = torch.arange(bsz, device=kh.device)[:, None]
        first = True
        for start, length, gpos, spos, qs, p in reversed(ctx.plan):
            if p is None:
                p = _block_probs(qs, kh, gpos, start, length)
            dog = gw[rows, gpos]  # (B, n, H, D)
            pad = spos == t_len
            if bool(pad.any()):  # padding lanes carry no gradient
                dog = dog.masked_fill(pad[:, :, None, None], 0.0)
            dog = dog.transpose(1, 2)  # (B, H, n, D)
            n = dog.shape[2]
            beta = 0.0 if first else 1.0
            _flat(dvh, length).baddbmm_(p.reshape(-1, n, length).transpose(-1, -2), dog.reshape(-1, n, d), beta=beta)
            dp = torch.matmul(dog, vh[:, :, :length].transpose(-1, -2))  # (B, H, n, L)
            # dS = P * (dP - rowsum(dP * P)), fused; rowsum(dP * P) equals dO . O.
            ds = torch._softmax_backward_data(dp, p, -1, p.dtype)
            dq[rows, spos] = torch.matmul(ds, kh[:, :, :length]).transpose(1, 2) * scale
            _flat(dkh, length).baddbmm_(ds.reshape(-1, n, length).transpose(-1, -2), qs.reshape(-1, n, d), beta=beta)
            if first:
                dkh[:, :, length:].zero_()
                dvh[:, :, length:].zero_()
                first = False
        if first:  # nothing routed
            dkh.zero_()
            dvh.zero_()
        ctx.plan = None
        dt = ctx.in_dtype
        return dq[:, :t_len].to(dt), dkh.transpose(1, 2).to(dt), dvh.transpose(1, 2).to(dt), None, None, None


def routed_attention_blocked(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    *,
    scale: float,
    width: int | None = None,
) -> torch.Tensor:
    """The blocked path; shapes as in :func:`cramkit.gpu.ops.routed_attention.routed_attention`.
    ``width`` (block width ``W``) defaults to the cost model's choice."""
    if width is None:
        _, width = choose_cpu_algorithm(mask, q.shape[2], q.shape[3])
    return BlockedRoutedAttention.apply(q, k, v, mask, scale, width)


def keyblock_plan(mask: torch.Tensor, block: int):
    """Lanes and key blocks of the key-block path.

    Returns ``(pos [B, M], valid [B, M], plan)``: each row's routed positions sorted, padded
    with ``T - 1`` (a padding lane never needs the causal mask; its gradient is zero), and for
    every key block ``[j0, j1)`` that some routed query sees, ``(j0, j1, r, e)``: lanes ``< r``
    lie before ``j0`` in every row (the block is hidden from them), lanes ``>= e`` lie at or
    after ``j1 - 1`` in every row (they see all of it), so only lanes ``[r, e)`` need the mask.
    The planned blocks are consecutive from position 0.
    """
    bsz, t_len = mask.shape
    pos, valid = routed_index(mask, pad=t_len - 1)
    m = pos.shape[1]
    if m == 0:
        return pos, valid, []
    cum = F.pad(mask.cumsum(1), (1, 0))  # (B, T + 1): routed positions before each index
    starts = torch.arange(0, t_len, block, device=mask.device)
    ends = (starts + block).clamp(max=t_len)
    first = cum[:, starts].amin(0).tolist()
    diag = cum[:, ends - 1].amax(0).tolist()
    last = int(torch.where(valid, pos, -1).max()) + 1
    plan = []
    for j0, j1, r, e in zip(starts.tolist(), ends.tolist(), first, diag):
        if j0 >= last or r >= m:
            break
        plan.append((j0, j1, r, max(r, e)))
    return pos, valid, plan


def _gather_rows(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """``x [B, T, H, D]`` at the lanes' positions ``pos [B, M]`` -> ``(B, H, M, D)`` contiguous
    (advanced indexing: ``gather`` with an expanded index is many times slower here)."""
    batch = torch.arange(x.shape[0], device=x.device)[:, None]
    return x[batch, pos].transpose(1, 2).contiguous()


def _scatter_rows(rows: torch.Tensor, pos: torch.Tensor, valid: torch.Tensor, t_len: int) -> torch.Tensor:
    """``(B, H, M, D)`` gathered rows -> ``(B, T, H, D)``, zero elsewhere. Padding lanes add
    zeros (``accumulate``), so they may share a position with a routed lane; the result is a
    fresh tensor, not a view (a view returned from an autograd function costs a copy)."""
    bsz, h, m, d = rows.shape
    out = rows.new_zeros(bsz, t_len, h, d)
    lanes = rows.transpose(1, 2) * valid[:, :, None, None].to(rows.dtype)
    batch = torch.arange(bsz, device=pos.device)[:, None].expand(bsz, m)
    return out.index_put_((batch, pos), lanes, accumulate=True)


def _bmm_into(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, *, add: bool = False) -> None:
    """``out (+)= a @ b`` for ``(B, H, ., .)`` operands, written into ``out`` (a strided view of
    a larger buffer) without a temporary or a copy: one batched call per batch row."""
    for i in range(out.shape[0]):
        if add:  # small destinations: one batched product and one add (baddbmm_ loops per head)
            out[i].add_(torch.bmm(a[i], b[i]))
        else:
            torch.bmm(a[i], b[i], out=out[i])


class KeyBlockRoutedAttention(torch.autograd.Function):
    """Exact routed attention walking the keys in blocks; see the module docstring."""

    @staticmethod
    def forward(ctx, q, k, v, mask, scale, block):
        bsz, t_len, h, d = q.shape
        in_dtype = q.dtype
        work = torch.float64 if in_dtype == torch.float64 else torch.float32
        q, k, v = q.to(work), k.to(work), v.to(work)
        pos, valid, plan = keyblock_plan(mask, block)
        m = pos.shape[1]
        kh, vh = k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, D) views
        qs = _gather_rows(q, pos).mul_(scale)  # (B, H, M, D)
        s = q.new_empty(bsz, h, m, t_len)
        for j0, j1, r, e in plan:
            sj = s[..., j0:j1]
            if r:
                sj[:, :, :r].fill_(float("-inf"))
            _bmm_into(sj[:, :, r:], qs[:, :, r:], kh[:, :, j0:j1].transpose(-1, -2))
            if e > r:
                hidden = pos[:, r:e, None] < torch.arange(j0, j1, device=q.device)
                sj[:, :, r:e].masked_fill_(hidden[:, None], float("-inf"))
        seen = plan[-1][1] if plan else 0
        s[..., seen:].fill_(float("-inf"))
        p = torch.softmax(s, -1, out=s)
        og = q.new_zeros(bsz, h, m, d)
        for j0, j1, r, _ in plan:
            _bmm_into(og[:, :, r:], p[:, :, r:, j0:j1], vh[:, :, j0:j1], add=True)
        ctx.plan, ctx.scale, ctx.in_dtype = plan, scale, in_dtype
        ctx.save_for_backward(k, v, qs, og, p, pos, valid)
        return _scatter_rows(og, pos, valid, t_len).to(in_dtype)

    @staticmethod
    def backward(ctx, grad_out):
        k, v, qs, og, p, pos, valid = ctx.saved_tensors
        bsz, t_len, h, d = k.shape
        m = pos.shape[1]
        kh, vh = k.transpose(1, 2), v.transpose(1, 2)
        dog = _gather_rows(grad_out.to(k.dtype), pos).mul_(valid[:, None, :, None])
        delta = (dog * og).sum(-1, keepdim=True)  # (B, H, M, 1): rowsum(dP * P) = dO . O
        dk = k.new_empty(bsz, t_len, h, d)
        dv = k.new_empty(bsz, t_len, h, d)
        dkh, dvh = dk.transpose(1, 2), dv.transpose(1, 2)
        dqs = k.new_zeros(bsz, h, m, d)
        for j0, j1, r, _ in ctx.plan:
            pj, doj = p[:, :, r:, j0:j1], dog[:, :, r:]
            _bmm_into(dvh[:, :, j0:j1], pj.transpose(-1, -2), doj)
            ds = torch.matmul(doj, vh[:, :, j0:j1].transpose(-1, -2))
            ds.sub_(delta[:, :, r:]).mul_(pj)  # dS = P * (dP - dO . O)
            _bmm_into(dqs[:, :, r:], ds, kh[:, :, j0:j1], add=True)
            _bmm_into(dkh[:, :, j0:j1], ds.transpose(-1, -2), qs[:, :, r:])
        seen = ctx.plan[-1][1] if ctx.plan else 0
        dkh[:, :, seen:].zero_()
        dvh[:, :, seen:].zero_()
        ctx.plan = None
        dq = _scatter_rows(dqs * ctx.scale, pos, valid, t_len)
        dt = ctx.in_dtype
        return dq.to(dt), dk.to(dt), dv.to(dt), None, None, None


def routed_attention_keyblock(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    *,
    scale: float,
    block: int | None = None,
) -> torch.Tensor:
    """The key-block path; shapes as in :func:`cramkit.gpu.ops.routed_attention.routed_attention`.
    ``block`` (key block width) defaults to the cost model's choice for this path."""
    if block is None:
        block = keyblock_width(mask, q.shape[2], q.shape[3])[0]
    return KeyBlockRoutedAttention.apply(q, k, v, mask, scale, max(1, int(block)))


def routed_attention_cpu(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, *, scale: float
) -> torch.Tensor:
    """The CPU dispatch target: the cheapest of dense, gathered, key-block and blocked (best width)."""
    algo, width = choose_cpu_algorithm(mask, q.shape[2], q.shape[3])
    if algo == "dense":
        return routed_attention_dense(q, k, v, mask, scale=scale)
    if algo == "gathered":
        return routed_attention_gathered(q, k, v, mask, scale=scale)
    if algo == "keyblock":
        return KeyBlockRoutedAttention.apply(q, k, v, mask, scale, width)
    return BlockedRoutedAttention.apply(q, k, v, mask, scale, width)
