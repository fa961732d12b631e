"""Products of row chunks with shared blocks, `out[q] = rows[q] @ blocks[block[q]].T`, without copying the blocks.

PNE's anchors come in Q chunks of C; every chunk meets one of G template blocks `[S, D]` (its set's positives or
negatives). Copying each chunk's block (`index_select`, then `bmm`) moves Q * S * D floats, keeps them for the
backward pass and, on a CPU, costs as much time as the products. A grouped matrix product (`F.grouped_mm`: the rows
of each block, one after another, against the block in place) does the same arithmetic with nothing copied but the
rows. It is used where it pays and is exact: CPU float32 with 16-byte aligned rows. On CUDA, `grouped_mm` is fast
only for bfloat16 (float32 falls back to a loop over groups with a host sync; the loss stays float32), and the
device's bandwidth makes the copy cheap, so CUDA keeps the copy + `bmm` path, as does every other case.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

_ALIGNMENT = 16  # bytes: grouped_mm's operands need row strides that are multiples of it


def grouped_path_applies(rows: Tensor, blocks: Tensor) -> bool:
    """Whether `block_products` takes the grouped product for these operands (CPU float32, aligned rows)."""
    S, D = blocks.shape[1:]
    aligned = all(size * blocks.element_size() % _ALIGNMENT == 0 for size in (S, D))
    return (rows.device.type == "cpu" and rows.dtype == blocks.dtype == torch.float32 and aligned
            and hasattr(F, "grouped_mm"))


def block_products(rows: Tensor, blocks: Tensor, block: Tensor, blocks_sorted: bool = False) -> Tensor:
    """`out[q] = rows[q] @ blocks[block[q]].T`: rows `[Q, C, D]`, blocks `[G, S, D]`, block `[Q]` in `[0, G)` ->
    `[Q, C, S]`. Gradients reach `rows` only (the blocks are detached templates). `blocks_sorted`: `block` is
    non-decreasing, so the rows need no reordering."""
    if not grouped_path_applies(rows, blocks):
        return rows @ blocks.detach().index_select(0, block).transpose(1, 2)
    Q, C, D = rows.shape
    S = blocks.shape[1]
    order = None if blocks_sorted else torch.sort(block, stable=True).indices
    chunk_block = block if order is None else block[order]
    per_block = torch.zeros(blocks.shape[0], dtype=torch.long, device=rows.device).scatter_add_(
        0, chunk_block, torch.ones_like(chunk_block))
    ends = (per_block.cumsum(0) * C).to(torch.int32)  # where each block's rows end
    ordered = rows if order is None else rows.index_select(0, order)
    out = _GroupedProduct.apply(ordered.reshape(Q * C, D), blocks.detach().contiguous(), ends).reshape(Q, C, S)
    if order is None:
        return out
    return out.index_select(0, torch.empty_like(order).scatter_(0, order, torch.arange(Q, device=order.device)))


class _GroupedProduct(torch.autograd.Function):
    """rows `[M, D]` (grouped by `ends`) times blocks `[G, S, D]` transposed; backward to the rows only."""

    @staticmethod
    def forward(ctx, rows: Tensor, blocks: Tensor, ends: Tensor) -> Tensor:  # noqa: D102
        ctx.save_for_backward(blocks, ends)
        return F.grouped_mm(rows.contiguous(), blocks.transpose(1, 2), offs=ends)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:  # noqa: D102
        blocks, ends = ctx.saved_tensors
        return F.grouped_mm(grad.contiguous(), blocks, offs=ends), None, None
