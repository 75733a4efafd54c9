"""What the model card says about TRL training (reward models, DPO, KTO, ORPO, SimPO, GRPO): tags, the method
sentence, its hyperparameters, the usage snippet of a reward model, and citations, each from the method
table's record (finetune.methods). outputs/card/__init__.py calls in here for a method TRL trains; SFT cards are
unchanged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from finetune import methods

if TYPE_CHECKING:
    from finetune.config import Config
    from finetune.outputs.card import Merged
    from finetune.outputs.run_dir import Run

TRL_BIBTEX = """@software{vonwerra2020trl,
    title        = {{TRL: Transformers Reinforcement Learning}},
    author       = {von Werra, Leandro and Belkada, Younes and Tunstall, Lewis and Beeching, Edward and Thrush, Tristan and Lambert, Nathan and Huang, Shengyi and Rasul, Kashif and Gallou{\\'e}dec, Quentin},
    year         = 2020,
    publisher    = {GitHub},
    howpublished = {\\url{https://github.com/huggingface/trl}}
}"""


def tags(cfg: Config) -> list[str]:
    return list(methods.of(cfg).tags)


def what_it_is(run: Run, method: str, base: str, merged: Merged | None) -> str:
    """The card's first sentence for a TRL run (`method`: LoRA, QLoRA ...; the table's record: how it trained)."""
    name = run.cfg.run_name
    trained = methods.of(run.cfg)
    if not trained.score_head:
        if merged:
            return f"**{name}** is {base} with a {method} adapter trained with {trained.title} merged in, saved in {merged.dtype}."
        return f"**{name}** is a {method} adapter for {base}, trained with {trained.title}."
    if merged:
        return (
            f"**{name}** is a reward model: {base} with a one-output score head and a {method} adapter merged in, "
            f"saved in {merged.dtype}."
        )
    return f"**{name}** is a reward model: a one-output score head and a {method} adapter on {base}."


def what_data(cfg: Config, data: dict | None = None) -> str:
    """What the card says the run trained on: KTO runs on unpaired rows only say so (the data summary's counts)."""
    if methods.of(cfg).rows == "unpaired" and (data or {}).get("unpaired_rows"):
        return "unpaired rows (a completion and a desirable/undesirable label)"
    return "preference pairs"


def how_trained(cfg: Config, data: dict | None = None) -> str:
    """What went into training, for the sentence after the first (`data`: the run's data summary)."""
    return methods.of(cfg).objective(cfg, data)


def hyperparameters(cfg: Config) -> dict:
    """The method's lines of the card's hyperparameters: which trainer ran, then its own settings."""
    method = methods.of(cfg)
    hp: dict = {"training": f"{method.title} ({method.trl_trainer})", **method.hyperparameters(cfg)}
    if cfg.max_prompt_len:
        hp["max_prompt_length"] = cfg.max_prompt_len
    return hp


def citations(cfg: Config) -> list[str]:
    """The card's Citations section: the method's paper (in full where it has a BibTeX entry), and TRL's,
    whose trainers ran."""
    method = methods.of(cfg)
    out = ["## Citations", ""]
    if method.bibtex:
        out += [f"Cite {method.title} as:", "", "```bibtex", method.bibtex, "```", ""]
    elif method.paper:
        out += [f"{method.title}: {method.paper}", ""]
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
