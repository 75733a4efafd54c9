"""Supervised fine-tuning (finetune's own Trainer on answers) and GRPO (TRL's GRPOTrainer: completions sampled
from the prompts of the same datasets, scored by reward functions)."""

from __future__ import annotations

from finetune.methods.grpo_keys import grpo_settings, reward_names, user_rewards
from finetune.methods.pairs import TRL_LOG_KEYS
from finetune.methods.record import Method

GRPO_BIBTEX = """@article{shao2024deepseekmath,
    title        = {{DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open Language Models}},
    author       = {Zhihong Shao and Peiyi Wang and Qihao Zhu and Runxin Xu and Junxiao Song and Mingchuan Zhang and Y. K. Li and Y. Wu and Daya Guo},
    year         = 2024,
    eprint       = {arXiv:2402.03300}
}"""

SFT = Method(
    name="sft",
    title="SFT",
    trainer="finetune.train.assemble:sft_trainer",
)


NOT_PACKED = "not for rl: grpo (prompts are generated from, not packed)"
NO_EVAL = "not for rl: grpo yet: the rewards are logged every step; score with finetune eval after"


def _grpo_checks(cfg) -> list[tuple[tuple, str]]:
    """Groups of num_generations completions must fill whole batches."""
    generations = (cfg.trl.num_generations if cfg.trl else None) or 4
    rows = cfg.micro_batch_size * cfg.gradient_accumulation_steps
    if rows % generations:
        return [
            (
                ("trl", "num_generations"),
                f"{generations} must divide micro_batch_size x gradient_accumulation_steps ({rows}): each "
                "prompt's completions are one group",
            )
        ]
    return []


def _grpo_objective(cfg, data) -> str:
    files = sorted({n.rpartition(".")[0].replace(".", "/") + ".py" for n in user_rewards(cfg.trl)})
    shipped = f" (the code: {', '.join(f'`{f}`' for f in files)}, in this folder)" if files else ""
    return (
        f"GRPO: completions sampled per prompt and scored by the reward functions "
        f"{', '.join(reward_names(cfg.trl))}{shipped}; the reference for the KL term is the base model with the "
        "adapter switched off"
    )


GRPO = Method(
    name="grpo",
    title="GRPO",
    key="rl",
    value="grpo",
    rows="prompts",
    own_keys=("trl",),
    refuses=(
        ("train_on_inputs", "has no meaning for {name} training: remove it"),
        ("sample_packing", NOT_PACKED),
        ("eval_sample_packing", NOT_PACKED),
        ("group_by_length", NOT_PACKED),
        ("batch_flattening", NOT_PACKED),
        ("eval_metrics", "not for rl: grpo: the rewards are logged at every step"),
        ("val_set_size", NO_EVAL),
        ("test_datasets", NO_EVAL),
    ),
    checks=_grpo_checks,
    trainer="finetune.train.grpo:build_trainer",
    trl_trainer="GRPOTrainer",
    trl_config="trl:GRPOConfig",
    trl_values=lambda cfg: grpo_settings(cfg.trl),
    tags=("trl", "grpo"),
    paper="https://arxiv.org/abs/2402.03300",
    bibtex=GRPO_BIBTEX,
    objective=_grpo_objective,
    hyperparameters=lambda cfg: {
        **grpo_settings(cfg.trl),
        "reward_funcs": ", ".join(reward_names(cfg.trl)),
    },
    log_keys=TRL_LOG_KEYS,
)
