"""What the model card says about TRL training (reward models, DPO, KTO, ORPO, SimPO, GRPO): tags, the method
sentence, its hyperparameters, the usage snippet of a reward model, and citations. card.py calls in here when
the saved config has `rl:` or `reward_model:`; SFT cards are unchanged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from finetune.config import trl_keys

if TYPE_CHECKING:
    from finetune.config import Config
    from finetune.outputs.card import Merged
    from finetune.outputs.run_dir import Run

DPO_BIBTEX = """@inproceedings{rafailov2023direct,
    title        = {{Direct Preference Optimization: Your Language Model is Secretly a Reward Model}},
    author       = {Rafael Rafailov and Archit Sharma and Eric Mitchell and Christopher D. Manning and Stefano Ermon and Chelsea Finn},
    year         = 2023,
    booktitle    = {Advances in Neural Information Processing Systems 36 (NeurIPS 2023)},
    url          = {https://arxiv.org/abs/2305.18290}
}"""
GRPO_BIBTEX = """@article{shao2024deepseekmath,
    title        = {{DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open Language Models}},
    author       = {Zhihong Shao and Peiyi Wang and Qihao Zhu and Runxin Xu and Junxiao Song and Mingchuan Zhang and Y. K. Li and Y. Wu and Daya Guo},
    year         = 2024,
    eprint       = {arXiv:2402.03300}
}"""
METHODS = {  # rl: -> (name in sentences, TRL trainer, paper)
    "dpo": ("DPO", "DPOTrainer", "https://arxiv.org/abs/2305.18290"),
    "kto": ("KTO", "KTOTrainer", "https://arxiv.org/abs/2402.01306"),
    "orpo": ("ORPO", "ORPOTrainer", "https://arxiv.org/abs/2403.07691"),
    "simpo": ("SimPO", "CPOTrainer, loss_type simpo", "https://arxiv.org/abs/2405.14734"),
    "grpo": ("GRPO", "GRPOTrainer", "https://arxiv.org/abs/2402.03300"),
}
TRL_BIBTEX = """@software{vonwerra2020trl,
    title        = {{TRL: Transformers Reinforcement Learning}},
    author       = {von Werra, Leandro and Belkada, Younes and Tunstall, Lewis and Beeching, Edward and Thrush, Tristan and Lambert, Nathan and Huang, Shengyi and Rasul, Kashif and Gallou{\\'e}dec, Quentin},
    year         = 2020,
    publisher    = {GitHub},
    howpublished = {\\url{https://github.com/huggingface/trl}}
}"""
LOG_KEYS = (  # training-log metrics shown in the results table when a run has no evaluations
    "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "accuracy", "margin",
    "reward", "reward_std", "kl", "completions/mean_length",
)  # fmt: skip


def tags(cfg: Config) -> list[str]:
    return ["trl", "reward-trainer", "reward-model"] if cfg.reward_model else ["trl", cfg.rl]


def pipeline_tag(cfg: Config) -> str:
    """A reward model scores text (one number per sequence); a DPO adapter still generates."""
    return "text-classification" if cfg.reward_model else "text-generation"


def what_it_is(run: Run, method: str, base: str, merged: Merged | None) -> str:
    """The card's first sentence for a preference run."""
    name = run.cfg.run_name
    if not run.cfg.reward_model:
        rl = METHODS[run.cfg.rl][0]
        if merged:
            return f"**{name}** is {base} with a {method} adapter trained with {rl} merged in, saved in {merged.dtype}."
        return f"**{name}** is a {method} adapter for {base}, trained with {rl}."
    if merged:
        return (
            f"**{name}** is a reward model: {base} with a one-output score head and a {method} adapter merged in, "
            f"saved in {merged.dtype}."
        )
    return f"**{name}** is a reward model: a one-output score head and a {method} adapter on {base}."


def what_data(cfg: Config, data: dict | None = None) -> str:
    """What the card says the run trained on: KTO runs on unpaired rows only say so (the data summary's counts)."""
    data = data or {}
    if cfg.rl == "kto" and data.get("unpaired_rows"):
        return "unpaired rows (a completion and a desirable/undesirable label)"
    return "preference pairs"


def _kto_rows(data: dict | None) -> str:
    """How KTO's rows came about: unpaired rows read as such, pairs split, or both (data stage counts)."""
    data = data or {}
    rows, pairs = data.get("unpaired_rows", 0), data.get("pairs_split", 0)
    counts = (
        f" ({data['desirable']:,} desirable, {data['undesirable']:,} undesirable training rows)"
        if "desirable" in data
        else ""
    )
    split = "each pair's answers as a desirable and an undesirable row"
    if rows and pairs:
        return f"unpaired rows, and {split}{counts}"
    if rows:
        return f"unpaired rows, each answer labelled desirable or undesirable{counts}"
    return f"{split}{counts}"


def how_trained(cfg: Config, data: dict | None = None) -> str:
    """What went into training, for the sentence after the first (`data`: the run's data summary)."""
    if cfg.reward_model:
        return (
            "reward model: Bradley-Terry loss, the chosen answer of each pair scored above the rejected one"
        )
    if cfg.rl == "grpo":
        names = ", ".join(cfg.trl.reward_names if cfg.trl else ["label"])
        files = sorted(
            {n.rpartition(".")[0].replace(".", "/") + ".py" for n in trl_keys.user_rewards(cfg.trl)}
        )
        shipped = f" (the code: {', '.join(f'`{f}`' for f in files)}, in this folder)" if files else ""
        return (
            f"GRPO: completions sampled per prompt and scored by the reward functions {names}{shipped}; the "
            "reference for the KL term is the base model with the adapter switched off"
        )
    if cfg.rl == "kto":
        return f"KTO, beta {cfg.rl_beta_or_default:g}; {_kto_rows(data)}; the reference is the base model with the adapter switched off"
    if cfg.rl == "orpo":
        return f"ORPO, odds-ratio weight {cfg.orpo_alpha or 0.1:g} on top of the SFT loss; no reference model"
    if cfg.rl == "simpo":
        return (
            f"SimPO (TRL's CPO, loss_type simpo), beta {cfg.rl_beta_or_default:g}, gamma {cfg.simpo_gamma if cfg.simpo_gamma is not None else 0.5:g}; "
            "no reference model"
        )
    loss = cfg.dpo_loss_type or "sigmoid"
    losses = loss if isinstance(loss, str) else " + ".join(loss)
    return f"DPO, beta {cfg.rl_beta_or_default:g}, {losses} loss; the reference is the base model with the adapter switched off"


def hyperparameters(cfg: Config) -> dict:
    if cfg.reward_model:
        hp: dict = {"training": "reward model (RewardTrainer)"}
    else:
        name, trainer, _ = METHODS[cfg.rl]
        hp = {"training": f"{name} ({trainer})"}
    if cfg.rl == "grpo":
        from finetune.config.trl_keys import grpo_settings

        hp.update(grpo_settings(cfg.trl))
        hp["reward_funcs"] = ", ".join(cfg.trl.reward_names if cfg.trl else ["label"])
    if cfg.rl in ("kto", "simpo"):
        hp["beta"] = cfg.rl_beta_or_default
    if cfg.rl == "orpo":
        hp["orpo_alpha"] = cfg.orpo_alpha or 0.1
    if cfg.rl == "dpo":
        hp["beta"] = cfg.rl_beta_or_default
        hp["loss_type"] = cfg.dpo_loss_type or "sigmoid"
    if cfg.reward_model:
        hp["reward_head"] = "score (1 output), trained in full"
    if cfg.max_prompt_len:
        hp["max_prompt_length"] = cfg.max_prompt_len
    return hp


def citations(cfg: Config) -> list[str]:
    """The card's Citations section: the DPO paper for DPO runs, and TRL, whose trainers ran."""
    out = ["## Citations", ""]
    if cfg.rl == "dpo":
        out += ["Cite DPO as:", "", "```bibtex", DPO_BIBTEX, "```", ""]
    elif cfg.rl == "grpo":
        out += ["Cite GRPO as:", "", "```bibtex", GRPO_BIBTEX, "```", ""]
    elif cfg.rl in METHODS:
        name, _, paper = METHODS[cfg.rl]
        out += [f"{name}: {paper}", ""]
    return out + ["Cite TRL as:", "", "```bibtex", TRL_BIBTEX, "```", ""]


def reward_usage(run: Run, merged: Merged | None, where: str) -> str:
    """Python that loads the reward model this card describes and scores two answers to one prompt."""
    cfg = run.cfg
    lines = ["import torch"]
    if merged:
        lines += [
            "from transformers import AutoModelForSequenceClassification, AutoTokenizer",
            "",
            f'model_dir = "{where}"  # this folder, or its repo id on the hub',
            "tokenizer = AutoTokenizer.from_pretrained(model_dir)",
            "model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.bfloat16)",
        ]
    else:
        lines += [
            "from peft import PeftModel",
            "from transformers import AutoModelForSequenceClassification, AutoTokenizer",
            "",
            f'base_model = "{cfg.base_model}"',
            f'adapter = "{where}"  # this folder, or its repo id on the hub',
            "tokenizer = AutoTokenizer.from_pretrained(adapter)",
        ]
        if cfg.quantized_4bit:  # the adapter was trained against NF4 weights: load the base the same way
            lines[2] += ", BitsAndBytesConfig"
            lines += [
                "quant = BitsAndBytesConfig(",
                '    load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,',
                "    bnb_4bit_compute_dtype=torch.bfloat16,",
                ")",
                "model = AutoModelForSequenceClassification.from_pretrained(",
                "    base_model, num_labels=1, quantization_config=quant, dtype=torch.bfloat16",
                ")",
            ]
        else:
            lines += [
                "model = AutoModelForSequenceClassification.from_pretrained(base_model, num_labels=1, dtype=torch.bfloat16)"
            ]
        lines += [
            "model.config.pad_token_id = tokenizer.pad_token_id  # the score is read at the last non-pad token",
            "model = PeftModel.from_pretrained(model, adapter)  # LoRA + the trained score head",
        ]
    lines += [
        "",
        'prompt = "What does EBITDA stand for?"',
        'answers = ["Earnings before interest, taxes, depreciation and amortization.", "A stock exchange."]',
        "texts = [prompt + a + tokenizer.eos_token for a in answers]  # the training layout: EOS ends each answer",
        'batch = tokenizer(texts, return_tensors="pt", padding=True)',
        "with torch.no_grad():",
        "    scores = model(**batch).logits.squeeze(-1)",
        "print(scores)  # higher = preferred",
    ]
    return "\n".join(lines)
