"""How the `trl:` block maps into GRPOConfig (train, the card and the data stage's completion length read it),
and the built-in reward functions' names (the checks and the copied reward files tell them from the user's)."""

from __future__ import annotations

# Reward functions that need no code (train/rewards.py computes them).
BUILTIN_REWARDS = {
    "label": "1 when the completion's first label (of the answers' label set) equals the reference, else 0",
    "numeric": "1 when the completion's first number equals the reference's within 1% (12% = 0.12), else 0",
    "exact": "1 when the completion equals the reference after normalization (case, punctuation, spaces)",
    "format": "1 when the completion ended by itself (EOS / end of turn) within max_completion_length, else 0",
}
# finetune's defaults where TRL 1.16's do not suit a LoRA run on a small machine (train/grpo.py says why)
GRPO_DEFAULTS = {"num_generations": 4, "max_completion_length": 64, "beta": 0.04}
GRPO_PASSED = (  # trl: keys passed to GRPOConfig under the same name when set
    "temperature", "top_p", "top_k", "min_p", "repetition_penalty", "num_iterations", "epsilon",
)  # fmt: skip


def grpo_settings(trl) -> dict:
    """The GRPOConfig settings the `trl:` block gives, finetune's defaults filled in (also what the card shows)."""
    out = dict(GRPO_DEFAULTS)
    for key in (*GRPO_DEFAULTS, *GRPO_PASSED):
        value = getattr(trl, key, None) if trl else None
        if value is not None:
            out[key] = value
    if trl is not None and trl.scale_rewards is not None:
        out["scale_rewards"] = "group" if trl.scale_rewards else "none"
    if trl is not None and trl.reward_weights is not None:
        out["reward_weights"] = list(trl.reward_weights)
    return out


def reward_names(trl) -> list[str]:
    """The reward functions a GRPO run scores with (`label` when the block names none)."""
    return list(trl.reward_names) if trl else ["label"]


def user_rewards(trl) -> list[str]:
    """The reward functions of `trl` that are the user's code (module.function), not built-in."""
    return [n for n in (trl.reward_names if trl else []) if n not in BUILTIN_REWARDS]
