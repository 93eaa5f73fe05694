"""Sharding the frozen reasoner over processes with FSDP2, for reasoners too large to hold whole on every
device during a gradient step. Chosen by an accelerate FSDP config (`configs/accelerate/fsdp.yaml`).

What is sharded: the frozen weights inside the decoder layers (the model's `_no_split_modules` classes, or
accelerate's `fsdp_transformer_layer_cls_to_wrap`), which hold nearly all of a transformer's parameters.
What stays whole on every process: everything trainable (LoRA, query vectors, projections, trigger head:
~1% of the model; the loop all-reduces their gradients as under DDP, since which of them get a gradient
varies from batch to batch) and the embeddings, final norm and LM head (MemGen calls them directly,
outside the model's forward, where FSDP would not gather them).

Keeping processes in step. FSDP gathers a layer's shards with a collective each time the layer runs (and
again in its backward), so all processes must run the layers equally often. A gradient step does: every
process runs the same passes over a batch of the same size (one weaver pass, present on every process
because `prompt_latents > 0` is required, and one reasoner pass). Sampling and evaluation do not (a
process stops decoding when its own rows finish), so they run inside `gathered(model)`, which gathers
every layer once and keeps it whole until the block ends. Memory: each process loads the whole reasoner
before sharding it, and holds it whole again while sampling or evaluating; during gradient steps it holds
1/world of the layers plus the layers in flight.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator

from accelerate.utils import FullyShardedDataParallelPlugin
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, fully_shard
from torch.distributed.tensor import DTensor
from transformers import PreTrainedModel

from latentmem.errors import ConfigError
from latentmem.memgen import LatentMemoryModel


def fsdp_requested() -> bool:
    """True when `accelerate launch` was given an FSDP config (it sets ACCELERATE_USE_FSDP)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def fsdp_settings() -> FullyShardedDataParallelPlugin:
    """accelerate's FSDP settings from the launch environment, restricted to what the sharding supports."""
    plugin = FullyShardedDataParallelPlugin()
    if plugin.fsdp_version != 2:
        raise ConfigError(
            f"fsdp_version: latentmem shards with FSDP2; set fsdp_version: 2 (got {plugin.fsdp_version})"
        )
    if isinstance(plugin.cpu_offload, CPUOffloadPolicy):
        raise ConfigError("fsdp_offload_params: parameter offloading is not supported; set it to false")
    if plugin.activation_checkpointing:
        raise ConfigError("fsdp_activation_checkpointing: not supported by the recipes; set it to false")
    return plugin


def _layer_classes(base: PreTrainedModel, names: list[str] | None) -> tuple[type, ...]:
    names = names or list(getattr(base, "_no_split_modules", None) or [])
    found = {type(m) for m in base.modules() if type(m).__name__ in names}
    if not found:
        raise ConfigError(
            f"fsdp_transformer_layer_cls_to_wrap: none of {names} is a module of this "
            f"{base.config.model_type} model; name its decoder layer class"
        )
    return tuple(found)


def shard_frozen(model: LatentMemoryModel, world: int, plugin: FullyShardedDataParallelPlugin) -> int:
    """Shard the frozen decoder-layer weights of the reasoner (and of a separate weaver LM) over `world`
    processes, in place. Must run after the recipe has chosen what trains, on a model whose config passed
    `loop.check_layout` (it needs prompt_latents > 0). Returns the number of sharded parameter tensors."""
    mesh = init_device_mesh(model.device.type, (world,))
    # LoRA adapters live inside the layers but are saved, trained and all-reduced whole
    adapters = {
        p
        for m in model.modules()
        if isinstance(m, BaseTunerLayer)
        for name, p in m.named_parameters()
        if not name.startswith("base_layer.")
    }
    bases = [model.reasoner] if model.shared else [model.reasoner, model.weaver_lm.get_base_model()]
    names = plugin.transformer_cls_names_to_wrap
    reshard = bool(plugin.reshard_after_forward)
    # each root below returns views (sliced logits); FSDP warns that in-place use of one would skip a
    # gather, but the roots hold no sharded weights, so there is none to skip
    warnings.filterwarnings("ignore", r"FSDP2-wrapped module \(FSDP\w+\) returned a view tensor")
    sharded = 0
    for base in bases:
        classes = _layer_classes(base, names)
        in_layers: set[nn.Parameter] = set()
        for layer in [m for m in base.modules() if isinstance(m, classes)]:
            params = set(layer.parameters())
            keep = {p for p in params if p in adapters or p.requires_grad}
            fully_shard(layer, mesh=mesh, reshard_after_forward=reshard, ignored_params=keep)
            layer._latentmem_reshard = reshard  # restored after `gathered`
            in_layers |= params
            sharded += len(params - keep)
        # the root: no parameters of its own to shard; it makes the layers one FSDP tree
        fully_shard(
            base,
            mesh=mesh,
            reshard_after_forward=False,
            ignored_params=set(base.parameters()) - in_layers | adapters,
        )
        base._latentmem_reshard = False
    return sharded


def _fsdp_modules(model: nn.Module) -> list[FSDPModule]:
    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def local_param_bytes(model: nn.Module) -> int:
    """Bytes of parameters this process holds (its shards of sharded weights, all of the others)."""
    total = 0
    for p in model.parameters():
        local = p.to_local() if isinstance(p, DTensor) else p
        total += local.numel() * local.element_size()
    return total


@contextlib.contextmanager
def gathered(model: nn.Module) -> Iterator[None]:
    """Every sharded layer of `model` gathered once and kept whole inside the block, so that processes may
    run different numbers of forwards (sampling, evaluation) without collectives. Re-entrant; a no-op for
    a model without sharded layers. Use it under `torch.no_grad()`."""
    modules = _fsdp_modules(model)
    if not modules or getattr(model, "_gathered", False):
        yield
        return
    model._gathered = True
    for m in modules:
        m.set_reshard_after_forward(False, recurse=False)
        m.unshard()
    try:
        yield
    finally:
        for m in modules:
            m.reshard()
            m.set_reshard_after_forward(m._latentmem_reshard, recurse=False)
        model._gathered = False
