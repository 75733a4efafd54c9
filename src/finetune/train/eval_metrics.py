"""The Trainer hooks that report answer quality at each evaluation: the token-level accuracy of the answer
tokens (what LLaMA-Factory's cards call Accuracy) and, with `eval_metrics:` set, finetune.scoring's scores on
greedy generations of a sample of the evaluation set.
"""

from __future__ import annotations

from finetune.data import answer_format
from finetune.data.rows import IGNORE
from finetune.model import generation
from finetune.scoring import headline, score


def preprocess_logits_for_metrics(logits, labels):
    """Keep only the argmax token per position: the Trainer then gathers ids, not vocabulary-wide logits."""
    if isinstance(logits, tuple):
        logits = logits[0]
    return logits.argmax(dim=-1)


def token_accuracy(predictions, label_ids) -> float:
    """Share of answer tokens (labels != -100) predicted right; position t predicts the label at t + 1."""
    import numpy as np

    preds, labels = np.asarray(predictions)[:, :-1], np.asarray(label_ids)[:, 1:]
    mask = labels != IGNORE
    total = int(mask.sum())
    return float((preds[mask] == labels[mask]).sum() / total) if total else 0.0


def trainer_hooks(cfg, model, tokenizer, eval_set) -> dict:
    """compute_metrics + preprocess_logits_for_metrics for `Trainer(...)`; empty without evaluation data.

    Token accuracy always; with `eval_metrics:` also the generation scores above on the first
    `eval_metrics_samples` evaluation rows (greedy, batched), logged as eval_gen_<metric>.
    """
    if eval_set is None:
        return {}
    sample = _generation_sample(cfg, tokenizer, eval_set) if cfg.eval_metrics else None

    def compute_metrics(eval_pred) -> dict:
        out = {"token_accuracy": token_accuracy(eval_pred.predictions, eval_pred.label_ids)}
        if sample:
            out.update(_generation_scores(cfg, model, tokenizer, *sample))
        return out

    return {
        "compute_metrics": compute_metrics,
        "preprocess_logits_for_metrics": preprocess_logits_for_metrics,
    }


def _generation_sample(cfg, tokenizer, eval_set) -> tuple[list, list] | None:
    """(prompt ids, target texts) of the first rows: prompt = tokens before the first trained token,
    target = the first run of trained tokens, without its stop token."""
    prompts, targets = [], []
    for row in eval_set.select(range(min(len(eval_set), cfg.eval_metrics_samples))):
        ids, labels = list(row["input_ids"]), list(row["labels"])
        start = next((i for i, label in enumerate(labels) if label != IGNORE), None)
        if not start:  # nothing masked (train_on_inputs): no prompt to answer
            continue
        end = next((i for i in range(start, len(labels)) if labels[i] == IGNORE), len(labels))
        answer = tokenizer.decode(ids[start:end], skip_special_tokens=True).strip()
        if answer:
            prompts.append(ids[:start])
            targets.append(answer)
    return (prompts, targets) if prompts else None


def _generation_scores(cfg, model, tokenizer, prompts: list, targets: list) -> dict:

    was_training = model.training
    model.eval()
    try:
        stop = answer_format.stop_ids(cfg, cfg.datasets[0], tokenizer, model)
        new = answer_format.auto_max_new_tokens(tokenizer, targets)
        batch = cfg.eval_batch_size or cfg.micro_batch_size
        answers = generation.generate_batch(model, tokenizer, prompts, new, batch, stop)
    finally:
        model.train(was_training)
    scored = score(answers, targets, cfg.eval_metrics)
    return {f"gen_{k}": v for k, v in headline(scored.summary).items()}
