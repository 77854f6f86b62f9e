"""Numerics of the catalog-aware contrastive loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from eclip.errors import ConfigError
from eclip.train.loss import ContrastiveLoss, catalog_targets, contrastive_loss, positive_mask


def _embeddings(batch: int, dim: int, seed: int, dtype: torch.dtype = torch.float32):
    gen = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(batch, dim, generator=gen, dtype=dtype), dim=1)
    text = F.normalize(torch.randn(batch, dim, generator=gen, dtype=dtype), dim=1)
    return image, text


def _clip_reference(image: torch.Tensor, text: torch.Tensor, scale: float) -> torch.Tensor:
    logits = scale * image @ text.T
    labels = torch.arange(image.shape[0])
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def test_positive_mask_and_targets():
    groups = torch.tensor([3, -1, 3, -1, 7, 3])
    mask = positive_mask(groups)
    expected = torch.tensor([
        [1, 0, 1, 0, 0, 1],
        [0, 1, 0, 0, 0, 0],
        [1, 0, 1, 0, 0, 1],
        [0, 0, 0, 1, 0, 0],
        [0, 0, 0, 0, 1, 0],
        [1, 0, 1, 0, 0, 1],
    ], dtype=torch.bool)
    assert torch.equal(mask, expected)

    soft = catalog_targets(groups)
    assert soft.dtype == torch.float32
    torch.testing.assert_close(soft.sum(dim=1), torch.ones(6))
    torch.testing.assert_close(soft, soft.T)
    assert soft[0, 2].item() == pytest.approx(1 / 3)
    assert soft[1, 1].item() == 1.0 and soft[1, 3].item() == 0.0


@pytest.mark.parametrize("groups", [torch.arange(8) * 5, torch.full((8,), -1)])
def test_equals_clip_when_no_catalog_is_shared(groups):
    image, text = _embeddings(8, 16, seed=0)
    expected = _clip_reference(image, text, 14.0)
    torch.testing.assert_close(contrastive_loss(image, text, 14.0, groups), expected)
    torch.testing.assert_close(contrastive_loss(image, text, 14.0, None), expected)


def test_clip_targets_ignore_groups():
    image, text = _embeddings(6, 8, seed=1)
    groups = torch.tensor([0, 0, 1, 1, 1, -1])
    expected = _clip_reference(image, text, 10.0)
    torch.testing.assert_close(contrastive_loss(image, text, 10.0, groups, targets="clip"), expected)
    catalog = contrastive_loss(image, text, 10.0, groups)
    assert not torch.allclose(catalog, expected)


def test_symmetric_in_image_and_text():
    image, text = _embeddings(7, 12, seed=2)
    groups = torch.tensor([1, 1, 2, -1, 2, 2, -1])
    forward = contrastive_loss(image, text, 20.0, groups)
    swapped = contrastive_loss(text, image, 20.0, groups)
    torch.testing.assert_close(forward, swapped)


def test_hand_computed_three_rows():
    # image = identity and scale 1 make logits == m; rows 0 and 1 share a catalog, row 2 has none.
    m = [[2.0, 1.0, -1.0],
         [0.5, 3.0, 0.0],
         [1.0, -2.0, 1.5]]
    image = torch.eye(3, dtype=torch.float64)
    text = torch.tensor(m, dtype=torch.float64).T

    def lse(values):
        return math.log(sum(math.exp(v) for v in values))

    rows = [m[i] for i in range(3)]
    cols = [[m[i][j] for i in range(3)] for j in range(3)]
    # targets: [[1/2, 1/2, 0], [1/2, 1/2, 0], [0, 0, 1]] in both directions
    image_to_text = (lse(rows[0]) - (m[0][0] + m[0][1]) / 2
                     + lse(rows[1]) - (m[1][0] + m[1][1]) / 2
                     + lse(rows[2]) - m[2][2]) / 3
    text_to_image = (lse(cols[0]) - (m[0][0] + m[1][0]) / 2
                     + lse(cols[1]) - (m[0][1] + m[1][1]) / 2
                     + lse(cols[2]) - m[2][2]) / 3
    expected = (image_to_text + text_to_image) / 2

    loss = contrastive_loss(image, text, 1.0, torch.tensor([4, 4, -1]))
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    # -1 rows stay apart: with groups [-1, -1, -1] the pair (0, 1) is not a positive
    assert contrastive_loss(image, text, 1.0, torch.tensor([-1, -1, -1])).item() != pytest.approx(expected)


def test_gradcheck_float64():
    image, text = _embeddings(5, 4, seed=3, dtype=torch.float64)
    image.requires_grad_(True)
    text.requires_grad_(True)
    scale = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    groups = torch.tensor([0, 1, 0, -1, 1])
    assert torch.autograd.gradcheck(
        lambda i, t, s: contrastive_loss(i, t, s, groups), (image, text, scale))


def test_gradient_matches_analytic_formula():
    batch = 6
    image, text = _embeddings(batch, 5, seed=4, dtype=torch.float64)
    image.requires_grad_(True)
    text.requires_grad_(True)
    scale = torch.tensor(7.0, dtype=torch.float64, requires_grad=True)
    groups = torch.tensor([2, -1, 2, 2, 9, 9])

    loss = contrastive_loss(image, text, scale, groups)
    loss.backward()

    with torch.no_grad():
        sims = image @ text.T
        logits = scale * sims
        soft = catalog_targets(groups, dtype=torch.float64)
        grad_logits = ((logits.softmax(dim=1) - soft) + (logits.T.softmax(dim=1) - soft.T).T) / (2 * batch)
        torch.testing.assert_close(image.grad, scale * grad_logits @ text)
        torch.testing.assert_close(text.grad, scale * grad_logits.T @ image)
        torch.testing.assert_close(scale.grad, (grad_logits * sims).sum())


def test_gradient_wrt_logits_directly():
    # image = identity makes the text embedding the transposed logit matrix.
    batch = 4
    logits = torch.randn(batch, batch, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    text = logits.T.clone().requires_grad_(True)
    groups = torch.tensor([1, 1, -1, -1])
    contrastive_loss(torch.eye(batch, dtype=torch.float64), text, 1.0, groups).backward()
    soft = catalog_targets(groups, dtype=torch.float64)
    expected = ((logits.softmax(dim=1) - soft) + (logits.T.softmax(dim=1) - soft.T).T) / (2 * batch)
    torch.testing.assert_close(text.grad.T, expected)


def test_invariant_to_batch_permutation():
    image, text = _embeddings(9, 8, seed=6)
    groups = torch.tensor([0, 1, 0, -1, 2, 1, 0, -1, 2])
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(7))
    original = contrastive_loss(image, text, 12.0, groups)
    permuted = contrastive_loss(image[perm], text[perm], 12.0, groups[perm])
    torch.testing.assert_close(original, permuted)


def test_shared_catalog_lower_loss_than_clip_targets():
    # Rows 0 and 1 list one product: each photo matches the other seller's title even better than
    # its own. CLIP calls that a mistake; catalog targets do not.
    logits = torch.tensor([[1.0, 3.0, 0.0, 0.0],
                           [3.0, 1.0, 0.0, 0.0],
                           [0.0, 0.0, 2.0, 0.0],
                           [0.0, 0.0, 0.0, 2.0]])
    image, text = torch.eye(4), logits.T
    groups = torch.tensor([5, 5, -1, -1])
    catalog = contrastive_loss(image, text, 4.0, groups)
    clip = contrastive_loss(image, text, 4.0, groups, targets="clip")
    assert catalog < clip - 1.0


def test_repeated_catalog_is_optimal_under_catalog_targets_only():
    # Listings of one catalog with identical embeddings (the same product sold by several sellers).
    gen = torch.Generator().manual_seed(8)
    bases = F.normalize(torch.randn(4, 64, generator=gen, dtype=torch.float64), dim=1)
    groups = torch.tensor([0, 0, 0, 1, 1, 2, 2, 3])
    # image = identity makes text.T the logit matrix, so the gradients below are dL/dlogits (transposed).
    logits = 50.0 * bases[groups] @ bases[groups].T
    image, text = torch.eye(8, dtype=torch.float64), logits.T.clone().requires_grad_(True)
    sizes = torch.tensor([3, 3, 3, 2, 2, 2, 2, 1], dtype=torch.float64)
    floor = sizes.log().mean().item()  # entropy of the catalog targets: the least the loss can be

    catalog = contrastive_loss(image, text, 1.0, groups)
    (catalog_grad,) = torch.autograd.grad(catalog, text)
    clip = contrastive_loss(image, text, 1.0, groups, targets="clip")
    (clip_grad,) = torch.autograd.grad(clip, text)

    assert catalog.item() == pytest.approx(floor, abs=1e-6)  # nothing left to learn
    assert clip.item() == pytest.approx(floor, abs=1e-6)  # CLIP's floor is 0: it still pays log(size)
    assert catalog_grad.abs().max() < 1e-6
    # CLIP lowers the loss by lowering the logit of two listings of one catalog: it pushes them apart.
    assert clip_grad[1, 0] > 0.01 and clip_grad[4, 3] > 0.01


def test_module_matches_function_and_keeps_mode():
    image, text = _embeddings(5, 6, seed=9)
    groups = torch.tensor([0, 0, 1, 1, -1])
    for mode in ("catalog", "clip"):
        module = ContrastiveLoss(mode)
        assert mode in repr(module)
        torch.testing.assert_close(module(image, text, 5.0, groups),
                                   contrastive_loss(image, text, 5.0, groups, targets=mode))


def test_half_precision_is_computed_in_float32():
    image, text = _embeddings(4, 8, seed=10)
    loss = contrastive_loss(image.bfloat16(), text.bfloat16(), 10.0, torch.tensor([0, 0, 1, 2]))
    assert loss.dtype == torch.float32
    reference = contrastive_loss(image, text, 10.0, torch.tensor([0, 0, 1, 2]))
    assert loss.item() == pytest.approx(reference.item(), abs=0.05)


def test_validation():
    image, text = _embeddings(3, 4, seed=11)
    with pytest.raises(ConfigError, match="catalog, clip"):
        contrastive_loss(image, text, 1.0, targets="siglip")
    with pytest.raises(ConfigError):
        ContrastiveLoss("nope")
    with pytest.raises(ValueError, match="same shape"):
        contrastive_loss(image, text[:2], 1.0)
    with pytest.raises(ValueError, match="2-D"):
        contrastive_loss(image[0], text[0], 1.0)
    with pytest.raises(ValueError, match="2 entries"):
        contrastive_loss(image, text, 1.0, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="integers"):
        contrastive_loss(image, text, 1.0, torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="scalar"):
        contrastive_loss(image, text, torch.ones(3), torch.tensor([0, 1, 2]))


def test_within_modality_terms_add_the_same_loss_inside_each_modality():
    gen = torch.Generator().manual_seed(3)
    image = F.normalize(torch.randn(6, 8, generator=gen, dtype=torch.float64), dim=1)
    text = F.normalize(torch.randn(6, 8, generator=gen, dtype=torch.float64), dim=1)
    groups = torch.tensor([0, 0, 1, 2, 2, 3])
    within = ContrastiveLoss("catalog", text_text=0.5, image_image=0.25)
    expected = (contrastive_loss(image, text, 5.0, groups)
                + 0.5 * contrastive_loss(text, text, 5.0, groups)
                + 0.25 * contrastive_loss(image, image, 5.0, groups))
    assert within(image, text, 5.0, groups).item() == pytest.approx(expected.item(), abs=1e-12)
    assert ContrastiveLoss("catalog")(image, text, 5.0, groups).item() == pytest.approx(
        contrastive_loss(image, text, 5.0, groups).item(), abs=1e-12)
    # a second title of the same product moved onto the first lowers the text-text loss
    closer = text.clone()
    closer[1] = text[0]
    assert contrastive_loss(closer, closer, 5.0, groups) < contrastive_loss(text, text, 5.0, groups)
    with pytest.raises(ConfigError):
        ContrastiveLoss(text_text=-1.0)
