import numpy as np
import pytest
import torch

from hub import InvalidInputError, SpaceMismatchError, TokenEmbeddings


def make(lengths, dim=4, space="s", modality="m", seed=0):
    g = torch.Generator().manual_seed(seed)
    items = [torch.randn(n, dim, generator=g) for n in lengths]
    return items, TokenEmbeddings.from_list(items, modality=modality, space=space)


def test_padding_mask_and_item_access():
    items, te = make([3, 1, 5])
    assert te.tokens.shape == (3, 5, 4) and te.mask.dtype == torch.bool
    assert te.lengths.tolist() == [3, 1, 5]
    for i, x in enumerate(items):
        assert torch.equal(te[i], x)
    assert [t.shape[0] for t in te] == [3, 1, 5]
    assert te.tokens[1, 1:].abs().sum() == 0


def test_pooled_is_masked_mean_and_normalizes():
    items, te = make([2, 4])
    expected = torch.stack([x.mean(0) for x in items])
    assert torch.allclose(te.pooled(), expected, atol=1e-6)
    unit = te.pooled(normalize=True)
    assert torch.allclose(unit.norm(dim=-1), torch.ones(2), atol=1e-6)
    assert torch.allclose(te.pooled(method="cls"), torch.stack([x[0] for x in items]))
    assert torch.allclose(te.pooled(method="max"), torch.stack([x.max(0).values for x in items]))


def test_to_numpy_and_select():
    _, te = make([2, 3])
    tokens, mask = te.to_numpy()
    assert tokens.dtype == np.float32 and mask.dtype == bool and tokens.shape == (2, 3, 4)
    swapped = te.select([1, 0])
    assert torch.equal(swapped[0], te[1]) and swapped.indices == [1, 0]


def test_cat_pads_and_refuses_other_spaces():
    _, a = make([2], seed=1)
    _, b = make([5], seed=2)
    both = TokenEmbeddings.cat([a, b])
    assert both.tokens.shape == (2, 5, 4) and both.lengths.tolist() == [2, 5]
    _, c = make([2], space="other")
    with pytest.raises(SpaceMismatchError, match="different spaces"):
        TokenEmbeddings.cat([a, c])
    _, d = make([2], dim=8)
    with pytest.raises(SpaceMismatchError):
        TokenEmbeddings.cat([a, d])


def test_validation():
    with pytest.raises(InvalidInputError, match="batch, tokens, dim"):
        TokenEmbeddings(torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool), "m", "s")
    with pytest.raises(InvalidInputError, match="mask"):
        TokenEmbeddings(torch.zeros(2, 3, 4), torch.ones(2, 2, dtype=torch.bool), "m", "s")
    with pytest.raises(InvalidInputError, match="float"):
        TokenEmbeddings(torch.zeros(2, 3, 4, dtype=torch.long), torch.ones(2, 3, dtype=torch.bool), "m", "s")
