"""Generation helpers shared by `finetune generate`, `finetune eval`, merge's check and the training-time
generation metrics: one adapter loader and one batched greedy decoder, so every place that answers a prompt
answers it the same way (what stops an answer: data/answer_format.py).
"""

from __future__ import annotations

from finetune.model import unfrozen


def attach_adapter(base, tokenizer, adapter_dir):
    """base + the run's adapter (peft); embeddings grown first when training added tokens. Shared with
    `finetune generate` / `finetune eval`, so they load exactly what merge folds in."""
    from peft import PeftModel

    if len(tokenizer) > base.get_input_embeddings().num_embeddings:
        base.resize_token_embeddings(len(tokenizer))
    unfrozen.apply_to_base(base, adapter_dir)  # base weights trained beside the adapter (unfrozen_parameters)
    return PeftModel.from_pretrained(base, adapter_dir)


def generate_batch(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, batch_size: int,
                   stop: list[int], advance=None) -> list[str]:  # fmt: skip
    """Greedy answers to token prompts, `batch_size` at a time, left-padded (longest first: similar lengths
    share a batch and memory peaks on the first one). Batched greedy equals one-at-a-time greedy."""
    import torch
    from transformers import GenerationConfig
    from transformers.integrations import is_deepspeed_zero3_enabled

    # under ZeRO-3 (generation during training) every rank must run the same number of forwards
    synced = is_deepspeed_zero3_enabled() and torch.distributed.is_initialized()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop[0]
    config = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stop, pad_token_id=pad
    )
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    answers = [""] * len(prompts)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = tokenizer.pad(
            {"input_ids": [prompts[i] for i in chunk]}, padding_side="left", return_tensors="pt"
        )
        width = batch["input_ids"].shape[1]
        with torch.no_grad():
            out = model.generate(
                input_ids=batch["input_ids"].to(model.device),
                attention_mask=batch["attention_mask"].to(model.device),
                generation_config=config,
                synced_gpus=synced,
            )
        for i, new in zip(chunk, out[:, width:].tolist(), strict=True):
            answers[i] = decode_answer(tokenizer, new, stop)
        if advance:
            advance(len(chunk))
    return answers


def decode_answer(tokenizer, new_ids: list[int], stop: list[int]) -> str:
    """The text of generated ids up to the first stop token (which is not shown)."""
    cut = next((i for i, t in enumerate(new_ids) if t in stop), len(new_ids))
    return tokenizer.decode(new_ids[:cut], skip_special_tokens=True).strip()
