from functools import partial

import pytest
import torch

from eclip.catalog.readers import read_catalog
from eclip.model import load_model
from eclip.train.recipe import load_recipe
from eclip.catalog.splits import split_listings
from eclip.train.trainer import train
from run_logs import assert_same_losses, assert_same_models, logged_losses
from recipes import tiny_recipe


_recipe = partial(tiny_recipe, base=[
    "train.batch_size=16", "train.epochs=2", "train.log_every=1", "train.checkpoint_every=3",
    "train.warmup_steps=2", "train.lr=0.01", "data.text.field_dropout={brand: 0.5}"])


@pytest.fixture
def data(tiny_catalog):
    listings = read_catalog(tiny_catalog).listings
    return split_listings(listings, load_recipe(None).data)


def test_resume_after_a_crash_reproduces_the_uninterrupted_run(tmp_path, tiny_model_dir, data,
                                                               crash_in_loss):
    full = tmp_path / "full"
    result = train(_recipe(full), load_model(tiny_model_dir), data.train, data.val,
                   log=lambda s: None)
    assert result.steps >= 6
    reference = logged_losses(full)

    crashed = tmp_path / "crashed"
    with crash_in_loss(5):  # after the checkpoint at step 3 and one more step
        train(_recipe(crashed), load_model(tiny_model_dir), data.train, data.val,
              log=lambda s: None)
    resumed = train(_recipe(crashed), load_model(tiny_model_dir), data.train,
                    data.val, resume=True, log=lambda s: None)
    assert resumed.steps == result.steps
    assert_same_losses(reference, logged_losses(crashed), atol=1e-6)
    assert_same_models(full / "model", crashed / "model", atol=1e-6)  # the saved models too


def test_locked_image_tower_is_unchanged_and_cached_features_give_the_same_step(tmp_path,
                                                                                tiny_model_dir,
                                                                                data):
    before = load_model(tiny_model_dir)
    out_a, out_b = tmp_path / "cached", tmp_path / "pixels"
    a = train(_recipe(out_a, lock_image="true", max_steps=2), load_model(tiny_model_dir),
              data.train, log=lambda s: None)
    b = train(_recipe(out_b, lock_image="true", max_steps=2, cache_locked_features="false"),
              load_model(tiny_model_dir), data.train, log=lambda s: None)
    for key, value in before.image_tower.state_dict().items():
        assert torch.equal(value, a.model.image_tower.state_dict()[key].cpu())
        assert torch.equal(value, b.model.image_tower.state_dict()[key].cpu())
    # serving the locked tower's features from the cache changes nothing in the numbers
    la, lb = logged_losses(out_a), logged_losses(out_b)
    assert la.keys() == lb.keys()
    for step in la:
        assert la[step] == pytest.approx(lb[step], rel=1e-5, abs=1e-5)  # cuDNN: 2e-5 at 4.9
    assert a.model.text_tower.state_dict().keys()
    changed = any(not torch.equal(v, a.model.text_tower.state_dict()[k].cpu())
                  for k, v in before.text_tower.state_dict().items())
    assert changed


def test_validation_metrics_are_logged_each_epoch(tmp_path, tiny_model_dir, data):
    out = tmp_path / "run"
    result = train(_recipe(out), load_model(tiny_model_dir), data.train, data.val,
                   log=lambda s: None)
    assert [h["epoch"] for h in result.history] == [0, 1]
    for h in result.history:
        for key in ("val/t2i_R@1", "val/t2i_R@10", "val/i2t_R@5"):
            assert 0.0 <= h[key] <= 1.0
        assert h["val/t2i_R@1"] <= h["val/t2i_R@5"] <= h["val/t2i_R@10"]
    assert (out / "model" / "config.json").is_file()
    assert (out / "checkpoints" / "last.pt").is_file()
    assert any((out / "tensorboard").iterdir())
    # the fused vector's weight is the one that ranks validation catalogs best, saved with the model
    from eclip.encode import choose_fusion_weight, embed_listings, title_composer

    saved = load_model(out / "model")
    emb = embed_listings(saved, data.val, title_composer(saved), progress=False)
    expected = choose_fusion_weight(emb.image, emb.text, [x.group_id for x in data.val])
    assert saved.config.fusion_weight == expected == result.model.config.fusion_weight


def test_without_tensorboard_a_run_logs_to_metrics_jsonl_and_names_the_extra(tmp_path, monkeypatch,
                                                                           tiny_model_dir, data):
    monkeypatch.setitem(__import__("sys").modules, "torch.utils.tensorboard", None)  # not installed
    lines: list[str] = []
    train(_recipe(tmp_path, max_steps=1), load_model(tiny_model_dir), data.train, log=lines.append)
    assert any("pip install 'eclip[tensorboard]'" in s for s in lines)
    assert (tmp_path / "metrics.jsonl").is_file() and not (tmp_path / "tensorboard").exists()

def test_top_blocks_of_a_locked_image_tower_train_from_cached_activations(tmp_path, tiny_model_dir,
                                                                          data):
    """The cached run (activations at the cut computed once) equals the run through the pixels."""
    from eclip.encode import ImageFeatureCache, eval_transform
    from eclip.tasks.views import listing_cache, model_views

    before = load_model(tiny_model_dir)
    out_a, out_b = tmp_path / "cached", tmp_path / "pixels"
    a = train(_recipe(out_a, lock_image="true", image_trainable_layers=2, image_lr_scale=0.5),
              load_model(tiny_model_dir), data.train, data.val, log=lambda s: None)
    b = train(_recipe(out_b, lock_image="true", image_trainable_layers=2, image_lr_scale=0.5,
                      cache_locked_features="false"),
              load_model(tiny_model_dir), data.train, data.val, log=lambda s: None)
    la, lb = logged_losses(out_a), logged_losses(out_b)
    assert la.keys() == lb.keys() and len(la) >= 4
    for step in la:
        assert la[step] == pytest.approx(lb[step], rel=1e-5, abs=1e-5)  # cuDNN: 2e-5 at 4.9
    assert [h["val/t2i_R@10"] for h in a.history] == pytest.approx(
        [h["val/t2i_R@10"] for h in b.history], abs=1e-6)
    top = before.image_tower.top_prefixes(1)
    for key, value in before.image_tower.state_dict().items():
        trained = a.model.image_tower.state_dict()[key]
        if key.startswith(top) and value.is_floating_point() and value.dim() == 2:
            assert not torch.equal(value, trained), key
        elif not key.startswith(top):
            assert torch.equal(value, trained), key

    # evaluation serves the trained model from activations cached with the untrained tower
    listings = data.test
    shared = listing_cache(before, listings, [], progress=False)  # the baseline's pooled features

    partial = ImageFeatureCache.compute(before, [p for x in listings for p in x.images],
                                        eval_transform(before), top_blocks=1, progress=False)
    caches = [shared, partial]
    assert listing_cache(a.model, listings, caches, progress=False) is partial
    assert not shared.serves(a.model) and partial.serves(before)
    fresh = listing_cache(a.model, listings, [], progress=False)
    via_cut = model_views("eclip", a.model, listings, partial, progress=False)
    via_pixels = model_views("eclip", a.model, listings, fresh, progress=False)
    for modality in ("image", "text", "both"):
        assert via_cut.task[modality] == pytest.approx(via_pixels.task[modality], abs=1e-5)
