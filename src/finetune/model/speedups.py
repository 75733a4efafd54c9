"""GPU options that pay off there, each optional and skipped on CPU with a note saying so.

- Liger kernels (axolotl's `liger_*` keys): fused RMSNorm, RoPE, SwiGLU/GeGLU, LayerNorm and (fused linear)
  cross-entropy, through transformers' own integration (`use_liger_kernel` + `liger_kernel_config`).
  Triton kernels: CUDA only; refused in one line when the liger-kernel package is missing.
  axolotl's `cut_cross_entropy` (CutCrossEntropyPlugin, Apple's kernel) is the same computation as Liger's
  fused linear cross-entropy — the loss from the hidden states and lm_head in chunks, never the full logits —
  so it runs as that kernel (one dependency, one code path), with a note saying so.
- torch.compile: on CPU it cost ~30 s per new batch shape for 0–6% steady-state gain (FACTS.md): skipped.
- Activation offloading (`gradient_checkpointing: offload`): with gradient checkpointing the tensors kept
  between layers are the layers' inputs (hidden states); `offload_activations` moves those to pinned host
  memory during the forward and back during the backward. On CPU host memory *is* device memory: skipped.
"""

from __future__ import annotations

import importlib.util
from contextlib import contextmanager

from finetune.config import Config
from finetune.errors import UserError

# axolotl key -> the arguments of liger_kernel's `_apply_liger_kernel_to_instance` it turns on (each model
# family takes the ones it has: swiglu for Llama/Mistral/Qwen, geglu for Gemma; the rest are filtered out).
LIGER_KEYS = {
    "liger_rope": ("rope",),
    "liger_rms_norm": ("rms_norm",),
    "liger_glu_activation": ("swiglu", "geglu"),
    "liger_layer_norm": ("layer_norm",),
    "liger_cross_entropy": ("cross_entropy",),
    "liger_fused_linear_cross_entropy": ("fused_linear_cross_entropy",),
}


CCE_KERNEL = "Liger's fused linear cross-entropy"


def liger_arguments(cfg: Config, on_gpu: bool, notes: list[str]) -> dict:
    """TrainingArguments for the liger_* keys and cut_cross_entropy: {} when none is set or on CPU (with a note)."""
    asked = [key for key in LIGER_KEYS if getattr(cfg, key)]
    cce = cfg.cut_cross_entropy_on
    if cce:
        asked.append("cut_cross_entropy")
    if not asked:
        return {}
    if not on_gpu:
        also = f"; cut_cross_entropy would run as {CCE_KERNEL}" if cce else ""
        notes.append(f"{', '.join(asked)}: skipped on CPU (Liger's Triton kernels need a CUDA GPU{also})")
        return {}
    if importlib.util.find_spec("liger_kernel") is None:
        raise UserError(f"{asked[0]}: needs the liger-kernel package (pip install liger-kernel)")
    if cce:
        notes.append(
            f"cut_cross_entropy: computed by {CCE_KERNEL} kernel (liger-kernel), not Apple's cut-cross-entropy "
            "package: the same loss, and the full logits are never stored"
        )
    # Every kernel is named explicitly: an unset key means off, as in axolotl (liger's own defaults differ).
    kernels = {arg: bool(getattr(cfg, key)) for key, args in LIGER_KEYS.items() for arg in args}
    kernels["fused_linear_cross_entropy"] |= cce
    return {"use_liger_kernel": True, "liger_kernel_config": kernels}


def compile_arguments(cfg: Config, on_gpu: bool, notes: list[str]) -> dict:
    """torch_compile (true or auto; + backend/mode) on a GPU; on CPU skipped (with a note when asked for by true)."""
    if not cfg.torch_compile:
        return {}
    if not on_gpu:
        if cfg.torch_compile is True:  # `auto` means "where it pays": silently not here
            notes.append(
                "torch_compile: skipped on CPU (measured: ~30 s of compiling per new batch shape, 0–6% faster after)"
            )
        return {}
    out = {"torch_compile": True}
    if cfg.torch_compile_backend:
        out["torch_compile_backend"] = cfg.torch_compile_backend
    if cfg.torch_compile_mode:
        out["torch_compile_mode"] = cfg.torch_compile_mode
    return out


def offload_applies(cfg: Config, on_gpu: bool | None = None) -> bool:
    """gradient_checkpointing: offload offloads on a GPU; on CPU it is plain checkpointing (adapter.py says so)."""
    if on_gpu is None:
        import torch

        on_gpu = torch.cuda.is_available()
    return cfg.gradient_checkpointing == "offload" and on_gpu


@contextmanager
def offload_activations(hidden_size: int, device_type: str = "cuda", pin_memory: bool = True, counter=None):
    """Within this block, hidden-state tensors ([..., hidden_size]) saved for backward on `device_type` go
    to host memory and come back when the backward needs them.

    With gradient checkpointing these are the per-layer inputs the checkpoints keep (torch saves them through
    saved-tensor hooks, so this catches them); the rest — each layer's internals — is recomputed anyway, and
    wide tensors such as logits stay on the device (copying them would cost more time than memory saved).
    The copies are asynchronous on the current stream, which orders them before any reuse of the memory.
    `counter` (a list) records the offloaded tensors' sizes, for tests.
    """
    import torch

    def pack(tensor):
        if tensor.device.type != device_type or tensor.dim() < 2 or tensor.shape[-1] != hidden_size:
            return tensor
        host = torch.empty(tensor.size(), dtype=tensor.dtype, pin_memory=pin_memory)
        host.copy_(tensor, non_blocking=pin_memory)
        if counter is not None:
            counter.append(tensor.numel())
        return (tensor.device, host)

    def unpack(packed):
        if isinstance(packed, tuple):
            device, host = packed
            return host.to(device, non_blocking=pin_memory)
        return packed

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        yield
