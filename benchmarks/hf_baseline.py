"""The peer for train_throughput.py: a plain, hand-written HF Trainer + peft fine-tune with dynamic padding.

    python benchmarks/hf_baseline.py --model DIR --data a.jsonl b.jsonl --rows 150 20 --out result.json
    python benchmarks/hf_baseline.py ... --group-by-length        # the same, rows of similar length batched
    python benchmarks/hf_baseline.py --model DIR --data train.jsonl --rows 1000 --lora --format "{context}" \
        --lr 5e-4 --batch 16 --save-adapter DIR                    # real_learning.py's run: fp32 base + LoRA
    python benchmarks/hf_baseline.py ... --full --lr 1e-5 --save-model DIR   # real_full_finetune.py's: every weight

What a user writes from the transformers/peft docs: tokenize "[INST] {context} [/INST]" + target + EOS with
the prompt masked out of the labels, NF4 4-bit base with double quantization (or a plain fp32 base with
--lora), prepare_model_for_kbit_training, LoRA on every linear layer, DataCollatorForSeq2Seq padding each
batch to its longest row, the Trainer for one epoch (--full: no LoRA, every weight of the fp32 base trains).
Nothing from finetune is imported, so it measures the libraries alone. Writes real (non-pad) tokens/s, the
padding fraction, peak RSS and the logged losses (every --logging-steps) to --out as JSON.
"""

from __future__ import annotations

import argparse
import json
import resource
import time


def load_rows(paths: list[str], counts: list[int]) -> list[dict]:
    rows = []
    for path, n in zip(paths, counts, strict=True):
        with open(path) as f:
            rows += [json.loads(line) for _, line in zip(range(n), f, strict=False)]
    return rows


def tokenize(rows: list[dict], tokenizer, max_len: int, fmt: str = "[INST] {context} [/INST]") -> list[dict]:
    out = []
    for row in rows:
        prompt = tokenizer(fmt.format(context=row["context"]))["input_ids"]
        answer = tokenizer(row["target"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids, labels = prompt + answer, [-100] * len(prompt) + answer
        if len(ids) > max_len:
            continue  # too long: dropped, as finetune's default excess_length_strategy does
        out.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
    return out


class CountingCollator:
    """Dynamic padding (DataCollatorForSeq2Seq) that also counts real tokens and padded slots."""

    def __init__(self, tokenizer):
        from transformers import DataCollatorForSeq2Seq

        self.inner = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
        self.real = self.slots = 0

    def __call__(self, features):
        batch = self.inner(features)
        self.real += int(batch["attention_mask"].sum())
        self.slots += batch["input_ids"].numel()
        return batch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--data", nargs="+", required=True)
    p.add_argument("--rows", nargs="+", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--lora", action="store_true", help="fp32 base + LoRA instead of 4-bit QLoRA")
    p.add_argument("--gpu", action="store_true", help="bf16 and flash_attention_2 (a CUDA GPU)")
    p.add_argument("--group-by-length", action="store_true")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--format", default="[INST] {context} [/INST]", help="the prompt, {context} is the row's")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--lora-alpha", type=int, default=32)
    p.add_argument("--epochs", type=float, default=1)
    p.add_argument("--max-steps", type=int, default=-1)
    p.add_argument("--optim", default="adamw_torch")
    p.add_argument("--save-adapter", help="save the trained adapter here (PeftModel.save_pretrained)")
    p.add_argument("--full", action="store_true", help="full fine-tuning: fp32 base, no LoRA, every weight")
    p.add_argument("--save-model", help="--full: save the trained model here (Trainer.save_model)")
    p.add_argument("--logging-steps", type=int, default=10)
    a = p.parse_args()

    import datasets
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        BitsAndBytesConfig,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    tokenizer = AutoTokenizer.from_pretrained(a.model)
    train_set = datasets.Dataset.from_list(
        tokenize(load_rows(a.data, a.rows), tokenizer, a.seq_len, a.format)
    )
    dtype = torch.bfloat16 if a.gpu else torch.float32
    quant = None
    if not (a.lora or a.full):
        quant = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
    attn = "flash_attention_2" if a.gpu else "sdpa"
    model = AutoModelForCausalLM.from_pretrained(
        a.model, quantization_config=quant, dtype=dtype, attn_implementation=attn
    )
    if quant is not None:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    set_seed(a.seed)
    if not a.full:
        model = get_peft_model(
            model,
            LoraConfig(
                r=a.lora_r, lora_alpha=a.lora_alpha, target_modules="all-linear", task_type="CAUSAL_LM"
            ),
        )
    collator = CountingCollator(tokenizer)
    args = TrainingArguments(
        output_dir=a.out + ".trainer",
        per_device_train_batch_size=a.batch,
        num_train_epochs=a.epochs,
        max_steps=a.max_steps,
        learning_rate=a.lr,
        optim=a.optim,
        lr_scheduler_type="cosine",
        logging_steps=a.logging_steps,
        save_strategy="no",
        report_to="none",
        seed=a.seed,
        include_num_input_tokens_seen="non_padding",
        train_sampling_strategy="group_by_length" if a.group_by_length else "random",
        dataloader_pin_memory=False,
        bf16=a.gpu,
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=train_set, data_collator=collator)
    start = time.time()
    result = trainer.train()
    wall = time.time() - start
    runtime = result.metrics["train_runtime"]
    real = trainer.state.num_input_tokens_seen
    out = {
        "name": "hf + peft, " + ("group_by_length" if a.group_by_length else "dynamic padding"),
        "rows": len(train_set),
        "steps": trainer.state.global_step,
        "real_tokens": real,
        "train_runtime": runtime,
        "wall_s": round(wall, 1),
        "real_tokens_per_second": round(real / runtime, 1),
        "padding_fraction": round(1 - collator.real / collator.slots, 4),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "final_loss": result.metrics.get("train_loss"),
        "log": [
            {k: e[k] for k in ("step", "loss", "grad_norm", "learning_rate") if k in e}
            for e in trainer.state.log_history
            if "loss" in e
        ],
    }
    if a.save_model:
        trainer.save_model(a.save_model)
        tokenizer.save_pretrained(a.save_model)
    if a.save_adapter:
        model.save_pretrained(a.save_adapter)
        tokenizer.save_pretrained(a.save_adapter)
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
