"""LoRA on either tower (``train.lora``, ``eclip.train.lora``): the merged model equals the adapted
one, only adapters receive gradients, the losses of both kinds run, a resumed run equals an
uninterrupted one, WiSE-FT applies to the merged weights, and DDP / FSDP on 2 gloo ranks give the
single process's gradients."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

import tiny_checkpoints as tc
from eclip.catalog.readers import read_catalog
from eclip.catalog.splits import split_listings
from eclip.errors import ConfigError
from eclip.model import DualEncoder, load_model
from eclip.model.merge import merge_state_dicts
from eclip.train.accumulate import Embedder, WholeBatchStep
from eclip.train.checkpoint import load_checkpoint
from eclip.train.features import pixel_input
from eclip.train.lora import add_adapters, is_adapter, linear_layers, merge_adapters
from eclip.train.loss import ContrastiveLoss
from eclip.train.optim import param_groups
from eclip.train.precision import Precision
from eclip.train.recipe import LoraConfig, load_recipe
from eclip.train.trainer import train
from ranks import run_ranks
from run_logs import assert_same_losses, assert_same_models, logged_losses

pytest.importorskip("peft")


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return tc.make_clip(tmp_path_factory.mktemp("clip") / "clip")


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory):
    return tc.make_siglip(tmp_path_factory.mktemp("siglip") / "siglip")


@pytest.fixture
def data(tiny_catalog):
    return split_listings(read_catalog(tiny_catalog).listings, load_recipe(None).data)


def _batch(model, rows: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
    """Photos (random pixels), titles and catalogs: rows 0 and 3, 1 and 4 share a catalog."""
    gen = torch.Generator().manual_seed(seed)
    size = model.config.image_size
    texts = [tc.TEXTS[i % len(tc.TEXTS)] for i in range(rows)]
    return {"pixel_values": torch.randn(rows, 3, size, size, generator=gen),
            **model.tokenize(texts), "group": torch.tensor([i % 3 for i in range(rows)])}


def _nudge_adapters(model, seed: int = 1) -> None:
    """B starts at zero (the adapted model is the start); random B makes the adapters count."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.2)


def _vectors(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    with torch.no_grad():
        return (model.encode_image(batch["pixel_values"]),
                model.encode_text(batch["input_ids"], batch["attention_mask"]))


@pytest.mark.parametrize("kind", ["clip", "siglip", "bert_vit"])
def test_the_merged_model_gives_the_adapted_models_vectors(kind, clip_dir, siglip_dir,
                                                           tiny_model_dir, tmp_path):
    source = {"clip": clip_dir, "siglip": siglip_dir, "bert_vit": tiny_model_dir}[kind]
    model = load_model(source)
    plain_keys = sorted(model.state_dict())
    batch = _batch(model)
    start = _vectors(model, batch)
    layers = add_adapters(model, LoraConfig(rank=4, targets=["attention", "mlp"]), seed=0)
    assert layers > 0 and any(is_adapter(n) for n in model.state_dict())
    unchanged = _vectors(model, batch)  # B = 0: the adapters change nothing yet
    for before, after in zip(start, unchanged):
        torch.testing.assert_close(after, before, atol=1e-6, rtol=0)
    _nudge_adapters(model)
    adapted = _vectors(model, batch)
    assert (adapted[0] - start[0]).abs().max() > 1e-2 and (adapted[1] - start[1]).abs().max() > 1e-2
    assert merge_adapters(model) == layers
    assert sorted(model.state_dict()) == plain_keys  # the architecture of the start, no adapters
    merged = _vectors(model, batch)
    for got, expected in zip(merged, adapted):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    model.save_pretrained(tmp_path / "merged")  # an ordinary model directory
    reloaded = _vectors(load_model(tmp_path / "merged"), batch)
    for got, expected in zip(reloaded, adapted):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("fmt", ["transformers", "open_clip"])
def test_a_merged_model_exports_like_any_other(clip_dir, tmp_path, fmt):
    """Every export sees a plain model: the merged adapters come back from the exported folder."""
    from eclip.model.export import export_model

    # a transformers CLIP for transformers, the open_clip fixture (an open_clip start) for open_clip
    start = clip_dir if fmt == "transformers" else Path(__file__).parent / "fixtures/open_clip/vit_clip"
    model = load_model(start)
    add_adapters(model, LoraConfig(rank=4, targets=["attention", "mlp"]))
    _nudge_adapters(model)
    batch = _batch(model)
    adapted = _vectors(model, batch)
    merge_adapters(model)
    reloaded = _vectors(load_model(export_model(model, tmp_path / fmt, format=fmt)), batch)
    for got, expected in zip(reloaded, adapted):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_the_attention_pooling_head_of_siglip_takes_no_adapter(siglip_dir):
    """nn.MultiheadAttention reads its out_proj's weight itself: an adapter there would be
    silently ignored, so the layers inside it are not offered."""
    model = load_model(siglip_dir)
    names = linear_layers(model.image_tower)
    assert not any(".head.attention." in n for n in names)
    assert any(n.endswith("head.mlp.fc1") for n in names)  # the head's MLP is an ordinary one


@pytest.mark.parametrize("loss", ["softmax", "sigmoid"])
def test_with_rank_r_only_the_adapters_receive_gradients(clip_dir, loss):
    model = load_model(clip_dir)
    rank = 3
    add_adapters(model, LoraConfig(rank=rank, targets=["q_proj", "v_proj", "fc2"],
                                   towers=["text", "image"]), seed=0)
    _nudge_adapters(model)
    WholeBatchStep()(Embedder(model, pixel_input), [_batch(model)],
                     ContrastiveLoss("catalog", loss=loss), Precision())
    expected = 0
    for name, module in model.named_modules():
        if hasattr(module, "lora_A"):
            base = module.get_base_layer()
            expected += rank * (base.in_features + base.out_features)
            assert module.lora_A["default"].weight.shape == (rank, base.in_features)
    got = 0
    for name, param in model.named_parameters():
        if is_adapter(name):
            assert param.requires_grad and param.grad is not None and param.grad.abs().sum() > 0, name
            got += param.numel()
        else:  # towers, projections, logit scale and bias: frozen, no gradient
            assert not param.requires_grad and param.grad is None, name
    # q and v of 2 layers and fc2 of 2 layers, in each of the two towers
    assert got == expected and expected > 0
    assert sum(hasattr(m, "lora_A") for m in model.modules()) == 12


def test_adapters_take_the_lr_of_the_block_they_sit_in(clip_dir):
    """Layer-wise decay (train.text_lr_decay) applies to adapters by their block: those of the
    top block get the tower's lr, those one block below lr x decay."""
    model = load_model(clip_dir)
    cfg = load_recipe(None, ["train.lr=0.01", "train.text_lr_decay=0.5",
                             "train.lora={targets: [q_proj], towers: [text]}"]).train
    add_adapters(model, cfg.lora)
    lrs = {id(p): g["lr"] for g in param_groups(model, cfg) for p in g["params"]}
    named = {n: lrs[id(p)] for n, p in model.named_parameters() if p.requires_grad}
    assert len(named) == 4 and all(is_adapter(n) for n in named)  # A and B in 2 blocks
    for name, lr in named.items():  # the head group (final norm) sits above the 2 blocks
        block = int(name.split("layers.")[1].split(".")[0])
        assert lr == pytest.approx(0.01 * 0.5 ** (2 - block)), name


def test_train_lora_is_checked_and_names_what_is_wrong(clip_dir):
    bad = {"train.lora.rank=0": "train.lora.rank must be >= 1",
           "train.lora.alpha=0": "train.lora.alpha must be > 0",
           "train.lora.dropout=1": r"train.lora.dropout must be in \[0, 1\)",
           "train.lora.towers=[text, audio]": "unknown tower 'audio'",
           "train.lora.targets=[]": "train.lora.targets must be a name or a list"}
    for override, message in bad.items():
        with pytest.raises(ConfigError, match=message):
            load_recipe(None, [override])
    with pytest.raises(ConfigError, match="a locked tower takes no adapters"):
        load_recipe(None, ["train.lora.towers=image", "train.lock_image=true"])
    with pytest.raises(ConfigError, match="text_trainable_layers and train.lora"):
        load_recipe(None, ["train.lora={}", "train.text_trainable_layers=1"])
    load_recipe(None, ["train.lora.towers=text", "train.lock_image=true"])  # the other tower: fine
    with pytest.raises(ConfigError, match=r"'wq' names no linear layer of the text tower .*q_proj"):
        add_adapters(load_model(clip_dir), LoraConfig(targets=["wq"]))


def test_without_peft_the_error_says_how_to_install_it(clip_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # import peft now fails
    with pytest.raises(ConfigError, match=r"pip install 'eclip\[lora\]'"):
        add_adapters(load_model(clip_dir), LoraConfig())
    model = load_model(clip_dir)
    assert merge_adapters(model) == 0  # a model without adapters needs no peft to be saved


def _recipe(out, *extra):
    return load_recipe(None, [
        f"train.output_dir={out}", "train.batch_size=16", "train.max_steps=4", "train.log_every=1",
        "train.checkpoint_every=2", "train.warmup_steps=2", "train.progress=false", "train.lr=0.01",
        "data.text.field_dropout={brand: 0.5}", "train.lora={rank: 4, dropout: 0.1}", *extra])


@pytest.mark.slow
def test_a_lora_run_resumes_exactly_and_saves_a_plain_model(tmp_path, tiny_model_dir, data,
                                                             crash_in_loss):
    full = tmp_path / "full"
    val = data.val[:12]
    result = train(_recipe(full), load_model(tiny_model_dir), data.train, val,
                   log=lambda s: None)
    assert result.steps == 4
    crashed = tmp_path / "crashed"
    with crash_in_loss(4):  # after the checkpoint of step 2 and one more step
        train(_recipe(crashed), load_model(tiny_model_dir), data.train, val,
              log=lambda s: None)
    assert any(is_adapter(k) for k in load_checkpoint(crashed / "checkpoints")["model"])
    train(_recipe(crashed), load_model(tiny_model_dir), data.train, val,
          resume=True, log=lambda s: None)
    assert_same_losses(logged_losses(full), logged_losses(crashed), atol=1e-6)
    assert_same_models(full / "model", crashed / "model", atol=1e-6)
    # the saved model is a plain one: the start's names; only the adapted layers moved
    start = load_model(tiny_model_dir).state_dict()
    saved = load_model(full / "model").state_dict()
    assert sorted(saved) == sorted(start)
    adapted = {n.split(".base_layer.")[0] for n in load_checkpoint(full / "checkpoints")["model"]
               if ".base_layer." in n}
    moved = {n for n in start if not torch.equal(start[n], saved[n])}
    assert moved and all(n.rsplit(".", 1)[0] in adapted for n in moved), sorted(moved)[:5]
    assert {n.rsplit(".", 1)[0] for n in moved if n.endswith(".weight")} == adapted


@pytest.mark.slow
def test_wise_alpha_merges_the_start_with_the_merged_adapters(tmp_path, tiny_model_dir, data):
    out = tmp_path / "run"
    cfg = ["train.max_steps=2", "train.wise_alpha=0.5", "train.loss=sigmoid"]
    train(_recipe(out, *cfg), load_model(tiny_model_dir), data.train,
          log=lambda s: None)
    start = load_model(tiny_model_dir)
    trained = load_model(tiny_model_dir)  # the checkpoint's adapted model, merged
    add_adapters(trained, _recipe(out).train.lora)
    trained.load_state_dict(load_checkpoint(out / "checkpoints")["model"])
    merge_adapters(trained)
    expected = merge_state_dicts(start.state_dict(), trained.state_dict(), 0.5)
    saved = load_model(out / "model").state_dict()
    for name, value in expected.items():
        torch.testing.assert_close(saved[name], value, atol=0, rtol=0, msg=name)
    # the sigmoid loss's bias is frozen with the rest
    assert saved["logit_bias"] == start.state_dict()["logit_bias"]
    assert any(not torch.equal(saved[n], start.state_dict()[n]) for n in saved)


# ----------------------------------------------------------------------- DDP / FSDP on 2 ranks
ROWS_PER_RANK = 3


def _adapted(clip_dir) -> DualEncoder:
    model = load_model(clip_dir)
    add_adapters(model, LoraConfig(rank=2, targets=["attention"]), seed=0)
    _nudge_adapters(model)
    return model


def _adapter_grads(model) -> dict[str, torch.Tensor]:
    out = {}
    for name, param in model.named_parameters():
        if param.grad is not None:
            grad = param.grad.full_tensor() if hasattr(param.grad, "full_tensor") else param.grad
            out[name] = grad.detach().clone()
    return out


def _worker(rank: int, world: int, port: int, clip_dir: str, out: str) -> None:
    from eclip.train.distributed import init_distributed, shutdown, wrap_data_parallel
    from eclip.train.fsdp import FullyShardedParallel

    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    env = init_distributed("cpu")
    results = {}
    for name in ("ddp", "fsdp"):
        model = _adapted(clip_dir)
        if rank:  # rank 0's adapters must win, as its weights do
            with torch.no_grad():
                for param in model.parameters():
                    param.add_(0.5)
        batch = _batch(model, ROWS_PER_RANK * world)
        mine = {k: v[rank * ROWS_PER_RANK:(rank + 1) * ROWS_PER_RANK] for k, v in batch.items()}
        if name == "ddp":
            embedder = wrap_data_parallel(Embedder(model, pixel_input), env)
            step = WholeBatchStep()
        else:
            strategy = FullyShardedParallel(env)
            embedder = strategy.wrap(model, Embedder(model, pixel_input))
            step = strategy.step(WholeBatchStep())
        loss = step(embedder, [mine], ContrastiveLoss("catalog"), Precision())
        results[name] = {"loss": loss, "grads": _adapter_grads(model)}
    torch.save(results, Path(out) / f"rank{rank}.pt")
    shutdown()


@pytest.mark.distributed
@pytest.mark.slow
def test_ddp_and_fsdp_on_two_ranks_give_the_single_process_adapter_gradients(clip_dir, tmp_path):
    world = 2
    run_ranks(_worker, world, str(clip_dir), str(tmp_path))
    model = _adapted(clip_dir)
    loss = WholeBatchStep()(Embedder(model, pixel_input), [_batch(model, ROWS_PER_RANK * world)],
                            ContrastiveLoss("catalog"), Precision())
    expected = _adapter_grads(model)
    assert expected and all(is_adapter(n) for n in expected)
    for rank in range(world):
        results = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        for name in ("ddp", "fsdp"):
            assert results[name]["loss"] == pytest.approx(loss, abs=1e-6), (name, rank)
            assert sorted(results[name]["grads"]) == sorted(expected), name
            for param, grad in expected.items():
                torch.testing.assert_close(results[name]["grads"][param], grad, atol=1e-5, rtol=0,
                                           msg=f"{name} rank {rank} {param}")
