"""Layer groups of a tower, bottom up (embeddings, blocks, head): what locking and layer-wise
learning rates count in, for any ``nn.Module`` whose submodules are registered in forward order."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from eclip.errors import ConfigError


@dataclass(frozen=True)
class LayerGroup:
    """One layer group of a tower: ``name`` (``embeddings``, ``block 3``, ``head``) and the names
    of its parameters in the tower (as ``tower.named_parameters()`` gives them)."""

    name: str
    params: tuple[str, ...]


def block_list(module: nn.Module) -> nn.ModuleList | None:
    """The stack of blocks of ``module``: the ``nn.ModuleList`` holding the most parameters (the
    outermost one on a tie: ConvNeXt's stages, not the layers inside a stage), None if it has none."""
    best, best_size = None, 0
    for sub in module.modules():
        if isinstance(sub, nn.ModuleList) and len(sub):
            size = sum(p.numel() for p in sub.parameters())
            if size > best_size:
                best, best_size = sub, size
    return best


def find_layer_groups(module: nn.Module, blocks: nn.ModuleList | None = None) -> list[LayerGroup]:
    """The layer groups of ``module`` from the bottom up: ``embeddings`` (every parameter registered
    before the first block: patch/token embeddings, a pre-norm), ``block 0`` .. ``block N-1`` (the
    entries of ``blocks``, default :func:`block_list`), ``head`` (every parameter registered after
    the blocks: final norm, pooler, attention-pooling head). Groups without parameters are left out;
    a module without a stack of blocks is one group, ``all``.

    Relies on the registration order of the submodules following the forward pass, as it does in
    transformers models, EfficientNet and eclip's towers. The groups cover every parameter once.
    """
    names = [name for name, _ in module.named_parameters()]
    if blocks is None:
        blocks = block_list(module)
    prefix = next((f"{name}." for name, sub in module.named_modules() if sub is blocks), None)
    if blocks is None or prefix is None:
        return [LayerGroup("all", tuple(names))] if names else []
    below: list[str] = []
    above: list[str] = []
    in_block: dict[int, list[str]] = {}
    for name in names:
        if name.startswith(prefix):
            in_block.setdefault(int(name[len(prefix):].split(".", 1)[0]), []).append(name)
        elif in_block:
            above.append(name)
        else:
            below.append(name)
    groups = [LayerGroup("embeddings", tuple(below))]
    groups += [LayerGroup(f"block {i}", tuple(in_block.get(i, ()))) for i in range(len(blocks))]
    groups.append(LayerGroup("head", tuple(above)))
    return [group for group in groups if group.params]


def train_top_groups(tower: nn.Module, groups: int, what: str) -> None:
    """Only the top ``groups`` layer groups of ``tower`` get gradients, every group below none;
    ``what`` (``text`` / ``image``) names the tower in the ConfigError of a count out of range."""
    layers = tower.layer_groups()
    if not 1 <= groups <= len(layers):
        raise ConfigError(f"train.{what}_trainable_layers must be between 1 and {len(layers)} for the "
                          f"{type(tower).__name__} (its layer groups, bottom up: "
                          f"{', '.join(g.name for g in layers)}), got {groups}; lock the whole tower "
                          f"with train.lock_{what}=true")
    locked = {name for group in layers[:len(layers) - groups] for name in group.params}
    for name, param in tower.named_parameters():
        param.requires_grad_(name not in locked)

