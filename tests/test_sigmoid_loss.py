"""Numerics of the catalog-aware sigmoid (SigLIP) loss: ``ContrastiveLoss(loss="sigmoid")``."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from toy_model import ToyDualEncoder, grads, toy_batch, units_of

from eclip.errors import ConfigError
from eclip.train.accumulate import Embedder, MultiStreamStep, WholeBatchStep
from eclip.train.features import pixel_input
from eclip.train.loss import ContrastiveLoss, contrastive_loss, contrastive_loss_rows
from eclip.train.precision import Precision


def _embeddings(batch: int, dim: int, seed: int, dtype: torch.dtype = torch.float64):
    gen = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(batch, dim, generator=gen, dtype=dtype), dim=1)
    text = F.normalize(torch.randn(batch, dim, generator=gen, dtype=dtype), dim=1)
    return image, text


def _siglip_reference(image, text, scale, bias):
    """The plain SigLIP loss as transformers' ``SiglipModel`` writes it: text rows against image
    columns, +1 on the diagonal and -1 elsewhere, summed over the columns, averaged over the rows."""
    logits_per_text = text @ image.T * scale + bias
    signs = 2 * torch.eye(image.shape[0], dtype=logits_per_text.dtype) - 1
    return -F.logsigmoid(signs * logits_per_text).sum(dim=-1).mean()


def _catalog_reference(image, text, scale, bias, groups):
    """The catalog-aware sigmoid loss from its definition, pair by pair."""
    batch = image.shape[0]
    total = 0.0
    for i in range(batch):
        for j in range(batch):
            positive = i == j or (groups[i] >= 0 and groups[i] == groups[j])
            logit = scale * (image[i] @ text[j]) + bias
            total = total - F.logsigmoid(logit if positive else -logit)
    return total / batch


def _scalars(scale: float, bias: float) -> list[torch.Tensor]:
    return [torch.tensor(scale, dtype=torch.float64), torch.tensor(bias, dtype=torch.float64)]


def _sigmoid(image, text, scale, bias, groups=None, targets="catalog", chunk_size=None):
    return contrastive_loss(image, text, scale, groups, targets, chunk_size=chunk_size, loss="sigmoid",
                            logit_bias=bias)


@pytest.mark.parametrize("groups", [torch.arange(8) * 5, torch.full((8,), -1), None])
@pytest.mark.parametrize("chunk_size", [None, 3])
def test_equals_plain_siglip_when_no_catalog_is_shared(groups, chunk_size):
    image, text = _embeddings(8, 16, seed=0)
    expected = _siglip_reference(image, text, 10.0, -3.0)
    got = _sigmoid(image, text, 10.0, -3.0, groups, chunk_size=chunk_size)
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)


def test_clip_targets_ignore_groups():
    image, text = _embeddings(6, 8, seed=1)
    groups = torch.tensor([0, 0, 1, 1, 1, -1])
    expected = _siglip_reference(image, text, 5.0, -1.0)
    torch.testing.assert_close(_sigmoid(image, text, 5.0, -1.0, groups, "clip"), expected)
    assert not torch.allclose(_sigmoid(image, text, 5.0, -1.0, groups), expected)


def test_hand_computed_three_rows():
    # image = identity and scale 1 make <img_i, txt_j> == m[i][j]; rows 0 and 1 share a catalog.
    m = [[2.0, 1.0, -1.0],
         [0.5, 3.0, 0.0],
         [1.0, -2.0, 1.5]]
    bias = -0.5
    image = torch.eye(3, dtype=torch.float64)
    text = torch.tensor(m, dtype=torch.float64).T

    def nll(label, logit):  # -log sigmoid(label * logit)
        return math.log1p(math.exp(-label * logit))

    labels = [[1, 1, -1],
              [1, 1, -1],
              [-1, -1, 1]]
    expected = sum(nll(labels[i][j], m[i][j] + bias) for i in range(3) for j in range(3)) / 3
    for chunk_size in (None, 1, 2):
        loss = _sigmoid(image, text, 1.0, bias, torch.tensor([4, 4, -1]), chunk_size=chunk_size)
        assert loss.item() == pytest.approx(expected, rel=1e-12)
    # -1 rows stay apart: with no catalogs the pairs (0, 1) and (1, 0) are negatives
    plain = sum(nll(1 if i == j else -1, m[i][j] + bias) for i in range(3) for j in range(3)) / 3
    assert _sigmoid(image, text, 1.0, bias, torch.tensor([-1, -1, -1])).item() == pytest.approx(
        plain, rel=1e-12)
    assert plain != pytest.approx(expected)


@pytest.mark.parametrize("chunk_size", [None, 1, 4, 64])
def test_catalog_loss_and_gradients_equal_the_definition(chunk_size):
    image, text = _embeddings(11, 6, seed=2)
    groups = torch.tensor([3, -1, 3, 5, 5, -1, 7, 3, 9, 9, 9])
    ref_args = [x.clone().requires_grad_() for x in (image, text, *_scalars(6.0, -2.0))]
    expected = _catalog_reference(*ref_args, groups)
    expected.backward()
    args = [x.detach().clone().requires_grad_() for x in ref_args]
    got = _sigmoid(*args, groups, chunk_size=chunk_size)
    got.backward()
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)
    for ref, arg, name in zip(ref_args, args, ("image", "text", "scale", "bias")):
        torch.testing.assert_close(arg.grad, ref.grad, atol=1e-12, rtol=0, msg=name)


def test_gradient_matches_analytic_formula():
    batch = 6
    image, text = _embeddings(batch, 5, seed=4)
    image.requires_grad_(True)
    text.requires_grad_(True)
    scale = torch.tensor(7.0, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-4.0, dtype=torch.float64, requires_grad=True)
    groups = torch.tensor([2, -1, 2, 2, 9, 9])
    _sigmoid(image, text, scale, bias, groups, chunk_size=4).backward()
    with torch.no_grad():
        sims = image @ text.T
        labels = torch.tensor([[1.0 if i == j or (groups[i] >= 0 and groups[i] == groups[j]) else -1.0
                                for j in range(batch)] for i in range(batch)], dtype=torch.float64)
        # d/dz -log sigmoid(y z) = -y sigmoid(-y z)
        grad_logits = -labels * torch.sigmoid(-labels * (scale * sims + bias)) / batch
        torch.testing.assert_close(image.grad, scale * grad_logits @ text)
        torch.testing.assert_close(text.grad, scale * grad_logits.T @ image)
        torch.testing.assert_close(scale.grad, (grad_logits * sims).sum())
        torch.testing.assert_close(bias.grad, grad_logits.sum())


@pytest.mark.parametrize("targets", ["catalog", "clip"])
@pytest.mark.parametrize("chunk_size", [1, 7, 64])
def test_chunked_loss_equals_dense_value_and_gradients(targets, chunk_size):
    gen = torch.Generator().manual_seed(chunk_size)
    image, text = _embeddings(23, 8, seed=chunk_size)
    groups = torch.randint(-1, 7, (23,), generator=gen)
    results = []
    for chunk in (None, chunk_size):
        args = [x.clone().requires_grad_() for x in (image, text, *_scalars(11.0, -6.0))]
        loss = _sigmoid(*args, groups, targets, chunk_size=chunk)
        loss.backward()
        results.append((loss, *(a.grad for a in args)))
    for dense, chunked in zip(*results):
        torch.testing.assert_close(chunked, dense, atol=1e-12, rtol=1e-10)


def test_gradcheck_float64_dense_and_chunked():
    image, text = _embeddings(5, 4, seed=3)
    groups = torch.tensor([0, 1, 0, -1, 1])
    args = tuple(x.clone().requires_grad_() for x in (image, text, *_scalars(3.0, -1.0)))
    for chunk_size in (None, 2):
        assert torch.autograd.gradcheck(
            lambda i, t, s, b: _sigmoid(i, t, s, b, groups, chunk_size=chunk_size), args)
    # a bias of shape [1] (as transformers' SiglipModel holds it) gets a gradient of that shape
    bias = torch.tensor([-1.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda b: _sigmoid(image, text, 3.0, b, groups, chunk_size=2), (bias,))
    _sigmoid(image, text, 3.0, bias, groups, chunk_size=2).backward()
    assert bias.grad.shape == (1,)


def test_symmetric_in_image_and_text_and_permutation_invariant():
    image, text = _embeddings(9, 8, seed=6)
    groups = torch.tensor([0, 1, 0, -1, 2, 1, 0, -1, 2])
    loss = _sigmoid(image, text, 12.0, -5.0, groups)
    torch.testing.assert_close(_sigmoid(text, image, 12.0, -5.0, groups), loss)
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(_sigmoid(image[perm], text[perm], 12.0, -5.0, groups[perm]), loss)


def test_row_blocks_partition_the_loss():
    image, text = _embeddings(12, 5, seed=4)
    groups = torch.tensor([0, 0, 1, -1, 2, 2, 2, -1, 3, 4, 4, 0])
    full = _sigmoid(image, text, 8.0, -2.0, groups)
    blocks = [contrastive_loss_rows(image[k:k + 4], text[k:k + 4], image, text, 8.0, groups[k:k + 4],
                                    groups, k, chunk_size=3 if k else None, loss="sigmoid",
                                    logit_bias=-2.0) for k in (0, 4, 8)]
    assert torch.stack(blocks).mean().item() == pytest.approx(full.item(), abs=1e-12)


def test_module_modes_within_modality_and_validation():
    image, text = _embeddings(6, 8, seed=3)
    groups = torch.tensor([0, 0, 1, 2, 2, 3])
    bias = torch.tensor(-2.0, dtype=torch.float64)
    module = ContrastiveLoss("catalog", loss="sigmoid", chunk_size=4)
    assert "sigmoid" in repr(module)
    torch.testing.assert_close(module(image, text, 5.0, groups, logit_bias=bias),
                               _sigmoid(image, text, 5.0, bias, groups))
    within = ContrastiveLoss("catalog", loss="sigmoid", text_text=0.5, image_image=0.25)
    expected = (_sigmoid(image, text, 5.0, bias, groups) + 0.5 * _sigmoid(text, text, 5.0, bias, groups)
                + 0.25 * _sigmoid(image, image, 5.0, bias, groups))
    assert within(image, text, 5.0, groups, bias).item() == pytest.approx(expected.item(), abs=1e-12)
    # without a bias the sigmoid loss has bias 0; the softmax loss ignores a bias (shift-invariant)
    torch.testing.assert_close(ContrastiveLoss(loss="sigmoid")(image, text, 5.0, groups),
                               _sigmoid(image, text, 5.0, 0.0, groups))
    softmax = ContrastiveLoss()
    assert torch.equal(softmax(image, text, 5.0, groups, logit_bias=bias),
                       contrastive_loss(image, text, 5.0, groups))
    with pytest.raises(ConfigError, match="softmax, sigmoid"):
        ContrastiveLoss(loss="hinge")
    with pytest.raises(ConfigError, match="softmax, sigmoid"):
        contrastive_loss(image, text, 5.0, groups, loss="hinge")
    with pytest.raises(ValueError, match="logit_bias must be a scalar"):
        _sigmoid(image, text, 5.0, torch.zeros(2), groups)


def test_half_precision_is_computed_in_float32():
    image, text = _embeddings(6, 8, seed=10, dtype=torch.float32)
    groups = torch.tensor([0, 0, 1, 2, -1, 2])
    i16, t16 = image.bfloat16().requires_grad_(), text.bfloat16().requires_grad_()
    bias = torch.tensor(-2.0, requires_grad=True)
    loss = _sigmoid(i16, t16, 10.0, bias, groups, chunk_size=4)
    assert loss.dtype == torch.float32
    loss.backward()
    assert i16.grad.dtype == torch.bfloat16 and bias.grad.dtype == torch.float32
    dense = _sigmoid(i16.float(), t16.float(), 10.0, -2.0, groups)
    assert loss.item() == pytest.approx(dense.item(), abs=1e-5)
    assert _sigmoid(i16, t16, 10.0, -2.0, groups).dtype == torch.float32


@pytest.mark.parametrize("chunk_size", [None, 5])
def test_multi_stream_gradients_equal_one_big_batch_with_dropout(chunk_size):
    batch = toy_batch(12)
    units = units_of(batch, 3)
    reference = ToyDualEncoder(dropout=0.3, logit_bias=-2.0)
    torch.manual_seed(5)
    parts = [(reference.encode_image(u["pixel_values"]),
              reference.encode_text(u["input_ids"], u["attention_mask"])) for u in units]
    loss = _sigmoid(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]),
                    reference.logit_scale(), reference.logit_bias, batch["group"])
    loss.backward()

    model = ToyDualEncoder(dropout=0.3, logit_bias=-2.0)
    torch.manual_seed(5)
    value = MultiStreamStep()(Embedder(model, pixel_input), units,
                              ContrastiveLoss(loss="sigmoid", chunk_size=chunk_size), Precision())
    assert value == pytest.approx(loss.item(), abs=1e-12)
    expected, got = grads(reference), grads(model)
    assert "logit_bias" in expected
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-6, rtol=0, msg=name)
        assert got[name].abs().sum() > 0, name


def test_multi_stream_equals_whole_batch_step():
    batch = toy_batch(10)
    units = units_of(batch, 2)
    whole, streams = ToyDualEncoder(logit_bias=-1.0), ToyDualEncoder(logit_bias=-1.0)
    a = WholeBatchStep()(Embedder(whole, pixel_input), units, ContrastiveLoss(loss="sigmoid"), Precision())
    b = MultiStreamStep()(Embedder(streams, pixel_input), units,
                          ContrastiveLoss(loss="sigmoid", chunk_size=3), Precision())
    assert a == pytest.approx(b, abs=1e-12)
    for name, grad in grads(whole).items():
        torch.testing.assert_close(grads(streams)[name], grad, atol=1e-10, rtol=0, msg=name)
    # the softmax loss leaves the bias without a gradient and everything else as before
    plain, with_bias = ToyDualEncoder(), ToyDualEncoder(logit_bias=-1.0)
    a = MultiStreamStep()(Embedder(plain, pixel_input), units, ContrastiveLoss(), Precision())
    b = MultiStreamStep()(Embedder(with_bias, pixel_input), units, ContrastiveLoss(), Precision())
    assert a == b and with_bias.logit_bias.grad is None
    got = dict(with_bias.named_parameters())
    for name, grad in grads(plain).items():
        assert torch.equal(got[name].grad, grad), name


def test_auto_loss_is_sigmoid_for_a_siglip_start_and_softmax_otherwise(tmp_path):
    from tiny_checkpoints import make_clip, make_siglip

    from eclip.model import load_model
    from eclip.train.recipe import TrainConfig
    from eclip.train.trainer import build_loss, loss_kind

    siglip = load_model(make_siglip(tmp_path / "siglip"))
    clip = load_model(make_clip(tmp_path / "clip"))
    auto = TrainConfig()
    assert auto.loss == "auto"
    assert loss_kind(auto, siglip) == "sigmoid" and loss_kind(auto, clip) == "softmax"
    assert build_loss(auto, siglip).loss == "sigmoid" and siglip.logit_bias.requires_grad
    assert build_loss(auto, clip).loss == "softmax" and not clip.logit_bias.requires_grad
    assert loss_kind(TrainConfig(loss="softmax"), siglip) == "softmax"
