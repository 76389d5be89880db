"""What one training step keeps in memory: counted from the model (any device), or measured on a GPU."""
from __future__ import annotations

import torch
from torch import nn

from common.model.resnet import trainable_parameters


def training_memory(model: nn.Module, images: torch.Tensor) -> dict[str, float]:
    """What one training step of ``model`` keeps in memory, in MiB (2**20 bytes), measured on ``images`` (one
    batch): all the weights, the gradients and Adam's two moments of the trainable ones, and the activations autograd saves
    for backward (counted as they are saved, each storage once, weights left out). Frozen blocks run without
    autograd, so they save nothing: that is where freezing saves memory, beside the optimizer state.
    Runs one forward in training mode on a copy, so ``model`` itself is untouched."""
    import copy

    model = copy.deepcopy(model).train()
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(images)
    mb = 2 ** -20
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return dict(weights=sum(p.numel() * p.element_size() for p in model.parameters()) * mb,
                gradients=trainable * mb, adam_state=2 * trainable * mb, activations=sum(saved.values()) * mb)


def measured_step_memory(model: nn.Module, images: torch.Tensor, device: torch.device, precision: str) -> float:
    """MiB that two real training steps of ``model`` (Adam, the run's autocast ``precision``) on ``images`` take at
    their peak on the CUDA ``device``, above what was allocated before: weights, gradients, Adam's state,
    activations, the batch and cuDNN's workspace, as torch's caching allocator handed them out
    (``torch.cuda.max_memory_allocated``). The second step is the one with Adam's state. ``model`` is untouched."""
    import copy

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    net = copy.deepcopy(model).to(device).train()
    batch = images.to(device)
    labels = torch.zeros(len(images), dtype=torch.long, device=device)
    optimizer = torch.optim.Adam(trainable_parameters(net))
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    for _ in range(2):
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = nn.functional.cross_entropy(net(batch), labels)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - before
    del net, batch, optimizer
    torch.cuda.empty_cache()
    return peak * 2 ** -20
