"""The model: the modified ResNet50 the suite teaches, and how much of it trains.

Recipe: torchvision ResNet50, drop its last two children (average pool and fc),
freeze everything except the last convolutional block ``layer4``, then add
adaptive average pooling, dropout and a new linear head. "Scratch" is the same
network with random weights and everything trainable.

How much trains is a mode (:data:`TRAINABLE`): ``head`` (feature extraction), ``layer4`` (the recipe),
``layer3``, ``all`` (full fine-tuning), ``scratch``. Each freezes a prefix of :data:`BLOCKS`;
:meth:`TransferResNet.unfreeze` moves that boundary during a run.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision.models import resnet50

from common.model.weights import WeightsInfo, load_backbone


# How much of the network trains. Each mode freezes a prefix of BLOCKS; the rest trains.
TRAINABLE = ("head", "layer4", "layer3", "all", "scratch")
TRAINABLE_HELP = ("head (feature extraction: only the new head) | layer4 (the suite's recipe) | layer3 (layer3 and "
                  "layer4) | all (fine-tune everything from the pretrained weights) | scratch (random weights, all trains)")
# The network's blocks in order. pool and dropout have no parameters and belong with the head.
BLOCKS = ("stem", "layer1", "layer2", "layer3", "layer4", "head")
_FROZEN = {"head": 5, "layer4": 4, "layer3": 3, "all": 0, "scratch": 0}  # mode -> how many leading blocks are frozen


class FrozenBlockError(RuntimeError):
    """A frozen block's parameters were set to require gradients by hand; the message says what to do instead."""


def check_trainable(mode: str) -> str:
    """``mode`` if it is one of :data:`TRAINABLE`, else a clear error."""
    if mode not in TRAINABLE:
        raise ValueError(f"trainable={mode!r} is not one of {', '.join(TRAINABLE)}: {TRAINABLE_HELP}")
    return mode


def trainable_blocks(mode: str) -> tuple[str, ...]:
    """The blocks that train in ``mode``, in network order (``"layer3"`` -> layer3, layer4, head)."""
    return BLOCKS[_FROZEN[check_trainable(mode)]:]


class TransferResNet(nn.Module):
    """ResNet50 trunk (stem..layer3), ``layer4``, pooling, dropout and a new head.

    The state-dict layout is the same in every mode (``trunk``, ``layer4``, ``head``); what differs is
    where the frozen part ends. ``trainable`` (one of :data:`TRAINABLE`) says which blocks train: the
    blocks before them (a prefix of :data:`BLOCKS`) are frozen: their parameters get no gradients, their
    BatchNorm layers stay in eval mode through ``model.train()``, and they run without autograd (no graph
    is recorded for them, so backward never enters them).

    :meth:`unfreeze` is the one way to move the boundary during a run. Setting ``requires_grad`` on a
    frozen block by hand raises :class:`FrozenBlockError` at the next forward: that block runs without
    autograd, so it would get no gradients and silently train nothing.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, dropout: float = 0.2, trainable: str = "layer4"):
        super().__init__()
        body = list(backbone.children())[:-2]  # drop avgpool and fc
        self.trunk = nn.Sequential(*body[:-1])  # conv1, bn1, relu, maxpool, layer1..layer3
        self.layer4 = body[-1]
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(2048, num_classes)
        self.frozen = _FROZEN[check_trainable(trainable)]  # how many leading BLOCKS are frozen
        for name, modules in self.blocks().items():
            for m in modules:
                m.requires_grad_(name in self.trainable_blocks)
        self.train()

    def blocks(self) -> dict[str, list[nn.Module]]:
        """The modules of each block in :data:`BLOCKS`, in network order."""
        t = self.trunk
        return dict(stem=list(t[:4]), layer1=[t[4]], layer2=[t[5]], layer3=[t[6]], layer4=[self.layer4],
                    head=[self.pool, self.dropout, self.classifier])

    @property
    def trainable_blocks(self) -> tuple[str, ...]:
        return BLOCKS[self.frozen:]

    def block_parameters(self) -> dict[str, list[nn.Parameter]]:
        """Each trainable block's parameters, in network order (frozen blocks are left out)."""
        blocks = self.blocks()
        return {name: [p for m in blocks[name] for p in m.parameters()] for name in self.trainable_blocks}

    def unfreeze(self, depth: str) -> list[str]:
        """Make every block from ``depth`` up trainable (``depth``: a block name from :data:`BLOCKS` or
        ``"all"``): gradients, BatchNorm back in training mode, autograd through them. Returns the blocks
        that became trainable (an optimizer made before does not hold them: ``common.train.run.enter_stage`` makes a
        new one)."""
        if depth not in BLOCKS and depth != "all":
            raise ValueError(f"unfreeze({depth!r}): depth is one of {', '.join(BLOCKS)} or all")
        frozen = 0 if depth == "all" else BLOCKS.index(depth)
        if frozen > self.frozen:
            raise ValueError(f"unfreeze({depth!r}) would freeze blocks that train ({', '.join(self.trainable_blocks)}): "
                             "unfreezing only moves the boundary towards the input.")
        new = list(BLOCKS[frozen:self.frozen])
        blocks = self.blocks()
        for name in new:
            for m in blocks[name]:
                m.requires_grad_(True)
        self.frozen = frozen
        self.train(self.training)  # the newly trainable BatchNorm layers follow the model's mode again
        return new

    def train(self, mode: bool = True) -> "TransferResNet":
        super().train(mode)
        for name in BLOCKS[:self.frozen]:
            for m in self.blocks()[name]:
                m.eval()  # frozen BatchNorm keeps its running statistics
        return self

    def _check_frozen(self) -> None:
        blocks = self.blocks()
        if any(p.requires_grad for name in BLOCKS[:self.frozen] for m in blocks[name] for p in m.parameters()):
            raise FrozenBlockError(
                f"A frozen block ({', '.join(BLOCKS[:self.frozen])}) has parameters that require gradients, but "
                "frozen blocks run without autograd: they would get no gradients and train nothing. Use "
                "model.unfreeze('<block>') instead (then make the optimizer again, as common.train.run.enter_stage does).")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.features(x)))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled 2048-d features the head reads (what ``common.train.features`` computes once in head mode)."""
        if self.trunk[0].weight.is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)  # match a channels_last model's layout
        self._check_frozen()
        grad = torch.is_grad_enabled()
        if self.frozen in (1, 2, 3):  # the boundary is inside the trunk: its frozen prefix runs without autograd
            cut = 3 + self.frozen  # stem is 4 modules, then one per layer
            with torch.set_grad_enabled(False):
                x = self.trunk[:cut](x)
            x = self.trunk[cut:](x)
        else:
            with torch.set_grad_enabled(grad and self.frozen < 4):
                x = self.trunk(x)
        with torch.set_grad_enabled(grad and self.frozen < 5):
            x = self.layer4(x)
        return torch.flatten(self.pool(x), 1)


def resolve_mode(init: str, trainable: str | None = None) -> str:
    """What trains in a run: ``init`` (how the weights start) is ``"transfer"``, and then ``trainable`` (default
    ``"layer4"``) says how much trains, or ``"scratch"``, where everything trains."""
    if init == "transfer":
        mode = check_trainable(trainable or "layer4")
        if mode == "scratch":
            raise ValueError("trainable='scratch' means random weights: use init='scratch' for that run.")
        return mode
    if init == "scratch":
        return "scratch"
    hint = f" (how much trains is trainable={init!r})" if init in TRAINABLE else ""
    raise ValueError(f"init is 'transfer' or 'scratch', not {init!r}{hint}")


def build_model(num_classes: int, init: str, weights: str = "auto", dropout: float = 0.2,
                weights_dir: Path | None = None, trainable: str | None = None) -> tuple[TransferResNet, WeightsInfo]:
    """``init="transfer"``: pretrained weights, frozen except layer4 (or as ``trainable`` says: head, layer4,
    layer3, all). ``init="scratch"``: random, all trainable."""
    mode = resolve_mode(init, trainable)
    if mode == "scratch":
        return TransferResNet(resnet50(weights=None), num_classes, dropout, trainable="all"), WeightsInfo("random")
    backbone, info = load_backbone(weights, weights_dir)
    return TransferResNet(backbone, num_classes, dropout, trainable=mode), info


def parameter_summary(model: nn.Module) -> dict:
    """Trainable and total parameter counts, for the model and per top-level block (``blocks``)."""
    def count(module: nn.Module) -> dict[str, int]:
        return dict(trainable=sum(p.numel() for p in module.parameters() if p.requires_grad),
                    total=sum(p.numel() for p in module.parameters()))

    return dict(count(model), blocks={name: count(child) for name, child in model.named_children()})


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


