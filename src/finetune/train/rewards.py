"""Reward functions for `rl: grpo`: the built-in ones (no code needed) and the user's, guarded.

Every function is called as TRL's GRPOTrainer calls a reward function:
`f(prompts, completions, completion_ids, reference=[...], source=[...], trainer_state=..., ...) -> [float]`,
one reward per completion (the dataset's columns arrive as keyword lists, repeated per generation).

Built-in, comparing with the row's answer (`reference`) the way `finetune eval` scores (finetune/scoring.py):
- `label`: the first label of the label set (the distinct answers of the training prompts) named in the
  completion equals the reference: 1, else 0. Case and punctuation do not matter.
- `numeric`: the completion's first number equals the reference's within 1% (12% = 0.12): 1, else 0.
- `exact`: the normalized completion equals the normalized reference: 1, else 0.
- `format`: the completion ended by itself (EOS / end-of-turn token) within max_completion_length: 1, else 0.

A user's function (`module.function`, config/trl_keys.py finds and checks its file without running it) is
imported here and only here, when training starts: by its file path, under a module name unique to that file, and
executed afresh each time, so two configs' `rewards.py` never collide in sys.modules and an edited file is the
one used. The config's folder is on sys.path while it runs, so it may import its own helpers.

A function that raises stops training with one line naming the function and the row (found by calling it
again one row at a time), not a traceback from inside TRL.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import sys
from pathlib import Path

from finetune import scoring
from finetune.config import Config
from finetune.config.trl_keys import BUILTIN_REWARDS, check_reward
from finetune.errors import UserError


def reward_functions(cfg: Config, tokenizer, references: list[str], end_ids: set[int]) -> list:
    """The run's reward functions, in trl.reward_funcs order (default: label), each guarded."""
    names = cfg.trl.reward_names if cfg.trl else ["label"]
    out = []
    for name in names:
        if name in BUILTIN_REWARDS:
            func = builtin(name, references, end_ids)
        else:
            try:
                func = import_reward(name, cfg.config_dir)
            except ValueError as exc:  # validate checked it; the file may have changed since
                raise UserError(f"trl.reward_funcs: {name}: {exc}") from None
        out.append(guarded(func, name))
    return out


def import_reward(name: str, folder: str | Path | None):
    """The user's reward `name` (module.function) from its file under `folder`, executed now (user code runs).

    Raises ValueError with one line saying what is missing or what the module raised."""
    path = check_reward(name, folder)
    module_name, _, func_name = name.rpartition(".")
    unique = f"finetune_reward_{hashlib.sha256(str(path).encode()).hexdigest()[:12]}_{module_name.replace('.', '_')}"
    spec = importlib.util.spec_from_file_location(unique, path)
    module = importlib.util.module_from_spec(spec)
    where = str(Path(folder or ".").resolve())
    sys.modules[unique] = module  # pickling and dataclasses look a function's module up by name
    sys.path.insert(0, where)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the user's module failed while importing: say which and why, in one line
        sys.modules.pop(unique, None)
        raise ValueError(f"importing {path} raised {type(exc).__name__}: {exc}") from None
    finally:
        sys.path.remove(where)
    func = getattr(module, func_name, None)
    if not callable(func):
        raise ValueError(f"module '{module_name}' ({path}) has no function '{func_name}'")
    return func


def builtin(name: str, references: list[str], end_ids: set[int]):
    """The built-in reward `name`; `references` (the training answers) give `label` its label set."""
    if name == "label":
        labels = scoring.label_set(references)

        def label(completions, reference, **_):
            return [
                float(scoring.extract_label(_text(c), labels) == scoring.normalize(r))
                for c, r in zip(completions, reference, strict=True)
            ]

        return label
    if name == "numeric":

        def numeric(completions, reference, **_):
            return [
                float(scoring.numbers_match(_text(c), r)) for c, r in zip(completions, reference, strict=True)
            ]

        return numeric
    if name == "exact":

        def exact(completions, reference, **_):
            return [
                float(scoring.normalize(_text(c)) == scoring.normalize(r))
                for c, r in zip(completions, reference, strict=True)
            ]

        return exact
    if name == "format":

        def format(completion_ids, **_):  # noqa: A001 - the reward's name is what TRL logs
            return [float(bool(ids) and int(ids[-1]) in end_ids) for ids in completion_ids]

        return format
    raise ValueError(f"unknown built-in reward {name!r}")


def _text(completion) -> str:
    """A completion as text: TRL passes a string for text prompts, a list of messages for conversations."""
    if isinstance(completion, list):
        return " ".join(str(m.get("content", "")) for m in completion if isinstance(m, dict))
    return str(completion)


def guarded(func, name: str):
    """`func` under its own name (TRL logs rewards/<name>/mean), turning an exception into one line."""

    @functools.wraps(func)
    def call(prompts, completions, completion_ids, **kwargs):
        try:
            return func(prompts=prompts, completions=completions, completion_ids=completion_ids, **kwargs)
        except Exception as exc:
            row = _failing_row(func, prompts, completions, completion_ids, kwargs)
            raise UserError(
                f"trl.reward_funcs: {name} raised {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                f" (row {row})"
            ) from None

    call.__name__ = name.rpartition(".")[2]
    return call


def _failing_row(func, prompts, completions, completion_ids, kwargs) -> str:
    """The source (file:line) of the first row the function fails on alone, else of the batch's first row."""
    sources = kwargs.get("source") or ["?"] * len(prompts)
    for i in range(len(prompts)):
        one = {k: [v[i]] if isinstance(v, list) and len(v) == len(prompts) else v for k, v in kwargs.items()}
        try:
            func(
                prompts=[prompts[i]], completions=[completions[i]], completion_ids=[completion_ids[i]], **one
            )
        except Exception:
            return str(sources[i])
    return str(sources[0]) if sources else "?"
