"""Attention for flattened rows without a varlen kernel: sdpa run one sequence at a time.

batch_flattening concatenates micro_batch_size rows into one padding-free row (transformers'
DataCollatorWithFlattening). flash-attention's varlen kernel keeps the sequences apart on a GPU; elsewhere
transformers' sdpa path would compute the full T x T attention of the whole row under a block-diagonal mask,
costing more than the padding it saved. Here the row's linear layers (most of the compute) see only real tokens,
and attention runs per sequence, each with plain causal sdpa — the same arithmetic as the padded batch, so the
same loss and gradients (tests/model/test_sequence_attention.py), with no slot spent on padding.

The function is registered under `SEQUENCE_SDPA` through transformers' public AttentionInterface and
AttentionMaskInterface. It reads the sequence boundaries from `cu_seq_lens_q`, which the flattening collator
passes down with `return_flash_attn_kwargs=True`. Without them (padded evaluation batches, generation) it is
exactly sdpa. The name never reaches a saved config: transformers does not serialize the attention choice.
"""

from __future__ import annotations

from itertools import pairwise

SEQUENCE_SDPA = "finetune_sdpa_by_sequence"
_VARLEN_KEYS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")


def sdpa_by_sequence(module, query, key, value, attention_mask, **kwargs):
    """sdpa over each sequence of a flattened row (query/key/value: batch 1, heads, tokens, head_dim)."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    bounds = kwargs.get("cu_seq_lens_q")
    kwargs = {k: v for k, v in kwargs.items() if k not in _VARLEN_KEYS}
    if bounds is None or query.shape[0] != 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    window = kwargs.get("sliding_window")
    bounds = bounds.tolist()
    outputs = []
    for start, end in pairwise(bounds):
        mask = None  # plain causal attention within the sequence
        if window and end - start > window:  # Mistral-style sliding window: the last `window` tokens only
            mask = torch.ones(end - start, end - start, dtype=torch.bool, device=query.device)
            mask = mask.tril().triu(-(window - 1))[None, None]
        span = slice(start, end)
        out, _ = sdpa_attention_forward(
            module, query[:, :, span], key[:, :, span], value[:, :, span], mask, **kwargs
        )
        outputs.append(out)  # batch, tokens, heads, head_dim
    return torch.cat(outputs, dim=1), None


def use_sequence_attention(model) -> bool:
    """Switch an sdpa model (or the base inside a PEFT model) to `SEQUENCE_SDPA`.

    False where the model does not dispatch attention through AttentionInterface (transformers then cannot
    change it): the caller batches another way.
    """
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(SEQUENCE_SDPA, sdpa_by_sequence)
    AttentionMaskInterface.register(SEQUENCE_SDPA, sdpa_mask)  # padded batches: sdpa's own masks
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if base.config._attn_implementation != "sdpa":
        return False
    base.set_attn_implementation(SEQUENCE_SDPA)  # a model that cannot switch logs so and keeps sdpa
    return base.config._attn_implementation == SEQUENCE_SDPA
