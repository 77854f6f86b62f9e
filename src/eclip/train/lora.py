"""LoRA on either tower (``train.lora``), with peft's adapters.

``add_adapters`` puts a low-rank adapter beside each chosen linear layer of the chosen towers
(peft's ``inject_adapter_in_model``: the layer becomes ``base_layer`` + ``lora_A`` / ``lora_B``,
``y = W x + alpha / rank x B A x``, ``B`` starting at zero so the model is unchanged) and freezes
everything else: tower weights, projections, logit scale and bias. The loop then runs as before:
the same losses, DDP (only the adapters' gradients are averaged) and FSDP (the adapters are
sharded with the blocks that hold them), the checkpoint holds the adapters with the rest of the
state dict, so a resume is exact. ``merge_adapters`` folds each adapter into its layer
(``W + alpha / rank x B A``) and puts the plain layer back: the saved model directory has the
original parameter names and architecture, so evaluation, embedding, indexing, WiSE-FT
(``train.wise_alpha``, on the merged weights) and every export see an ordinary model.

Targets are module names as peft reads them (a module whose name is, or ends with ``.`` + , the
target), or groups resolved here per tower: ``attention`` (the query, key, value and output
projections of CLIP / SigLIP / ViT / BERT attention), ``mlp`` (the feed-forward layers), and
``all-linear``. Linear layers inside ``nn.MultiheadAttention`` (SigLIP's pooling head) are left
out: that module reads their weights directly, so an adapter there would be ignored.

peft is an optional dependency (``pip install 'eclip[lora]'``), imported only when adapters are
added or merged.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import nn

from eclip.errors import ConfigError
from eclip.train.recipe import LORA_GROUPS, LoraConfig

ADAPTER_MARK = "lora_"  # peft's adapter parameters: lora_A.<adapter>.weight, lora_B.<adapter>.weight
ATTENTION = ("q_proj", "k_proj", "v_proj", "out_proj", "o_proj", "query", "key", "value",
             "attention.output.dense")
MLP = ("fc1", "fc2", "intermediate.dense", "output.dense")


def require_peft():
    """The peft package, or a ConfigError saying how to install it."""
    try:
        import peft
    except ImportError:
        raise ConfigError("train.lora needs the peft package: pip install 'eclip[lora]' (or pip "
                          "install peft), or unset train.lora") from None
    return peft


def _ends_with(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


def _in_group(name: str, group: str) -> bool:
    if group == "all-linear":
        return True
    if group == "attention":
        return any(_ends_with(name, t) for t in ATTENTION)
    # mlp: BERT's feed-forward output is "output.dense", its attention output "attention.output.dense"
    return any(_ends_with(name, t) for t in MLP) and not _ends_with(name, "attention.output.dense")


def linear_layers(tower: nn.Module) -> list[str]:
    """Names (within ``tower``) of the linear layers an adapter can sit on: every ``nn.Linear``
    but those inside an ``nn.MultiheadAttention``."""
    inside = [name for name, m in tower.named_modules() if isinstance(m, nn.MultiheadAttention)]
    return [name for name, m in tower.named_modules()
            if isinstance(m, nn.Linear) and not any(name.startswith(p + ".") for p in inside)]


def resolve_targets(tower: nn.Module, targets: list[str], what: str) -> list[str]:
    """The layers of ``tower`` that ``targets`` names (groups or module names); a target that
    names no linear layer of the tower is a ConfigError listing what the tower has."""
    layers = linear_layers(tower)
    chosen: list[str] = []
    for target in targets:
        if target in LORA_GROUPS:
            found = [n for n in layers if _in_group(n, target)]
        else:
            found = [n for n in layers if _ends_with(n, target)]
        if not found:
            kinds = sorted({".".join(n.split(".")[-2:]) for n in layers})
            raise ConfigError(f"train.lora.targets: {target!r} names no linear layer of the {what} "
                              f"tower ({type(tower).__name__}); its layers end in: "
                              f"{', '.join(kinds[:20]) or 'none'}"
                              + ("" if target in LORA_GROUPS else
                                 f"; or use a group: {', '.join(LORA_GROUPS)}"))
        chosen += [n for n in found if n not in chosen]
    return chosen


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """The adapters' random start from ``seed`` alone: the same on every rank and in a resumed
    run, and the run's own random stream (dropout, augmentation) left where it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def add_adapters(model: nn.Module, cfg: LoraConfig | None, seed: int = 0,
                 log: Callable[[str], None] | None = None) -> int:
    """Adapters on ``cfg.targets`` of ``cfg.towers`` of ``model`` (in place), everything else
    frozen; ``log`` hears what trains. Returns the number of adapted layers (0 and nothing changed
    without ``cfg``)."""
    if cfg is None:
        return 0
    peft = require_peft()
    adapted = 0
    with _seeded(seed):
        for what in cfg.towers:
            tower = getattr(model, f"{what}_tower")
            names = resolve_targets(tower, cfg.targets, what)
            config = peft.LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                                     target_modules=names, bias="none")
            peft.inject_adapter_in_model(config, tower)
            adapted += len(names)
    trained = total = 0
    for name, param in model.named_parameters():
        param.requires_grad_(is_adapter(name))
        trained += param.numel() if is_adapter(name) else 0
        total += param.numel()
    if log is not None:
        log(f"LoRA: rank {cfg.rank} adapters on {adapted} layers of the {' and '.join(cfg.towers)} "
            f"tower(s) ({', '.join(cfg.targets)}); {trained:,} of {total:,} parameters train, "
            "the rest is frozen")
    return adapted


def is_adapter(name: str) -> bool:
    """Whether the parameter ``name`` is a LoRA adapter's."""
    return any(part.startswith(ADAPTER_MARK) for part in name.split("."))


def adapter_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The layers of ``model`` that hold adapters (peft's tuner layers), outermost first."""
    if not any(is_adapter(name) for name, _ in model.named_parameters()):
        return []  # no adapter: peft need not be installed
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [(n, m) for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]


def merge_adapters(model: nn.Module) -> int:
    """Fold every adapter of ``model`` into its layer and put the plain layer back (in place):
    the parameter names and architecture of the model before :func:`add_adapters`, the weights
    ``W + alpha / rank x B A``. Returns the number of layers merged (0: none had an adapter)."""
    layers = adapter_layers(model)
    for name, layer in layers:
        layer.merge()
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        base = layer.get_base_layer()
        setattr(parent, child, base)
    return len(layers)
