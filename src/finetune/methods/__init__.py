"""The method table: one record per way finetune trains (SFT, reward model, DPO, KTO, ORPO, SimPO, GRPO).

`of(cfg)` is the record a config selects; `data`, `train`, `outputs.card`, `model`, `plan` and the config checks
ask it (its rows, its keys, its trainer, its card lines) instead of testing `rl:` or `reward_model:`
themselves, so a method lives in one record (record.py; the records: pairs.py, online.py). `register` adds
one (a new method, or a test's): nothing else needs editing for it to validate, prepare data, train and get
a card.

    SFT      answers   finetune's Trainer          (no key)
    reward   pairs     TRL RewardTrainer           reward_model: true
    dpo      pairs     TRL DPOTrainer              rl: dpo
    kto      unpaired  TRL KTOTrainer              rl: kto
    orpo     pairs     TRL ORPOTrainer             rl: orpo
    simpo    pairs     TRL CPOTrainer (simpo)      rl: simpo
    grpo     prompts   TRL GRPOTrainer             rl: grpo
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from finetune.methods.online import GRPO, SFT
from finetune.methods.pairs import DPO, KTO, ORPO, REWARD, SIMPO
from finetune.methods.record import Method

__all__ = ["Method", "of", "selected", "named", "table", "register", "rl_names", "own_keys"]

# Looked up in this order: reward_model: true comes first (it wins over rl:, which the checks refuse anyway).
_TABLE: dict[str, Method] = {m.name: m for m in (REWARD, DPO, KTO, ORPO, SIMPO, GRPO, SFT)}


def table() -> tuple[Method, ...]:
    """Every method, SFT last."""
    return tuple(m for m in _TABLE.values() if m.key is not None) + (SFT,)


def selected(cfg) -> list[Method]:
    """Every method whose key has its value in `cfg` (more than one is a config error the checks report)."""
    return [m for m in _TABLE.values() if m.key is not None and getattr(cfg, m.key, None) == m.value]


def of(cfg) -> Method:
    """The method a config (or a run's saved config) selects: the first record whose key has its value, else SFT."""
    chosen = selected(cfg)
    return chosen[0] if chosen else SFT


def named(name: str) -> Method:
    """A method by its name or one of its aliases (KeyError when there is none)."""
    for method in _TABLE.values():
        if name == method.name or name in method.aliases:
            return method
    raise KeyError(name)


def rl_names() -> tuple[str, ...]:
    """The values `rl:` accepts."""
    return tuple(m.value for m in _TABLE.values() if m.key == "rl")


def own_keys() -> dict[str, tuple[Method, ...]]:
    """Each method-only key -> the methods that read it (in table order): the checks refuse it with any other."""
    out: dict[str, tuple[Method, ...]] = {}
    for method in _TABLE.values():
        for key in method.own_keys:
            out[key] = (*out.get(key, ()), method)
    return out


@contextmanager
def register(method: Method) -> Iterator[Method]:
    """Add a method to the table for the duration of the block (a plug-in, or a test's toy method)."""
    if method.name in _TABLE:
        raise ValueError(f"a method named {method.name} is already in the table")
    _TABLE[method.name] = method
    try:
        yield method
    finally:
        del _TABLE[method.name]
