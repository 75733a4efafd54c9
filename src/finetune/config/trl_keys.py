"""The `trl:` block (axolotl's spelling of TRL's online-RL settings, used by `rl: grpo`) and reward functions.

    rl: grpo
    trl:
      num_generations: 4          # completions sampled per prompt; the group whose rewards are compared
      max_completion_length: 16   # tokens generated per completion
      reward_funcs: [label, rewards.short_answer]   # built-in names, or module.function next to the config
      reward_weights: [1.0, 0.5]

axolotl's other `trl:` keys are known here and refused with one line unless they hold their "off" value, as
the top-level keys in axolotl_keys.py are. A reward function is a built-in name, or `module.function` with the
module a file next to the config (axolotl's `rewards.my_fn` convention: `rewards.py`; `pkg.mod.fn`:
`pkg/mod.py`). Here it is checked *statically* (`ast`, never imported): the file exists and defines a function of
that name that takes TRL's keyword arguments. A config is read by every command (card, merge, eval, push, the
Studio...), often from a downloaded run folder: reading it must never run code from it. Only `finetune train`
imports the module (train/rewards.py), and training copies it into output_dir so the run reads back anywhere.
"""

from __future__ import annotations

import ast
from pathlib import Path

from pydantic import Field, model_validator

from finetune.config.datasets import StrictModel
from finetune.methods.grpo_keys import (  # noqa: F401 - re-exported: the trl: block's mapping lives with GRPO's record
    BUILTIN_REWARDS,
    GRPO_DEFAULTS,
    grpo_settings,
    user_rewards,
)

# axolotl TRLConfig keys finetune does not implement -> values that count as "off" (besides None/False/"").
NOT_IMPLEMENTED: dict[str, tuple] = {
    "vllm_device": ("auto",),
    "vllm_gpu_memory_utilization": (0.9,),
    "vllm_dtype": ("auto",),
    "vllm_max_model_len": (),
    "vllm_server_host": (),
    "vllm_server_port": (),
    "vllm_server_timeout": (),
    "vllm_enable_prefix_caching": (True,),
    "log_completions": (),
    "sync_ref_model": (),  # TRL refuses it with a peft policy, which every finetune run has
    "ref_model_mixup_alpha": (0.9,),
    "ref_model_sync_steps": (64,),
}


class TrlConfig(StrictModel):
    """axolotl's `trl:` block for `rl: grpo`: TRL GRPOConfig settings under their GRPOConfig names."""

    num_generations: int | None = Field(
        None,
        ge=2,
        description="Completions sampled per prompt (the group GRPO compares); default 4. Cost grows linearly. micro_batch_size x gradient_accumulation_steps must be a multiple of it.",
    )
    max_completion_length: int | None = Field(
        None,
        gt=0,
        description="Tokens generated per completion; default 64. Generation dominates a step's time.",
    )
    beta: float | None = Field(
        None,
        ge=0,
        description="KL weight holding the policy to the reference (the base with the adapter off); default 0.04. 0 skips the reference forward.",
    )
    temperature: float | None = Field(None, gt=0, description="Sampling temperature; default 1.0.")
    top_p: float | None = Field(None, gt=0, le=1, description="Nucleus sampling; default 1.0 (off).")
    top_k: int | None = Field(None, ge=0, description="Top-k sampling; default 0 (off).")
    min_p: float | None = Field(None, ge=0, le=1, description="Min-p sampling; default off.")
    repetition_penalty: float | None = Field(
        None, gt=0, description="Generation repetition penalty; default 1.0."
    )
    num_iterations: int | None = Field(
        None, ge=1, description="Optimizer passes over each batch of completions (GRPO's mu); default 1."
    )
    epsilon: float | None = Field(
        None, gt=0, description="Clipping epsilon of the policy ratio; default 0.2."
    )
    scale_rewards: bool | None = Field(
        None, description="Divide each group's advantages by its reward std (TRL's 'group'); default true."
    )
    reward_funcs: list[str] | None = Field(
        None,
        description=f"Reward functions, summed with reward_weights: built-in {', '.join(BUILTIN_REWARDS)}, or `module.function` from a file next to the config (checked without running it; imported only by `finetune train`, which copies the file into output_dir), called as TRL calls them: f(prompts, completions, completion_ids, reference=..., **columns) -> list of floats.",
    )
    reward_weights: list[float] | None = Field(
        None, description="One weight per reward function; default 1 each."
    )
    use_vllm: bool = Field(
        False, description="Generate with vLLM (GPU only, vLLM installed) instead of transformers' generate."
    )

    @model_validator(mode="before")
    @classmethod
    def _refuse_not_implemented(cls, data):
        """axolotl keys finetune does not implement: ignored at their off value, else refused by name."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        bad = {}
        for key in [k for k in data if k in NOT_IMPLEMENTED]:
            value = data.pop(key)
            off = value in (None, False, "") or any(
                value == v and type(value) is type(v) for v in NOT_IMPLEMENTED[key]
            )
            if not off:
                bad[key] = value
        if bad:
            raise ValueError(f"{', '.join(bad)}: not supported by finetune yet (remove it or set it to null)")
        return data

    @property
    def reward_names(self) -> list[str]:
        return list(self.reward_funcs or ["label"])


def reward_file(name: str, folder: str | Path | None) -> Path:
    """The file of the user's reward `name` (module.function) under `folder`; raises ValueError in one line.

    `a.b.fn` is `folder/a/b.py` (or the package `folder/a/b/__init__.py`), as an import with `folder` first on
    sys.path would find it, without importing anything."""
    module_name, _, func_name = name.rpartition(".")
    if not module_name or not func_name or not all(p.isidentifier() for p in name.split(".")):
        raise ValueError(
            f"'{name}' is neither a built-in reward ({', '.join(BUILTIN_REWARDS)}) nor module.function"
        )
    base = Path(folder or ".").resolve().joinpath(*module_name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    raise ValueError(f"no module '{module_name}' next to the config: {base.with_suffix('.py')} not found")


def check_reward(name: str, folder: str | Path | None) -> Path:
    """The file of the reward `name`, checked without running it: it parses, and defines `function` at the top
    level taking keyword arguments (TRL calls `f(prompts=, completions=, completion_ids=, **columns)`, so a
    function needs `**kwargs`). A name bound otherwise (an import, an assignment) is accepted as it is: only
    training can call it. Raises ValueError with one line."""
    path = reward_file(name, folder)
    func_name = name.rpartition(".")[2]
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except SyntaxError as exc:
        raise ValueError(f"{path}:{exc.lineno}: syntax error: {exc.msg}") from None
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {path} ({type(exc).__name__})") from None
    bound = False
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == func_name:
            if node.args.kwarg is None:
                raise ValueError(
                    f"{path}:{node.lineno}: {func_name}() must accept **kwargs (TRL passes the dataset's "
                    "columns and trainer_state as keywords)"
                )
            return path
        if _binds(node, func_name):
            bound = True
    if bound:
        return path
    raise ValueError(f"{path} defines no function '{func_name}'")


def _binds(node: ast.stmt, name: str) -> bool:
    """Whether a top-level statement binds `name` other than by `def` (import, assignment, class)."""
    if isinstance(node, ast.Import | ast.ImportFrom):
        return any((a.asname or a.name.split(".")[0]) == name for a in node.names)
    if isinstance(node, ast.ClassDef):
        return node.name == name
    targets = (
        node.targets if isinstance(node, ast.Assign)
        else [node.target] if isinstance(node, ast.AnnAssign | ast.AugAssign) else []
    )  # fmt: skip
    return any(isinstance(n, ast.Name) and n.id == name for t in targets for n in ast.walk(t))


def reward_problems(trl: TrlConfig | None, folder: str | Path | None) -> list[tuple[tuple, str]]:
    """Each reward function that cannot be found (checked statically, never imported), and reward_weights that
    do not match them."""
    trl = trl or TrlConfig()
    problems = []
    for i, name in enumerate(trl.reward_names):
        if name in BUILTIN_REWARDS:
            continue
        try:
            check_reward(name, folder)
        except ValueError as exc:
            problems.append((("trl", "reward_funcs", i), str(exc)))
    if trl.reward_weights is not None and len(trl.reward_weights) != len(trl.reward_names):
        problems.append(
            (
                ("trl", "reward_weights"),
                f"{len(trl.reward_weights)} weights for {len(trl.reward_names)} reward functions: give one each",
            )
        )
    return problems
