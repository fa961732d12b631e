"""Products of row chunks with shared blocks, `out[q] = rows[q] @ blocks[block_ids[q]].T`, without copying blocks.

PNE's anchors come in Q chunks of C rows; every chunk meets one of G template blocks `[S, D]`. Copying each chunk's
block (`index_select`, then `bmm`) moves Q * S * D floats and keeps them for the backward pass; a grouped matrix
product (`F.grouped_mm`: the rows of each block, one after another, against the block in place) copies only the rows.
It is taken on a CPU in float32 with 16-byte aligned sizes and at least as many chunks as blocks (torch's CPU kernel
visits every block, empty or not), outside graph capture. CUDA keeps copy + `bmm`: there `grouped_mm` is fast only
for bfloat16, and the loss stays float32 (docs/speed.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from segcentroids.ops.tracing import is_tracing

_ALIGNMENT = 16  # bytes: grouped_mm's operands need row strides that are multiples of it


def grouped_path_applies(rows: Tensor, blocks: Tensor) -> bool:
    """Whether `block_products` takes the grouped product for these operands."""
    S, D = blocks.shape[1:]
    aligned = all(size * blocks.element_size() % _ALIGNMENT == 0 for size in (S, D))
    return (rows.device.type == "cpu" and rows.dtype == blocks.dtype == torch.float32 and aligned
            and rows.shape[0] >= blocks.shape[0] and hasattr(F, "grouped_mm")
            and not (is_tracing() or torch.compiler.is_compiling()))


def block_products(rows: Tensor, blocks: Tensor, block_ids: Tensor, ids_sorted: bool = False) -> Tensor:
    """`out[q] = rows[q] @ blocks[block_ids[q]].T`: rows `[Q, C, D]`, blocks `[G, S, D]`, block_ids `[Q]` in
    `[0, G)` -> `[Q, C, S]`. Gradients reach `rows` only (the blocks are detached templates). `ids_sorted`: the ids
    are non-decreasing, so the rows need no reordering (checked: a CPU-only path, no device sync)."""
    if not grouped_path_applies(rows, blocks):
        return rows @ blocks.detach().index_select(0, block_ids).transpose(1, 2)
    Q, C, D = rows.shape
    S = blocks.shape[1]
    if ids_sorted and not bool((block_ids[1:] >= block_ids[:-1]).all()):
        raise ValueError("block_products: ids_sorted=True but block_ids decrease")
    order = None if ids_sorted else torch.sort(block_ids, stable=True).indices
    chunk_ids = block_ids if order is None else block_ids[order]
    per_block = torch.zeros(blocks.shape[0], dtype=torch.long, device=rows.device).scatter_add_(
        0, chunk_ids, torch.ones_like(chunk_ids))
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
