"""Peak training memory by part, from shapes and dtypes.

The peak of a LoRA step comes at one of two moments, and the larger one counts:
- the loss: every layer's saved activations (or, with gradient checkpointing, each layer's input only) plus the
  logits. HF's causal-LM loss upcasts the logits to fp32 and log_softmax keeps its fp32 output; at the start of
  the backward pass nll_loss's gradient and log_softmax's gradient join it: three fp32 copies of
  tokens x vocab (Liger's fused linear cross-entropy computes the loss in chunks and keeps none);
- a layer's backward: with checkpointing, one layer's activations recomputed, plus its gradient buffers.
Saved activations per token and layer follow what autograd keeps for a frozen base with LoRA (a frozen linear
layer keeps only its weight; LoRA's A keeps its input; SiLU, the gate product and sdpa keep their inputs and
output; RMSNorm keeps its fp32 input). Under autocast each LoRA input is its own bf16 copy (peft casts the
input to the adapter's fp32, autocast casts it back), and k-bit training holds the residual stream in fp32.
With lora_dropout each adapter keeps its own dropped input and what dropout needs for its backward (CUDA's fused
kernel: a bool mask; CPU: the scaled noise, in the adapter's fp32). Eager attention keeps the fp32 softmax
probabilities, batch x heads x T x T (and their compute-dtype copy under autocast), where sdpa keeps only a
logsumexp. tests/plan/test_plan.py and tests/plan/test_plan_edges.py (dropout, eager) hold this against autograd's own
count on CPU (saved_tensors_hooks), tests/plan/test_plan.py against the H100 peaks in BENCHMARKS.md;
benchmarks/plan_accuracy.py against measured peak RSS.
"""

from __future__ import annotations

import dataclasses

from finetune.plan.setting import Setting, adapted
from finetune.plan.shapes import Shape


def layer_bytes_per_token(shape: Shape, s: Setting, names: set[str]) -> float:
    """Bytes one decoder layer saves for its backward pass, per token (names: the leaf names LoRA wraps)."""
    d, f, q, kv = shape.hidden, shape.intermediate, shape.q_width, shape.kv_width
    out = s.res  # dtype of the norms' outputs and the k-bit layers' outputs (bnb returns the input's dtype)
    base_out = s.ab if s.autocast and not s.kbit else out  # q/k/v, gate/up outputs
    norm = (s.res if s.liger_norm else 4) * d  # RMSNorm keeps its input in fp32 (Liger's: in its own dtype)

    def lora_inputs(leaves: tuple[str, ...], width: int, x_bytes: int) -> float:
        wrapped = [leaf for leaf in leaves if leaf in names]
        if not wrapped:
            return 0
        if s.dropout:  # A's input (autocast's copy, else dropout's fp32 output) + the mask or the noise
            return len(wrapped) * ((s.ab if s.autocast else 4) + (1 if s.on_gpu else 4)) * width
        if s.autocast and (x_bytes != s.ab or not s.kbit):
            return len(wrapped) * s.ab * width  # one autocast copy per adapter
        return x_bytes * width  # the input itself, shared

    sdpa = s.ab if s.autocast else base_out
    if s.eager:  # q and k, v repeated to every head; the fp32 probabilities (+ their autocast copy)
        probs = (4 + (s.ab if sdpa != 4 else 0)) * shape.heads * s.length
        attention = sdpa * 3 * q + probs
    else:
        attention = sdpa * (2 * q + 2 * kv) + 4 * shape.heads  # q, k, v and the output (+ logsumexp)
    # o_proj's input is sdpa's output (already counted) unless each adapter makes its own copy; eager
    # attention's output is kept by o_proj's adapter alone
    o_copies = s.autocast and (sdpa != s.ab or not s.kbit)
    o_in = lora_inputs(("o_proj",), q, sdpa) if o_copies or s.dropout or s.eager else 0
    mlp = (2 if s.liger_glu else 3) * base_out * f  # gate (SiLU's input), SiLU's output, up
    return (
        2 * norm
        + lora_inputs(("q_proj", "k_proj", "v_proj"), d, out)
        + attention
        + o_in
        + lora_inputs(("gate_proj", "up_proj"), d, out)
        + mlp
        + lora_inputs(("down_proj",), f, base_out)
    )


def logits_bytes(shape: Shape, s: Setting) -> float:
    """The loss moment's extra: three fp32 tokens x vocab tensors, and under autocast a compute-dtype copy of a
    head held in fp32 (k-bit training); Liger's fused loss: one chunk of logits and the input gradient."""
    tokens, vocab = s.tokens, shape.vocab
    if not s.lm_head:
        return 0.0
    head_copy = shape.vocab * shape.hidden * s.ab if s.autocast and s.kbit else 0
    if s.fused_loss:
        chunk = _pow2(-(-tokens // max(1, -(-vocab // shape.hidden))))
        return 3 * 4 * chunk * vocab + tokens * shape.hidden * 4 + head_copy
    return 3 * 4 * tokens * vocab + head_copy


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def activation_parts(cfg, shape: Shape, s: Setting) -> dict[str, float]:
    """activations (kept through the step), and the two moments: logits_and_loss, layer_backward (bytes)."""
    names = {lin.leaf for lin in adapted(cfg, shape)}
    per_layer = layer_bytes_per_token(shape, s, names) * s.tokens
    grads = 2 * 4 * shape.intermediate * s.tokens  # a layer's backward: two fp32 intermediate-sized gradients
    if s.eager:  # ... or the gradients of the probabilities and of the scores, batch x heads x T x T
        grads = max(grads, 2 * 4 * shape.heads * s.length * s.tokens)
    final_norm = 4 * shape.hidden * s.tokens
    if s.checkpointing:
        kept = s.res * shape.hidden * s.tokens * shape.layers + final_norm  # each layer's input
        layer = per_layer + grads
    else:
        kept = per_layer * shape.layers + final_norm
        layer = grads
    return {"activations": kept, "logits_and_loss": logits_bytes(shape, s), "layer_backward": layer}


def step_traffic_bytes(cfg, shape: Shape, s: Setting) -> float:
    """What a training step writes and frees: every layer's activations and the logits, once more for the
    recomputed forward with gradient checkpointing. Drives the CPU step's memory-bound time (speed.cpu_step)
    and what the fast heap keeps (estimate: fast_heap_kept)."""
    kept = activation_parts(cfg, shape, dataclasses.replace(s, checkpointing=False))
    return (kept["activations"] + kept["logits_and_loss"]) * (4 / 3 if s.checkpointing else 1)
