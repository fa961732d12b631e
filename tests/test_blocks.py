"""`block_products`: each chunk of rows against its block, checked against a per-chunk loop."""

from __future__ import annotations

import pytest
import torch

from segcentroids.callbacks.run_recorder import flop_counter
from segcentroids.ops.blocks import block_products, grouped_path_applies


def loop_products(rows: torch.Tensor, blocks: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
    products = [rows[q] @ blocks[int(block[q])].T for q in range(rows.shape[0])]
    return torch.stack(products) if products else rows.new_zeros(0, rows.shape[1], blocks.shape[1])


def case(block_ids: list[int], S: int, D: int, G: int = 5, C: int = 3, dtype=torch.float32):
    g = torch.Generator().manual_seed(len(block_ids) + S + D)
    rows = torch.randn(len(block_ids), C, D, generator=g, dtype=dtype, requires_grad=True)
    blocks = torch.randn(G, S, D, generator=g, dtype=dtype)
    return rows, blocks, torch.tensor(block_ids, dtype=torch.long)


@pytest.mark.parametrize("S,D,aligned", [(8, 12, True), (4, 4, True), (3, 8, False), (8, 5, False)])
@pytest.mark.parametrize("block_ids,ids_sorted", [([0, 0, 2, 4, 4, 4], True), ([3, 1, 3, 0, 4, 1, 1], False),
                                                  ([2], True), ([], True), ([], False)])
def test_block_products_match_the_loop(S, D, aligned, block_ids, ids_sorted):
    """Values and the rows' gradients, with empty blocks (1, 3 in the first case), unordered chunks, one and no chunk;
    aligned sizes with at least as many chunks as the G = 5 blocks take the grouped product, others the copy."""
    rows, blocks, block = case(block_ids, S, D)
    assert grouped_path_applies(rows, blocks) == (aligned and len(block_ids) >= 5)
    ours = block_products(rows, blocks, block, ids_sorted=ids_sorted)
    ref = loop_products(rows, blocks, block)
    torch.testing.assert_close(ours, ref)
    if not block_ids:
        return
    weights = torch.randn_like(ours)
    (ours * weights).sum().backward()
    ours_grad, rows.grad = rows.grad, None
    (ref * weights).sum().backward()
    torch.testing.assert_close(ours_grad, rows.grad)


def test_non_contiguous_rows_and_the_sortedness_check():
    rows, blocks, block = case([0, 1, 1, 2, 3, 4], S=8, D=8, C=4)
    strided = rows.detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_()  # [Q, C, D] column-major
    assert not strided.is_contiguous() and grouped_path_applies(strided, blocks)
    torch.testing.assert_close(block_products(strided, blocks, block, ids_sorted=True),
                               loop_products(strided, blocks, block))
    with pytest.raises(ValueError, match="ids_sorted=True but block_ids decrease"):
        block_products(rows, blocks, block.flip(0), ids_sorted=True)


def test_blocks_take_no_gradient():
    rows, blocks, block = case([1, 0, 2, 4, 3], S=4, D=8)
    assert grouped_path_applies(rows, blocks)
    blocks.requires_grad_()
    block_products(rows, blocks, block).sum().backward()
    assert blocks.grad is None and rows.grad is not None


def test_grouped_path_is_cpu_float32_only():
    rows, blocks, _ = case([0], S=8, D=8, G=1)
    assert grouped_path_applies(rows, blocks)
    assert not grouped_path_applies(rows, torch.cat([blocks, blocks]))  # fewer chunks than blocks
    assert not grouped_path_applies(rows.double(), blocks.double())
    assert not grouped_path_applies(rows.bfloat16(), blocks.bfloat16())
    assert not grouped_path_applies(rows.to("meta"), blocks.to("meta"))


def test_flops_are_counted_as_for_the_copy_and_bmm():
    """The FLOP counter gives the grouped product (forward and the rows' backward) the FLOPs of the bmm it replaces:
    2 * Q * C * S * D each way."""
    rows, blocks, block = case([3, 1, 3, 0, 4], S=8, D=12)
    assert grouped_path_applies(rows, blocks)
    with flop_counter() as counter:
        block_products(rows, blocks, block).sum().backward()
    assert counter.get_total_flops() == 2 * (2 * 5 * 3 * 8 * 12)
