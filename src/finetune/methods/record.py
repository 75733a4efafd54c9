"""One training method as a record: what `data`, `train`, the card and the checks ask about it.

A record holds facts and small pure functions of the config (the keys it reads, how they map into its TRL
config, what its card says); the heavy parts (the trainer builder, TRL's config class) are named by import path
("module:function") and imported when used, so the table sits below every stage that asks it (config
included) and imports none of them (the layers contract in pyproject.toml)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

ROWS = ("answers", "pairs", "unpaired", "prompts")  # what the data stage builds for a method


def _no_keys(cfg) -> dict:
    return {}


@dataclass(frozen=True)
class Method:
    """One way finetune trains. `key`/`value`: the YAML that selects it (`rl: dpo`, `reward_model: true`);
    SFT is the method no key selects."""

    name: str  # config.yml's training_kind and the notes: sft, reward, dpo, kto, orpo, simpo, grpo
    title: str  # in the card's sentences: DPO, SimPO, a reward model
    trainer: str | Callable  # "module:function" (or the function): build_trainer(cfg, args, model, ...)
    key: str | None = None  # the config key that selects it (None: SFT, the default)
    value: Any = None  # ... and its value
    aliases: tuple[str, ...] = ()  # other names for it; the first is the card's tag (reward -> reward-model)
    rows: str = "answers"  # answers (SFT tokens + labels), pairs, unpaired (KTO: pairs too), prompts (GRPO)
    own_keys: tuple[str, ...] = ()  # keys only methods listing them read: refused with every other method
    refuses: tuple[tuple[str, str], ...] = ()  # (key, why): keys that mean nothing for it, refused when set
    checks: Callable[[Any], list] = lambda cfg: []  # cfg -> its own (key path, problem) pairs
    default_beta: float | None = None  # rl_beta when unset (what the card reports as the beta that ran)
    trl_trainer: str | None = None  # the TRL trainer that runs it, as the card names it (None: finetune's)
    trl_config: str | None = None  # "module:Class": TRL's config the run's TrainingArguments are copied into
    trl_values: Callable[[Any], dict] = _no_keys  # cfg -> the method's settings in trl_config's names
    score_head: bool = False  # a one-output score head instead of the LM head (reward model): scores, no text
    pipeline_tag: str = "text-generation"  # the Hub's task for what the result does
    tags: tuple[str, ...] = ()  # the card's tags after finetune's own
    paper: str | None = None  # cited on the card
    bibtex: str | None = None  # cited in full when the method has one
    objective: Callable[[Any, dict], str] | None = None  # (cfg, data) -> the card's "trained with" words
    hyperparameters: Callable[[Any], dict] = _no_keys  # cfg -> the card's method lines
    log_keys: tuple[str, ...] = ()  # training-log metrics the card's results table shows without evaluations
    batching: str = ""  # how its batches are made (run_facts), when the trainer does not say itself

    def __post_init__(self):
        if self.rows not in ROWS:
            raise ValueError(f"{self.name}: rows must be one of {', '.join(ROWS)} (got {self.rows})")
        if (self.key is None) != (self.value is None):
            raise ValueError(f"{self.name}: key and value select a method together (SFT has neither)")

    @property
    def selector(self) -> str:
        """The YAML that selects it, as messages quote it: `rl: dpo`, `reward_model: true`; SFT: empty."""
        if self.key is None:
            return ""
        return f"{self.key}: {'true' if self.value is True else self.value}"

    @property
    def preference_data(self) -> bool:
        """Trained on chosen/rejected pairs (or KTO's labelled rows) rather than on answers."""
        return self.rows in ("pairs", "unpaired")

    @property
    def answers(self) -> bool:
        """Trained on SFT's tokens and labels (the data report, packing and token budgets apply)."""
        return self.rows == "answers"

    @property
    def online(self) -> bool:
        """Completions sampled and scored during training (GRPO): prompts in, no answers, no cache."""
        return self.rows == "prompts"

    @property
    def by_trl(self) -> bool:
        """Trained by one of TRL's trainers (its versions, citation and log metrics belong on the card)."""
        return self.trl_trainer is not None

    @property
    def tag(self) -> str:
        """The card's word for it (tags and "trained with (...)")."""
        return self.aliases[0] if self.aliases else self.name

    def beta(self, cfg) -> float | None:
        """rl_beta, else the method's default."""
        return cfg.rl_beta if cfg.rl_beta is not None else self.default_beta

    def build_trainer(self) -> Callable:
        """The trainer builder, imported on first use: build_trainer(cfg, args, model, tokenizer, train_set,
        eval_set, callbacks, console=None, plan=None) -> a transformers Trainer."""
        return _resolve(self.trainer)

    def trl_config_class(self) -> type:
        """TRL's config class for this method, imported on first use."""
        return _resolve(self.trl_config)


def _resolve(ref):
    """A "module:name" reference imported (a callable is returned as it is)."""
    if callable(ref):
        return ref
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)
