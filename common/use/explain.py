"""What the model looks at: Grad-CAM heatmaps over ``layer4`` and a measured check of them against object boxes.

Grad-CAM comes from Captum (``LayerGradCam``), a maintained library, rather than hand-written hooks:
hooks that forget to detach, keep a stale gradient or read the wrong block are easy to write and hard to
see; Captum's implementation is tested against those mistakes and documents what it computes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn


def gradcam(model: nn.Module, images: torch.Tensor, target, layer: nn.Module | None = None,
            batch_size: int = 32) -> torch.Tensor:
    """Grad-CAM of ``target`` (class indices) at ``layer`` (default ``model.layer4``), ReLU'd, upsampled to
    the images' size and scaled to [0, 1] per image: (N, H, W), on the CPU.

    The model is put in eval mode (dropout off, BatchNorm fixed) and the forward runs with grad enabled,
    which Grad-CAM needs: a frozen trunk still runs without autograd, but ``layer4`` trains in both the
    transfer and the scratch model, so its output has gradients. Computed where the model is, ``batch_size``
    images at a time (a whole test split at once would not fit on a T4)."""
    from captum.attr import LayerAttribution, LayerGradCam

    model.eval()
    device = next(model.parameters()).device
    targets = torch.as_tensor(target).reshape(-1).expand(len(images)).tolist()  # one class, or one per image
    explainer = LayerGradCam(model, layer if layer is not None else model.layer4)
    parts = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size].to(device)
        with torch.enable_grad():
            maps = explainer.attribute(chunk, target=targets[start:start + batch_size], relu_attributions=True)
        parts.append(LayerAttribution.interpolate(maps.detach(), tuple(chunk.shape[-2:]), interpolate_mode="bilinear").cpu())
    maps = torch.cat(parts)[:, 0].clamp(min=0)
    peak = maps.flatten(1).amax(1).clamp(min=1e-12)
    return maps / peak[:, None, None]


def box_mass(heatmap, box) -> tuple[float, float]:
    """(share of the heatmap's mass inside ``box``, the box's share of the image's area).

    ``box`` is (x0, y0, x1, y1) in the heatmap's pixels, x1 and y1 exclusive. A heatmap that looks at the
    object puts more of its mass inside the box than the box's share of the image (uniform attention would
    put exactly that share there). An all-zero heatmap has no mass: its share is NaN."""
    heat = np.asarray(heatmap, dtype=np.float64)
    h, w = heat.shape
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    x0, x1, y0, y1 = max(0, x0), min(w, x1), max(0, y0), min(h, y1)
    area = max(0, x1 - x0) * max(0, y1 - y0) / (h * w)
    total = heat.sum()
    inside = heat[y0:y1, x0:x1].sum() if x1 > x0 and y1 > y0 else 0.0
    return (float(inside / total) if total > 0 else float("nan")), float(area)


def box_to_input(box, image_wh: tuple[int, int], image_size: int) -> tuple[float, ...]:
    """Map a box from the saved image's pixels through the evaluation transform (resize the short side to
    8/7 of ``image_size``, centre crop ``image_size``) to the model input's pixels, clipped to the crop."""
    w, h = image_wh
    short = image_size * 8 // 7
    # torchvision's Resize(int): the short side becomes `short`, the long side int(short * long / short_side)
    new_w, new_h = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    left, top = int(round((new_w - image_size) / 2.0)), int(round((new_h - image_size) / 2.0))
    x0, y0, x1, y1 = box
    sx, sy = new_w / w, new_h / h
    clip = lambda v: float(min(max(v, 0), image_size))  # noqa: E731
    return clip(x0 * sx - left), clip(y0 * sy - top), clip(x1 * sx - left), clip(y1 * sy - top)


@dataclass(frozen=True)
class BoxCheck:
    """One model's Grad-CAM heatmaps measured against the boxes where the objects were drawn (demo data)."""
    images: int
    mass_in_box: float  # the heatmaps' mean share of their mass inside the box
    box_area: float  # the boxes' mean share of the image
    on_target: float  # the share of images whose heatmap puts more inside the box than the box's area
    test_acc: float  # the model's test accuracy, from its record

    @property
    def ratio(self) -> float:
        """Mass in the box over the box's area: 1 is no better than heat spread evenly, above 1 on the object."""
        return self.mass_in_box / self.box_area


def box_check(model: nn.Module, images: torch.Tensor, targets, boxes: list, test_acc: float) -> BoxCheck:
    """Grad-CAM of ``targets`` on ``images`` (a run's test images), each heatmap measured against its box."""
    maps = gradcam(model, images, targets)
    mass, area = np.array([box_mass(m.numpy(), b) for m, b in zip(maps, boxes)]).T
    return BoxCheck(images=len(images), mass_in_box=float(np.nanmean(mass)), box_area=float(area.mean()),
                    on_target=float((mass > area).mean()), test_acc=float(test_acc))


def box_check_table(checks: dict[str, BoxCheck]) -> pd.DataFrame:
    """The checks side by side, one row per model, in words and percentages a learner reads."""
    return pd.DataFrame({name: {"test images": c.images, "heatmap in box": f"{c.mass_in_box:.0%}",
                                "box's share of image": f"{c.box_area:.0%}", "ratio (1: even spread)": round(c.ratio, 2),
                                "images looking more inside": f"{c.on_target:.0%}", "test accuracy": f"{c.test_acc:.0%}"}
                         for name, c in checks.items()}).T


def plot_gradcam(images: np.ndarray, columns: dict[str, torch.Tensor], titles: dict[str, list[str]],
                 boxes: list | None = None, caption: str = "", size: float = 2.0, title: str = "Grad-CAM at layer4"):
    """One row per image: the image (with its box), then one heatmap overlay per model (column).
    ``titles`` has a list per column name, and optionally ``"input"`` for the first column."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from common.results.plots import finish_figure

    n, cols = len(images), 1 + len(columns)
    fig, axes = plt.subplots(n, cols, figsize=(cols * size, n * (size + 0.3) + 0.9), squeeze=False)
    for i, img in enumerate(images):
        axes[i][0].imshow(img)
        axes[i][0].set_title(titles["input"][i] if "input" in titles else "input", fontsize=8)
        for j, (name, maps) in enumerate(columns.items(), start=1):
            axes[i][j].imshow(img)
            heat = axes[i][j].imshow(maps[i].numpy(), cmap="inferno", alpha=0.5, vmin=0, vmax=1)
            axes[i][j].set_title(f"{name}: {titles[name][i]}", fontsize=8)
        for ax in axes[i]:
            ax.axis("off")
            if boxes:
                x0, y0, x1, y1 = boxes[i]
                ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, color="white", lw=1))
    # The title in lines no wider than the grid; the colour bar under it, as wide as one column or two.
    finish_figure(fig, title.replace(": ", ":\n", 1) + ("\n(white box: where the object was drawn)" if boxes else ""), caption)
    fig.subplots_adjust(wspace=0.04, hspace=0.22, bottom=0.07)
    bar = fig.add_axes((0.3, 0.035, 0.4, 0.012))
    fig.colorbar(heat, cax=bar, orientation="horizontal", label="evidence for the predicted class (0 to 1)")
    return fig


def unnormalise(x: torch.Tensor, mean, std) -> np.ndarray:
    """Normalised image tensors (N, 3, H, W) back to displayable (N, H, W, 3) floats in [0, 1]."""
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    return (x * s + m).clamp(0, 1).permute(0, 2, 3, 1).numpy()


def describe_box_mass(checks: dict[str, BoxCheck], metas: dict) -> list[str]:
    """Sentences from each model's box check (``checks``: init -> :class:`BoxCheck`; ``metas``: init ->
    RunMeta), saying what the numbers show and what this run cannot show."""
    chance = 1 / len(next(iter(metas.values())).class_names)
    lines = []
    for init, check in checks.items():
        r = check.ratio
        where = ("clearly more on the object than an even spread would" if r > 1.5 else
                 "somewhat more on the object than an even spread would" if r > 1.1 else
                 "about as much on the object as an even spread would" if r >= 0.9 else
                 "less on the object than an even spread would")
        lines.append(f"{init} (weights: {metas[init].weights_source}, test accuracy {check.test_acc:.0%}, chance "
                     f"{chance:.0%}): {check.mass_in_box:.0%} of the heatmap lies in boxes covering {check.box_area:.0%} "
                     f"of the image (ratio {r:.2f}), so it puts {where}.")
    if "transfer" in metas and metas["transfer"].random_transfer:
        lines.append("The transfer run had no ImageNet weights (random weights were used): both models started from "
                     "random features, so this run cannot show what pretrained features change.")
    if any(check.test_acc < 2 * chance for check in checks.values()):
        lines.append(f"A model near chance (below {2 * chance:.0%}) has little to explain: its heatmaps describe a guess.")
    return lines
