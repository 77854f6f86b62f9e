"""Multi-stream accumulation equals one big batch; the chunked loss equals the dense loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from toy_model import ToyDualEncoder, grads, toy_batch, units_of

from eclip.errors import ConfigError
from eclip.train.accumulate import Embedder, MultiStreamStep, WholeBatchStep, concat_batches
from eclip.train.features import pixel_input
from eclip.train.loss import ContrastiveLoss, contrastive_loss, contrastive_loss_rows
from eclip.train.precision import Precision


@pytest.mark.parametrize("chunk_size", [None, 5])
def test_multi_stream_gradients_equal_one_big_batch_with_dropout(chunk_size):
    batch = toy_batch(12)
    units = units_of(batch, 3)

    # The reference: the same four micro-batches embedded in order *with* autograd (the dropout
    # masks a multi-stream step must reproduce), one loss over all of them, one backward pass.
    reference = ToyDualEncoder(dropout=0.3)
    torch.manual_seed(5)
    parts = [(reference.encode_image(u["pixel_values"]),
              reference.encode_text(u["input_ids"], u["attention_mask"])) for u in units]
    loss = contrastive_loss(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]),
                            reference.logit_scale(), batch["group"])
    loss.backward()
    rng_after = torch.get_rng_state()

    model = ToyDualEncoder(dropout=0.3)
    torch.manual_seed(5)
    value = MultiStreamStep()(Embedder(model, pixel_input), units,
                              ContrastiveLoss(chunk_size=chunk_size), Precision())
    assert value == pytest.approx(loss.item(), abs=1e-12)
    expected, got = grads(reference), grads(model)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-5, rtol=0, msg=name)
        assert got[name].abs().sum() > 0, name
    # the RNG continues where a single pass would leave it: the next step draws the same masks
    assert torch.equal(torch.get_rng_state(), rng_after)


def test_multi_stream_equals_whole_batch_step_without_dropout():
    batch = toy_batch(10)
    units = units_of(batch, 2)
    whole, streams = ToyDualEncoder(), ToyDualEncoder()
    a = WholeBatchStep()(Embedder(whole, pixel_input), units, ContrastiveLoss(), Precision())
    b = MultiStreamStep()(Embedder(streams, pixel_input), units, ContrastiveLoss(chunk_size=3),
                          Precision())
    assert a == pytest.approx(b, abs=1e-12)
    for name, grad in grads(whole).items():
        torch.testing.assert_close(grads(streams)[name], grad, atol=1e-10, rtol=0)


def test_a_non_finite_loss_leaves_no_gradients():
    model = ToyDualEncoder()
    with torch.no_grad():
        model.image[0].weight[0, 0] = float("nan")
    value = MultiStreamStep()(Embedder(model, pixel_input), units_of(toy_batch(8), 4), ContrastiveLoss(),
                              Precision())
    assert value != value  # NaN
    assert all(p.grad is None for p in model.parameters())


def test_concat_batches_pads_token_tensors():
    a = {"input_ids": torch.tensor([[5, 6]]), "attention_mask": torch.tensor([[1, 1]]),
         "group": torch.tensor([3])}
    b = {"input_ids": torch.tensor([[7, 8, 9]]), "attention_mask": torch.tensor([[1, 1, 1]]),
         "group": torch.tensor([4])}
    out = concat_batches([a, b], pad_token_id=1)
    assert out["input_ids"].tolist() == [[5, 6, 1], [7, 8, 9]]
    assert out["attention_mask"].tolist() == [[1, 1, 0], [1, 1, 1]]
    assert out["group"].tolist() == [3, 4]
    assert concat_batches([a]) is a


def _embeddings(rows, dim, seed, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(rows, dim, generator=gen, dtype=dtype), dim=1)
    text = F.normalize(torch.randn(rows, dim, generator=gen, dtype=dtype), dim=1)
    groups = torch.randint(-1, rows // 3, (rows,), generator=gen)
    return image, text, groups


@pytest.mark.parametrize("targets", ["catalog", "clip"])
@pytest.mark.parametrize("chunk_size", [1, 7, 64])
def test_chunked_loss_equals_dense_value_and_gradients(targets, chunk_size):
    image, text, groups = _embeddings(23, 8, seed=chunk_size)
    scale = torch.tensor(11.0, dtype=torch.float64)
    results = []
    for chunk in (None, chunk_size):
        i, t, s = (x.clone().requires_grad_() for x in (image, text, scale))
        loss = contrastive_loss(i, t, s, groups, targets, chunk_size=chunk)
        loss.backward()
        results.append((loss, i.grad, t.grad, s.grad))
    for dense, chunked in zip(*results):
        torch.testing.assert_close(chunked, dense, atol=1e-12, rtol=1e-10)


def test_chunked_loss_gradcheck_and_half_precision_inputs():
    image, text, groups = _embeddings(6, 4, seed=3)
    scale = torch.tensor(3.0, dtype=torch.float64)
    args = tuple(x.clone().requires_grad_() for x in (image, text, scale))
    assert torch.autograd.gradcheck(
        lambda i, t, s: contrastive_loss(i, t, s, groups, chunk_size=4), args)
    # bf16 embeddings: computed in float32, gradients handed back in bf16
    i16, t16 = image.to(torch.bfloat16).requires_grad_(), text.to(torch.bfloat16).requires_grad_()
    loss = contrastive_loss(i16, t16, 3.0, groups, chunk_size=4)
    assert loss.dtype == torch.float32
    loss.backward()
    assert i16.grad.dtype == torch.bfloat16
    dense = contrastive_loss(i16.float(), t16.float(), 3.0, groups)
    assert loss.item() == pytest.approx(dense.item(), abs=1e-5)


def test_row_blocks_partition_the_loss():
    image, text, groups = _embeddings(12, 5, seed=4)
    full = contrastive_loss(image, text, 8.0, groups)
    blocks = [contrastive_loss_rows(image[k:k + 4], text[k:k + 4], image, text, 8.0, groups[k:k + 4],
                                    groups, k, chunk_size=3 if k else None) for k in (0, 4, 8)]
    assert torch.stack(blocks).mean().item() == pytest.approx(full.item(), abs=1e-12)
    with pytest.raises(ValueError, match="do not lie"):
        contrastive_loss_rows(image[:4], text[:4], image, text, 8.0, groups[:4], groups, 10)
    with pytest.raises(ConfigError, match="chunk_size"):
        ContrastiveLoss(chunk_size=0)


def test_bf16_autocast_runs_the_towers_in_bf16_and_the_loss_in_float32():
    model = ToyDualEncoder(dtype=torch.float32)
    seen = []
    model.image[0].register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    batch = toy_batch(8, dtype=torch.float32)
    precision = Precision("bf16", "cpu")
    value = WholeBatchStep()(Embedder(model, pixel_input), [batch], ContrastiveLoss(), precision)
    assert seen == [torch.bfloat16]
    reference = ToyDualEncoder(dtype=torch.float32)
    expected = WholeBatchStep()(Embedder(reference, pixel_input), [batch], ContrastiveLoss(), Precision())
    assert value == pytest.approx(expected, abs=0.05)
    assert model.image[0].weight.grad.dtype == torch.float32
    with pytest.raises(ConfigError, match="precision"):
        Precision("fp8")
