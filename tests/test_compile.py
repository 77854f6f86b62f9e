"""The compiled training step and what makes the plain one lean (issue 15): padding trimmed before
the text tower, the dense loss without a targets matrix, ``train.compile``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from eclip.errors import ConfigError
from eclip.model import DualEncoder, DualEncoderConfig, train_tokenizer
from eclip.model.dual_encoder import trim_padding
from eclip.train.accumulate import Embedder, WholeBatchStep
from eclip.train.features import pixel_input
from eclip.train.loss import ContrastiveLoss, contrastive_loss_rows, positive_mask
from eclip.train.precision import Precision
from eclip.train.recipe import TrainConfig
from eclip.train.trainer import apply_memory_options, compile_wanted

CONTEXT = 24


def _model(text_padding: str = "longest", seed: int = 0) -> DualEncoder:
    torch.manual_seed(seed)
    text = {"model_type": "bert", "vocab_size": 64, "hidden_size": 16, "num_hidden_layers": 1,
            "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": CONTEXT,
            "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    image = {"model_type": "vit", "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
             "intermediate_size": 32, "image_size": 16, "patch_size": 8}
    config = DualEncoderConfig(text_tower="scratch", text_hf_config=text, image_tower="vit",
                               image_hf_config=image, image_size=16, max_length=CONTEXT, embed_dim=8,
                               pretrained=False, text_padding=text_padding)
    tokenizer = train_tokenizer([f"word{i}" for i in range(30)], 60)
    return DualEncoder.build(config, tokenizer=tokenizer)


def _titles(rows: int, low: int, high: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids and mask of titles of ``low..high`` tokens padded with 0 to the context."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(low, high + 1, (rows, 1), generator=gen)
    mask = (torch.arange(CONTEXT).unsqueeze(0) < lengths).long()
    return torch.randint(1, 64, (rows, CONTEXT), generator=gen) * mask, mask


def test_trim_padding_drops_only_columns_padded_in_every_row():
    ids = torch.arange(1, 21).reshape(2, 10)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0, 0, 0, 0, 0], [1] * 9 + [0]])
    assert trim_padding(ids, mask)[0].shape == (2, 10)  # 9 used, rounded up to 16, capped at 10
    mask[1, 4:] = 0
    out_ids, out_mask = trim_padding(ids, mask, multiple=4)
    assert torch.equal(out_ids, ids[:, :4]) and torch.equal(out_mask, mask[:, :4])
    assert trim_padding(ids, mask, multiple=8)[0].shape == (2, 8)
    left = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1, 1, 1], [0] * 5 + [1] * 5])
    assert trim_padding(ids, left, multiple=1)[1].shape == (2, 10)  # left padding: nothing to drop
    empty = torch.zeros(2, 10, dtype=torch.long)
    assert trim_padding(ids, empty)[0].shape == (2, 8)  # at least one column, rounded up


def test_trimmed_text_features_equal_the_padded_ones():
    model = _model().eval()
    ids, mask = _titles(6, 3, 11)
    widths = []
    hook = model.text_tower.register_forward_pre_hook(lambda _, args: widths.append(args[0].shape[1]))
    with torch.no_grad():
        trimmed = model.encode_text(ids, mask)
        full = model.project_text(model.text_tower(ids, mask))  # the tower on all 24 columns
        alone = torch.cat([model.encode_text(ids[i:i + 1, :n], mask[i:i + 1, :n])
                           for i, n in enumerate(mask.sum(1).tolist())])
    hook.remove()
    assert widths[0] == 16 and widths[1] == CONTEXT  # 11 tokens at most, rounded up to 16
    torch.testing.assert_close(trimmed, full, rtol=0, atol=1e-6)
    torch.testing.assert_close(trimmed, alone, rtol=0, atol=1e-6)


def test_max_length_padding_is_never_trimmed():
    model = _model("max_length").eval()
    ids, mask = _titles(4, 2, 5)
    widths = []
    model.text_tower.register_forward_pre_hook(lambda _, args: widths.append(args[0].shape[1]))
    with torch.no_grad():
        model.encode_text(ids, mask)
    assert widths == [CONTEXT]


def test_trimmed_training_step_equals_the_padded_one():
    """Loss and every gradient of a step on titles padded to the context equal those of the same
    step with the padding columns gone."""
    ids, mask = _titles(8, 2, 9, seed=3)
    batch = {"pixel_values": torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(1)),
             "input_ids": ids, "attention_mask": mask, "group": torch.tensor([0, 0, 1, 2, 2, -1, 3, 3])}
    width = int(mask.sum(1).max())
    short = dict(batch, input_ids=ids[:, :width], attention_mask=mask[:, :width])
    results = []
    for units in ([batch], [short]):
        model = _model().train()
        loss = WholeBatchStep()(Embedder(model, pixel_input), units, ContrastiveLoss("catalog"),
                                Precision("fp32"))
        results.append((loss, {n: p.grad.clone() for n, p in model.named_parameters()
                               if p.grad is not None}))
    (padded, padded_grads), (trimmed, trimmed_grads) = results
    assert padded == pytest.approx(trimmed, rel=1e-6)
    assert padded_grads.keys() == trimmed_grads.keys()
    for name in padded_grads:
        torch.testing.assert_close(padded_grads[name], trimmed_grads[name], rtol=1e-5, atol=1e-6)


def _reference_rows(image_rows, text_rows, image_cols, text_cols, scale, row_groups, col_groups,
                    offset):
    """The soft cross-entropy of some rows with autograd and an explicit targets matrix."""
    positions = torch.arange(offset, offset + image_rows.shape[0])
    own = positions.unsqueeze(1) == torch.arange(image_cols.shape[0]).unsqueeze(0)
    same = (row_groups.unsqueeze(1) == col_groups.unsqueeze(0)) & (row_groups >= 0).unsqueeze(1)
    targets = (same | own).double()
    targets = targets / targets.sum(1, keepdim=True)

    def side(rows, cols):
        return -(targets * F.log_softmax(scale * rows @ cols.T, dim=1)).sum()

    return (side(image_rows, text_cols) + side(text_rows, image_cols)) / (2 * image_rows.shape[0])


@pytest.mark.parametrize("chunk", [None, 3])
def test_rows_loss_without_targets_matrix_equals_autograd_reference(chunk):
    """The targets' terms come from per-catalog sums; value and gradients equal the explicit
    targets matrix, for a slice of rows (local loss), negative ids and catalogs split across it."""
    gen = torch.Generator().manual_seed(7)
    groups = torch.tensor([4, -1, 4, 9, 2, 9, -1, 4, 2, 5])
    cols = [F.normalize(torch.randn(10, 6, generator=gen, dtype=torch.float64), dim=1)
            .requires_grad_() for _ in range(2)]
    scale = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    offset, rows = 3, 5
    inputs = (cols[0][offset:offset + rows], cols[1][offset:offset + rows], cols[0], cols[1])
    got = contrastive_loss_rows(*inputs, scale, groups[offset:offset + rows], groups, offset,
                                chunk_size=chunk)
    grads = torch.autograd.grad(got, [*cols, scale])
    want = _reference_rows(*inputs, scale, groups[offset:offset + rows], groups, offset)
    want_grads = torch.autograd.grad(want, [*cols, scale])
    torch.testing.assert_close(got, want)
    for g, w in zip(grads, want_grads):
        torch.testing.assert_close(g, w)
    assert positive_mask(groups)[0, 2]  # rows 0 and 2 share catalog 4: targets are not identity


def test_loss_under_no_grad_builds_no_gradients():
    image = F.normalize(torch.randn(6, 4), dim=1).requires_grad_()
    text = F.normalize(torch.randn(6, 4), dim=1).requires_grad_()
    with torch.no_grad():
        value = ContrastiveLoss("catalog")(image, text, 5.0, torch.tensor([0, 0, 1, 1, 2, -1]))
    assert value.grad_fn is None
    with_grad = ContrastiveLoss("catalog")(image, text, 5.0, torch.tensor([0, 0, 1, 1, 2, -1]))
    assert with_grad.grad_fn is not None and float(value) == pytest.approx(float(with_grad.detach()))


def test_compile_setting():
    assert TrainConfig().compile == "auto"
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not compile_wanted(TrainConfig(), cpu)
    assert compile_wanted(TrainConfig(), cuda)
    assert not compile_wanted(TrainConfig(parallel="fsdp"), cuda)
    assert compile_wanted(TrainConfig(compile=True), cpu)
    assert not compile_wanted(TrainConfig(compile=False), cuda)
    with pytest.raises(ConfigError, match="train.compile must be true, false or auto"):
        TrainConfig(compile="sometimes")


def test_towers_compile_without_graph_breaks():
    model = _model().train()
    ids, mask = _titles(4, 2, 9)
    text = torch._dynamo.explain(model.text_tower)(*trim_padding(ids, mask))
    image = torch._dynamo.explain(model.image_tower)(torch.randn(4, 3, 16, 16))
    assert (text.graph_count, text.graph_break_count) == (1, 0), text.break_reasons
    assert (image.graph_count, image.graph_break_count) == (1, 0), image.break_reasons


@pytest.mark.slow
def test_compiled_steps_equal_plain_steps():
    """Two optimizer steps with compiled towers (inductor) give the losses and gradients of the
    plain ones; the second step's titles are longer, so the text tower sees a new width."""
    torch._dynamo.reset()
    batches = []
    for seed, high in ((0, 6), (1, 13)):
        ids, mask = _titles(8, 2, high, seed=seed)
        pixels = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(seed))
        batches.append({"pixel_values": pixels, "input_ids": ids, "attention_mask": mask,
                        "group": torch.arange(8) // 2})
    results = []
    for compiled in (False, True):
        model = _model(seed=1).train()
        apply_memory_options(model, TrainConfig(compile=compiled), print)
        params = [p for p in model.parameters() if p.requires_grad]
        # SGD: weights move by the gradients themselves (Adam's first step is lr x sign(g), which
        # turns rounding noise on a zero gradient into a whole step)
        optimizer = torch.optim.SGD(params, lr=0.5)
        precision, embedder, step = Precision("fp32"), Embedder(model, pixel_input), WholeBatchStep()
        losses, grads = [], []
        for batch in batches:
            optimizer.zero_grad(set_to_none=True)
            losses.append(step(embedder, [batch], ContrastiveLoss("catalog"), precision))
            grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
            precision.step(optimizer, params, 1.0)
        results.append((losses, grads))
    (plain_losses, plain_grads), (compiled_losses, compiled_grads) = results
    assert compiled_losses == pytest.approx(plain_losses, rel=1e-5)
    assert plain_losses[0] != pytest.approx(plain_losses[1], rel=1e-3)  # the steps did something
    for plain, compiled in zip(plain_grads, compiled_grads):
        assert plain.keys() == compiled.keys()
        for name, grad in plain.items():
            torch.testing.assert_close(compiled[name], grad, rtol=1e-3, atol=1e-5, msg=name)
