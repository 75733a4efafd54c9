"""The run's configuration: axolotl-style YAML read once, validated once, then trusted.

`load(path, overrides)` returns a frozen `Config` or raises `ConfigError` listing every problem in the
file at once, one line each: `file.yaml:12: lora_alhpa: unknown key (did you mean lora_alpha?)`.
Field descriptions double as the README's config reference (`python -m finetune.config`).
Only pydantic and PyYAML are imported here, so `finetune validate` stays fast (no torch).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
)

from finetune import axolotl_keys, config_yaml
from finetune.config_yaml import ConfigError, apply_override  # noqa: F401 - re-exported

SECRET_KEY = re.compile(r"(^|_)(api_key|apikey|secret|password|auth|hf_token|token)$", re.I)
REDACTED = "***"


def _looks_local(path: str) -> bool:
    """Local paths are checked to exist; hub ids (`owner/name`) are never contacted while validating."""
    return (
        path.startswith(("/", "./", "../", "~"))
        or Path(path).suffix.lower()
        in {".json", ".jsonl", ".csv", ".parquet", ".arrow", ".txt", ".yaml", ".yml"}
        or path.count("/") > 1
        or os.path.exists(os.path.expanduser(path))
    )


def _check_exists(path: str | None, what: str) -> str | None:
    if path and _looks_local(path) and not os.path.exists(os.path.expanduser(path)):
        raise ValueError(f"{what} not found: {path}")
    return path


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class DatasetType(_Strict):
    """axolotl's user-defined prompt format: `type: {field_instruction: ..., format: "..."}`."""

    system_prompt: str = Field(
        "", description="System text for every row (as in axolotl, ignored when `field_system` is set)."
    )
    field_system: str | None = Field(None, description="Column holding a per-row system prompt.")
    field_instruction: str = Field("instruction", description="Column holding the instruction.")
    field_input: str | None = Field(None, description="Column holding the optional input.")
    field_output: str = Field("output", description="Column holding the answer (the trained part).")
    format: str = Field(
        "{instruction} {input} ",
        description="Prompt template with {instruction} and {input}; the answer follows it directly.",
    )
    no_input_format: str | None = Field(None, description="Template used when the row's input is empty.")
    system_format: str = Field(
        "{system}", description="Template for the system text, prepended to the prompt."
    )


class PreferenceType(_Strict):
    """axolotl's user-defined preference format (rl: dpo, reward_model): `type: {field_prompt: ..., field_chosen: ...}`."""

    field_prompt: str = Field("prompt", description="Column holding the prompt.")
    field_system: str = Field(
        "system", description="Column holding an optional per-row system text (`{system}` in prompt_format)."
    )
    field_chosen: str = Field("chosen", description="Column holding the preferred answer.")
    field_rejected: str = Field("rejected", description="Column holding the worse answer.")
    prompt_format: str = Field(
        "{prompt}", description="Prompt template with {prompt} (and {system}); the answers follow it as is."
    )
    chosen_format: str = Field("{chosen}", description="Template of the preferred answer, with {chosen}.")
    rejected_format: str = Field("{rejected}", description="Template of the worse answer, with {rejected}.")


PREFERENCE_TYPE_KEYS = frozenset(PreferenceType.model_fields) - {"field_system"}
DATASET_TYPES = ("alpaca", "chat_template", "completion")


def _type_tag(v) -> str:
    if isinstance(v, PreferenceType) or (isinstance(v, dict) and PREFERENCE_TYPE_KEYS & set(v)):
        return "pref"
    return "dict" if isinstance(v, dict | DatasetType) else "str"


DatasetTypeValue = Annotated[
    Annotated[str, Tag("str")] | Annotated[DatasetType, Tag("dict")] | Annotated[PreferenceType, Tag("pref")],
    Discriminator(_type_tag),
]


class DatasetConfig(_Strict):
    """One entry of `datasets:` / `test_datasets:`."""

    path: str = Field(description="Local file or folder (JSONL/JSON/CSV/Parquet), or a hub dataset id.")
    type: DatasetTypeValue = Field(
        "alpaca", description="Prompt format: alpaca, chat_template, completion, or a custom dict."
    )
    ds_type: Literal["json", "csv", "parquet", "arrow", "text"] | None = Field(
        None, description="File format when the extension does not tell."
    )
    data_files: str | list[str] | None = Field(None, description="Files to read inside `path`.")
    split: str = Field("train", description="Split to read.")
    name: str | None = Field(None, description="Dataset configuration name (hub datasets).")
    revision: str | None = Field(None, description="Hub dataset revision.")
    field: str | None = Field(None, description="`completion`: the column holding the raw text.")
    field_messages: str = Field("messages", description="`chat_template`: the column holding the turns.")
    message_property_mappings: dict[str, str] | None = Field(
        None, description="`chat_template`: map `role`/`content` to the row's key names."
    )
    message_field_role: str | None = Field(
        None, description="Deprecated alias of message_property_mappings.role."
    )
    message_field_content: str | None = Field(
        None, description="Deprecated alias of message_property_mappings.content."
    )
    roles_to_train: list[str] | None = Field(
        None, description="`chat_template`: roles whose turns are trained."
    )
    train_on_eos: Literal["turn", "last", "all", "none"] | None = Field(
        None, description="`chat_template`: which end-of-turn tokens are trained."
    )
    roles: dict[str, list[str]] | None = Field(
        None, description="`chat_template`: map row roles to template roles."
    )
    drop_system_message: bool | None = Field(None, description="`chat_template`: drop system turns.")
    chat_template: str | None = Field(None, description="`chat_template`: per-dataset template override.")
    field_chosen: str | None = Field(
        None,
        description="`chat_template` preference rows (rl: dpo, reward_model): the column holding the preferred answer (a string, an assistant message, or a list ending with it); default `chosen`.",
    )
    field_rejected: str | None = Field(
        None, description="`chat_template` preference rows: the column holding the worse answer (`rejected`)."
    )

    @field_validator("path")
    @classmethod
    def _path_exists(cls, v: str) -> str:
        return _check_exists(v, "dataset file") or v

    @field_validator("type")
    @classmethod
    def _known_type(cls, v):
        if v == "chat_template.default":  # axolotl's long name for the same strategy
            return "chat_template"
        if isinstance(v, str) and v not in DATASET_TYPES:
            raise ValueError(
                f"'{v}' is not supported (supported: {', '.join(DATASET_TYPES)}, or a custom dict with field_instruction/field_output/format, or field_prompt/field_chosen/field_rejected for preference data)"
            )
        return v


OPTIMIZERS = (
    "adamw_torch",
    "adamw_torch_fused",
    "adamw_8bit",
    "adamw_bnb_8bit",
    "paged_adamw_8bit",
    "paged_adamw_32bit",
    "adamw_torch_8bit",
    "adafactor",
    "sgd",
    "lion_8bit",
    "paged_lion_8bit",
)
SCHEDULERS = (
    "cosine",
    "linear",
    "constant",
    "constant_with_warmup",
    "cosine_with_restarts",
    "polynomial",
    "inverse_sqrt",
)
Positive = Annotated[int, Field(gt=0)]
LIGER_PLUGIN = "axolotl.integrations.liger.LigerPlugin"
RL_METHODS = ("dpo",)
RL_LATER = ("orpo", "kto", "ipo", "simpo", "grpo")  # axolotl's other rl: values, refused until implemented
# TRL 1.16 DPOConfig.loss_type values.
DPO_LOSSES = (
    "sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot", "aot_unpaired",
    "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm",
)  # fmt: skip


class Config(_Strict):
    """Every key a finetune run reads. Names follow axolotl so existing configs work unchanged."""

    # --- model
    base_model: str = Field(description="Hub id or local folder of the base model.")
    base_model_config: str | None = Field(
        None, description="Where to read the model config from (default: base_model)."
    )
    tokenizer_config: str | None = Field(
        None, description="Where to read the tokenizer from (default: base_model)."
    )
    revision_of_model: str | None = Field(
        None,
        validation_alias=AliasChoices("revision_of_model", "revision", "model_revision"),
        description="Hub revision (branch, tag or commit) of the base.",
    )
    model_type: str | None = Field(
        None,
        validation_alias=AliasChoices("model_type", "type_of_model"),
        description="Accepted for axolotl compatibility; the architecture comes from the model's config.",
    )
    tokenizer_type: str | None = Field(
        None, description="Accepted for axolotl compatibility; AutoTokenizer is always used."
    )
    tokenizer_use_fast: bool = Field(True, description="Use the fast (Rust) tokenizer.")
    trust_remote_code: bool = Field(
        False, description="Run code shipped with the model. Off unless you turn it on."
    )
    load_in_4bit: bool = Field(
        False, description="Load the base in 4-bit NF4 with bitsandbytes (QLoRA): ~4x less memory than bf16."
    )
    load_in_8bit: bool = Field(False, description="Load the base in 8-bit with bitsandbytes.")
    bnb_4bit_quant_storage: Literal["float32", "bfloat16", "float16", "uint8"] | None = Field(
        None,
        description="Storage dtype of packed 4-bit weights (same NF4 values); default: the training dtype under DeepSpeed ZeRO-3, so it can shard them, else uint8.",
    )
    bnb_config_kwargs: dict[str, Any] | None = Field(None, description="Extra BitsAndBytesConfig arguments.")
    bf16: bool | Literal["auto"] | None = Field(
        "auto", description="bf16 mixed precision; `auto` uses it where the hardware supports it."
    )
    fp16: bool | None = Field(None, description="fp16 mixed precision (older GPUs).")
    tf32: bool | None = Field(None, description="Allow TF32 matmuls on Ampere+ GPUs.")
    attn_implementation: str | None = Field(
        None, description="Attention kernel: sdpa (default), eager, flash_attention_2 ..."
    )
    flash_attention: bool | None = Field(
        None, description="Shorthand for attn_implementation: flash_attention_2."
    )
    gradient_checkpointing: bool | Literal["offload"] | None = Field(
        None,
        description="Recompute activations in backward: much less memory, ~30% slower. `offload` also moves the hidden states kept between layers to host memory on a GPU (less GPU memory still, costs PCIe copies; plain checkpointing on CPU).",
    )
    gradient_checkpointing_kwargs: dict[str, Any] | None = Field(
        None, description="e.g. {use_reentrant: false}."
    )
    special_tokens: dict[str, str] | None = Field(
        None, description="bos_token/eos_token/pad_token/unk_token to set on the tokenizer."
    )
    tokens: list[str] | None = Field(
        None, description="New tokens to add to the vocabulary (embeddings are resized and trained)."
    )
    eot_tokens: list[str] | None = Field(None, description="Extra end-of-turn tokens of the chat template.")
    chat_template: str | None = Field(
        None, description="tokenizer_default, a named template (llama3, chatml ...) or a Jinja string."
    )
    chat_template_jinja: str | None = Field(
        None, description="A Jinja chat template (used with chat_template: jinja)."
    )

    # --- adapter
    adapter: Literal["lora", "qlora"] | None = Field(
        None, description="lora or qlora (qlora implies load_in_4bit)."
    )
    lora_r: Positive = Field(8, description="LoRA rank: adapter size and capacity grow with it.")
    lora_alpha: float = Field(16, description="LoRA scaling numerator (scale = alpha / r).")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input.")
    lora_target_modules: list[str] | str | None = Field(
        None, description="Module names (or a regex) to adapt."
    )
    lora_target_linear: bool | None = Field(None, description="Adapt every linear layer (all-linear).")
    lora_modules_to_save: list[str] | None = Field(
        None, description="Modules trained in full and saved with the adapter."
    )
    lora_fan_in_fan_out: bool = Field(False, description="For Conv1D-style weights (GPT-2).")
    peft_use_dora: bool = Field(
        False, description="DoRA: weight-decomposed LoRA; a little slower, often better."
    )
    peft_use_rslora: bool = Field(False, description="Rank-stabilised scaling alpha/sqrt(r).")
    lora_model_dir: str | None = Field(
        None, description="Start from this existing adapter instead of a fresh one."
    )

    # --- data
    datasets: list[DatasetConfig] = Field(
        min_length=1, description="Training data; formatted, then concatenated."
    )
    test_datasets: list[DatasetConfig] | None = Field(
        None, description="Evaluation data (instead of val_set_size)."
    )
    val_set_size: float = Field(
        0.0, ge=0, description="Held-out share (<1) or row count (>=1) for evaluation."
    )
    dataset_prepared_path: str | None = Field(
        None, description="Where tokenized data is cached (default: last_run_prepared)."
    )
    dataset_processes: Positive | None = Field(
        None, description="Processes for tokenization (default: CPU count)."
    )
    dataset_exact_deduplication: bool = Field(False, description="Drop exact duplicate rows.")
    shuffle_merged_datasets: bool = Field(True, description="Shuffle after concatenating datasets.")
    sequence_len: Positive = Field(2048, description="Maximum tokens per row.")
    excess_length_strategy: Literal["drop", "truncate"] = Field(
        "drop", description="What happens to rows longer than sequence_len."
    )
    train_on_inputs: bool = Field(False, description="Also compute the loss on prompt tokens.")
    sample_packing: bool = Field(
        False,
        description="Spend no compute on padding; the strategy is chosen for the device. GPU + flash attention: padding-free packed rows of up to micro_batch_size x sequence_len tokens. Elsewhere (CPU, sdpa): rows sorted by length in batches of up to that many padded tokens (packing would cost full attention there). Either way a step holds a varying number of rows, so steps per epoch are fewer than rows / micro_batch_size.",
    )
    eval_sample_packing: bool | None = Field(
        None, description="Batch evaluation rows the same way (default: as sample_packing; one process only)."
    )
    pad_to_sequence_len: bool | None = Field(
        None, description="Pad every batch to sequence_len (steadier GPU memory)."
    )
    group_by_length: bool = Field(
        False,
        description="micro_batch_size rows of similar length a batch (less padding; HF's length-grouped sampler).",
    )

    # --- training
    output_dir: str = Field(
        "./outputs/lora-out", description="Where the adapter, checkpoints, card and logs go."
    )
    micro_batch_size: Positive = Field(1, description="Rows per device per step.")
    eval_batch_size: Positive | None = Field(
        None, description="Rows per device per eval step (default: micro_batch_size)."
    )
    gradient_accumulation_steps: Positive = Field(1, description="Micro-batches per optimizer step.")
    num_epochs: float = Field(1, gt=0, description="Passes over the training data.")
    max_steps: int | None = Field(
        None, description="Stop after this many optimizer steps (overrides num_epochs)."
    )
    optimizer: str = Field("adamw_torch", description=f"One of: {', '.join(OPTIMIZERS)}.")
    lr_scheduler: str = Field("cosine", description=f"One of: {', '.join(SCHEDULERS)}.")
    learning_rate: float = Field(2e-4, gt=0, description="Peak learning rate.")
    warmup_steps: float | None = Field(
        None, ge=0, description="Warm-up steps (a value < 1 is read as a ratio, as axolotl does)."
    )
    warmup_ratio: float | None = Field(None, ge=0, lt=1, description="Warm-up as a share of all steps.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, ge=0, description="Gradient clipping norm (0 disables).")
    adam_beta1: float | None = Field(None, description="AdamW beta1.")
    adam_beta2: float | None = Field(None, description="AdamW beta2.")
    adam_epsilon: float | None = Field(
        None, validation_alias=AliasChoices("adam_epsilon", "adam_eps"), description="AdamW epsilon."
    )
    logging_steps: Positive = Field(1, description="Log the training loss every N steps.")
    evals_per_epoch: int | None = Field(None, ge=0, description="Evaluations per epoch.")
    eval_steps: float | None = Field(None, gt=0, description="Evaluate every N steps (or a ratio < 1).")
    eval_strategy: Literal["no", "steps", "epoch"] | None = Field(
        None,
        validation_alias=AliasChoices("eval_strategy", "evaluation_strategy"),
        description="Override when evaluation happens.",
    )
    eval_metrics: Literal["auto", "accuracy", "f1", "exact", "numeric"] | None = Field(
        None,
        description="At each evaluation, also answer eval_metrics_samples evaluation rows by greedy generation and score them (accuracy + macro/weighted F1 for label sets, exact or numeric match; auto picks from the targets), logged as eval_gen_*. Costs one generation pass over those rows per evaluation. (The accuracy of the answer tokens, eval_token_accuracy, is always logged.)",
    )
    eval_metrics_samples: Positive = Field(
        32, description="Evaluation rows answered by generation when eval_metrics is set (the first ones)."
    )
    saves_per_epoch: int | None = Field(None, ge=0, description="Checkpoints per epoch.")
    save_steps: float | None = Field(None, gt=0, description="Checkpoint every N steps (or a ratio < 1).")
    save_strategy: Literal["no", "steps", "epoch", "best"] | None = Field(
        None, description="Override when checkpoints are saved."
    )
    save_total_limit: Positive | None = Field(None, description="Keep at most this many checkpoints.")
    seed: int = Field(42, description="Seed for data order, LoRA init and dropout.")
    early_stopping_patience: Positive | None = Field(
        None, description="Stop after N evaluations without improvement."
    )
    load_best_model_at_end: bool = Field(False, description="Keep the checkpoint with the best eval loss.")
    resume_from_checkpoint: str | None = Field(None, description="Checkpoint folder to resume from.")
    auto_resume_from_checkpoints: bool = Field(
        False, description="Resume from the last complete checkpoint in output_dir."
    )
    deepspeed: str | dict[str, Any] | None = Field(
        None, description="DeepSpeed config: a JSON path or an inline mapping."
    )
    torch_compile: bool | None = Field(
        None,
        description="torch.compile the model on a GPU (compiles per new shape; skipped on CPU, where it measured slower).",
    )
    torch_compile_backend: str | None = Field(None, description="torch.compile backend (default inductor).")
    torch_compile_mode: str | None = Field(
        None, description="torch.compile mode: default, reduce-overhead, max-autotune ..."
    )
    # --- Liger kernels (GPU, `pip install liger-kernel`; skipped on CPU): fused Triton kernels, less memory
    plugins: list[str] | None = Field(
        None,
        description="axolotl plugins: only axolotl.integrations.liger.LigerPlugin is accepted (its liger_* keys below are what takes effect).",
    )
    liger_rope: bool | None = Field(None, description="Liger fused rotary embedding.")
    liger_rms_norm: bool | None = Field(None, description="Liger fused RMSNorm.")
    liger_glu_activation: bool | None = Field(None, description="Liger fused SwiGLU/GeGLU MLP activation.")
    liger_layer_norm: bool | None = Field(None, description="Liger fused LayerNorm (models that have one).")
    liger_cross_entropy: bool | None = Field(None, description="Liger cross-entropy on the logits.")
    liger_fused_linear_cross_entropy: bool | None = Field(
        None,
        description="Liger lm_head + cross-entropy fused in chunks: the full logits are never stored (large memory saving with big vocabularies).",
    )

    # --- preference training (reward models, DPO): see preference.py and rl.py
    rl: str | None = Field(
        None,
        description=f"Train on preference pairs instead of SFT: `dpo` (TRL's DPOTrainer; the reference model is the base with the adapter switched off, so no second copy is loaded; each step runs the policy and the reference on chosen and rejected, ~2x an SFT step). Not implemented yet (refused): {', '.join(RL_LATER)}.",
    )
    rl_beta: float | None = Field(
        None,
        gt=0,
        description="DPO beta: how strongly the policy is held to the reference (larger = closer). Default 0.1 (TRL's).",
    )
    dpo_beta: float | None = Field(
        None, gt=0, description="axolotl's deprecated name of rl_beta: read as rl_beta, with a warning."
    )
    dpo_loss_type: str | list[str] | None = Field(
        None,
        description=f"DPO loss (TRL's loss_type): {', '.join(DPO_LOSSES)}; a list adds several. Default sigmoid (the DPO paper's).",
    )
    max_prompt_len: Positive | None = Field(
        None,
        description="Preference rows: a prompt longer than this many tokens keeps only its last ones (next to the answers), so long prompts cannot crowd the answers out of sequence_len. Default: no limit of its own.",
    )
    reward_model: bool = Field(
        False,
        description="Train a reward model: the base with a one-output sequence-classification head (trained in full and saved with the adapter) on preference pairs, with TRL's RewardTrainer (Bradley-Terry loss); evaluation reports accuracy, the share of pairs whose chosen answer scores above the rejected one.",
    )
    num_labels: Literal[1] | None = Field(
        None, description="Outputs of the reward head: 1 (a scalar score); accepted as axolotl writes it."
    )

    # --- tracking and the card
    wandb_project: str | None = Field(None, description="Weights & Biases project; unset means no W&B.")
    wandb_entity: str | None = Field(None, description="W&B team or user.")
    wandb_name: str | None = Field(None, description="W&B run name (also the model card's title).")
    wandb_watch: Literal["false", "gradients", "parameters", "all"] | bool | None = Field(
        None, description="W&B gradient/parameter watching."
    )
    wandb_log_model: Literal["false", "checkpoint", "end"] | bool | None = Field(
        None, description="Upload checkpoints to W&B."
    )
    wandb_mode: Literal["online", "offline", "disabled"] | None = Field(
        None, description="W&B mode (offline writes files only)."
    )
    wandb_run_id: str | None = Field(None, description="W&B run id to resume.")
    license: str | None = Field(None, description="License for the model card (e.g. llama3.1, apache-2.0).")
    finetune_versions: dict[str, str] | None = Field(
        None, description="Written by finetune into the saved config.yml; ignored on input."
    )

    @field_validator("deepspeed")
    @classmethod
    def _deepspeed_exists(cls, v):
        return _check_exists(v, "deepspeed config") if isinstance(v, str) else v

    @field_validator("lora_model_dir")
    @classmethod
    def _adapter_exists(cls, v):
        return _check_exists(v, "adapter folder")

    @field_validator("rl")
    @classmethod
    def _known_rl(cls, v: str | None) -> str | None:
        if v is None or v in RL_METHODS:
            return v
        hint = " (rl: dpo with dpo_loss_type: ipo trains the IPO loss)" if v == "ipo" else ""
        if v in RL_LATER:
            raise ValueError(f"'{v}' is not implemented yet (implemented: {', '.join(RL_METHODS)}){hint}")
        raise ValueError(f"'{v}' is not a known method (implemented: {', '.join(RL_METHODS)})")

    @field_validator("dpo_loss_type")
    @classmethod
    def _known_dpo_loss(cls, v):
        for name in [v] if isinstance(v, str) else v or []:
            if name not in DPO_LOSSES:
                raise ValueError(f"'{name}' is not a DPO loss (known: {', '.join(DPO_LOSSES)})")
        return v

    @field_validator("optimizer")
    @classmethod
    def _known_optimizer(cls, v: str) -> str:
        if v not in OPTIMIZERS:
            raise ValueError(f"'{v}' is not supported (supported: {', '.join(OPTIMIZERS)})")
        return v

    @field_validator("lr_scheduler")
    @classmethod
    def _known_scheduler(cls, v: str) -> str:
        if v not in SCHEDULERS:
            raise ValueError(f"'{v}' is not supported (supported: {', '.join(SCHEDULERS)})")
        return v

    # --- derived values (never stored back into the config)
    @property
    def quantized_4bit(self) -> bool:
        return self.load_in_4bit or self.adapter == "qlora"

    @property
    def run_name(self) -> str:
        """Human name of the run: wandb_name, else the output folder's name."""
        return self.wandb_name or Path(self.output_dir).resolve().name

    @property
    def prepared_path(self) -> str:
        return self.dataset_prepared_path or "last_run_prepared"

    @property
    def use_wandb(self) -> bool:
        return bool(self.wandb_project) and self.wandb_mode != "disabled"

    @property
    def training_kind(self) -> str:
        """`sft`, `dpo` or `reward`: which trainer runs and which data layout the datasets must have."""
        return "reward" if self.reward_model else self.rl or "sft"

    @property
    def preference(self) -> bool:
        """Trained on chosen/rejected pairs (DPO or a reward model) rather than on answers."""
        return self.training_kind != "sft"


def _cross_checks(cfg: Config) -> list[tuple[tuple, str]]:
    """Checks that involve several keys; each problem is reported at the key to change."""
    problems = []
    if cfg.load_in_4bit and cfg.load_in_8bit:
        problems.append((("load_in_8bit",), "cannot be combined with load_in_4bit: choose one"))
    if cfg.adapter is None:
        problems.append((("adapter",), "full fine-tuning is not supported: set adapter: lora or qlora"))
    if cfg.adapter == "qlora" and cfg.load_in_8bit:
        problems.append((("load_in_8bit",), "qlora trains on a 4-bit base: set load_in_4bit: true instead"))
    if cfg.evals_per_epoch and cfg.eval_steps:
        problems.append((("eval_steps",), "set either eval_steps or evals_per_epoch, not both"))
    if cfg.saves_per_epoch and cfg.save_steps:
        problems.append((("save_steps",), "set either save_steps or saves_per_epoch, not both"))
    if cfg.warmup_steps is not None and cfg.warmup_ratio is not None:
        problems.append((("warmup_ratio",), "set either warmup_steps or warmup_ratio, not both"))
    if cfg.fp16 and cfg.bf16 is True:
        problems.append((("fp16",), "cannot be combined with bf16: true"))
    if cfg.lora_target_modules is None and not cfg.lora_target_linear:
        pass  # defaults to the attention projections (see model.py)
    if cfg.load_best_model_at_end and not (cfg.val_set_size or cfg.test_datasets):
        problems.append(
            (("load_best_model_at_end",), "needs evaluation data: set val_set_size or test_datasets")
        )
    if cfg.eval_metrics and not (cfg.val_set_size or cfg.test_datasets):
        problems.append((("eval_metrics",), "needs evaluation data: set val_set_size or test_datasets"))
    if cfg.early_stopping_patience and not (cfg.val_set_size or cfg.test_datasets):
        problems.append(
            (("early_stopping_patience",), "needs evaluation data: set val_set_size or test_datasets")
        )
    for i, plugin in enumerate(cfg.plugins or []):
        if plugin != LIGER_PLUGIN:
            problems.append((("plugins", i), f"{plugin} is not supported (only {LIGER_PLUGIN})"))
    if cfg.liger_cross_entropy and cfg.liger_fused_linear_cross_entropy:
        problems.append(
            (
                ("liger_cross_entropy",),
                "choose one of liger_cross_entropy and liger_fused_linear_cross_entropy",
            )
        )
    return problems + _preference_checks(cfg)


def _preference_checks(cfg: Config) -> list[tuple[tuple, str]]:
    """Preference keys only with a preference run, and preference data only there (never silently ignored)."""
    problems = []
    if cfg.rl and cfg.reward_model:
        problems.append((("reward_model",), f"cannot be combined with rl: {cfg.rl}: choose one"))
    if cfg.num_labels is not None and not cfg.reward_model:
        problems.append((("num_labels",), "only used by reward models: set reward_model: true or remove it"))
    for key in ("rl_beta", "dpo_loss_type"):
        if getattr(cfg, key) is not None and cfg.rl != "dpo":
            problems.append(((key,), "only used by DPO: set rl: dpo or remove it"))
    if cfg.max_prompt_len is not None and not cfg.preference:
        problems.append((("max_prompt_len",), "for preference data only: set rl: dpo or reward_model: true"))
    if cfg.preference and cfg.train_on_inputs:
        problems.append((("train_on_inputs",), f"has no meaning for {cfg.training_kind} training: remove it"))
    for key in ("sample_packing", "eval_sample_packing", "group_by_length"):
        if cfg.preference and getattr(cfg, key):
            problems.append(((key,), "not for preference pairs (batches of chosen + rejected, padded)"))
    if cfg.preference and cfg.eval_metrics:
        problems.append((("eval_metrics",), "SFT only: DPO and reward models log rewards and accuracy"))
    for key in ("datasets", "test_datasets"):
        for i, ds in enumerate(getattr(cfg, key) or []):
            pref_type = isinstance(ds.type, PreferenceType)
            chat_pairs = ds.field_chosen is not None or ds.field_rejected is not None
            if not cfg.preference and (pref_type or chat_pairs):
                field = "type" if pref_type else "field_chosen" if ds.field_chosen else "field_rejected"
                loc = (key, i, field)
                problems.append((loc, "preference data: set rl: dpo or reward_model: true to train on it"))
            elif cfg.preference and isinstance(ds.type, str) and ds.type != "chat_template":
                problems.append(
                    (
                        (key, i, "type"),
                        f"{cfg.training_kind} trains on preference pairs: use a dict with field_prompt/field_chosen/field_rejected, or chat_template with field_chosen/field_rejected (got {ds.type})",
                    )
                )
            elif cfg.preference and isinstance(ds.type, DatasetType):
                problems.append(
                    (
                        (key, i, "type"),
                        f"{cfg.training_kind} trains on preference pairs: this format has no chosen/rejected answers (use field_prompt/field_chosen/field_rejected)",
                    )
                )
    return problems


def _known_keys(model: type[BaseModel]) -> set[str]:
    keys = set()
    for name, field in model.model_fields.items():
        keys.add(name)
        if isinstance(field.validation_alias, AliasChoices):
            keys.update(c for c in field.validation_alias.choices if isinstance(c, str))
    return keys


def validate(
    raw: Any,
    source: str = "<config>",
    lines: dict[tuple, int] | None = None,
    overridden: set[tuple] = frozenset(),
) -> Config:
    """Validate a raw mapping into a Config, or raise ConfigError with every problem."""
    lines = lines or {}

    def where(loc: tuple) -> str:
        for n in range(len(loc), 0, -1):
            if loc[:n] in overridden:
                return f"{source}: --set "
            if loc[:n] in lines:
                return f"{source}:{lines[loc[:n]]}: "
        return f"{source}: "

    if not isinstance(raw, dict):
        raise ConfigError([f"{source}: expected a mapping of keys at the top level"])
    problems: list[str] = []
    data = {}
    known = _known_keys(Config)
    for key, value in raw.items():
        key = str(key)
        if key in axolotl_keys.IGNORED or (value is None and key in known):
            continue  # `key:` left empty is axolotl's way of saying "default"
        if key in axolotl_keys.UNSUPPORTED and key not in known:
            if not axolotl_keys.is_off(key, value):
                problems.append(
                    f"{where((key,))}{key}: not supported by finetune yet (remove it or set it to null)"
                )
            continue
        data[key] = value
    _preference_defaults(data, problems, where)
    for key in ("datasets", "test_datasets"):
        if isinstance(data.get(key), list):
            data[key] = [config_yaml.drop_nulls(entry) for entry in data[key]]
            if data.get("rl") or data.get("reward_model"):  # no `type:`: the prompt/chosen/rejected columns
                for entry in data[key]:
                    if isinstance(entry, dict) and "type" not in entry:
                        entry["type"] = PreferenceType().model_dump()
            for i, entry in enumerate(data[key]):
                for name in (
                    [n for n in entry if n in axolotl_keys.DATASET_UNSUPPORTED]
                    if isinstance(entry, dict)
                    else []
                ):
                    if not axolotl_keys.is_off(name, entry.pop(name)):
                        loc = (key, i, name)
                        problems.append(
                            f"{where(loc)}{config_yaml.format_loc(loc)}: not supported by finetune yet (remove it or set it to null)"
                        )
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        seen = set()
        for err in exc.errors():
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and config_yaml.TYPE_TAGS.match(p)))
            if loc in seen:
                continue
            seen.add(loc)
            name = str(loc[-1]) if loc else ""
            if err["type"] == "extra_forbidden":
                parent = (
                    Config
                    if len(loc) == 1
                    else PreferenceType
                    if "pref" in err["loc"]
                    else DatasetType
                    if "type" in loc[:-1]
                    else DatasetConfig
                )
                text = config_yaml.unknown_key(name, _known_keys(parent))
            else:
                text = config_yaml.friendly(err, secret=bool(SECRET_KEY.search(name)))
            problems.append(f"{where(loc)}{config_yaml.format_loc(loc)}: {text}")
        cfg = None
    if cfg is not None:
        problems += [f"{where(loc)}{config_yaml.format_loc(loc)}: {text}" for loc, text in _cross_checks(cfg)]
    if problems:
        raise ConfigError(sorted(problems, key=config_yaml.line_of))
    return cfg


def _preference_defaults(data: dict, problems: list[str], where) -> None:
    """axolotl's deprecated `dpo_beta` is read as rl_beta (the saved config says rl_beta), with a warning."""
    if data.get("dpo_beta") is None:
        return
    if data.get("rl_beta") is not None:
        problems.append(f"{where(('dpo_beta',))}dpo_beta: deprecated name of rl_beta; set only rl_beta")
        return
    data["rl_beta"] = data.pop("dpo_beta")
    print(
        f"warning: {where(('dpo_beta',))}dpo_beta: deprecated (axolotl's old name); read as rl_beta: {data['rl_beta']}",
        file=sys.stderr,
    )


def load(path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read an axolotl-style YAML file (safe loader), apply `--set` overrides, validate."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{source}: config file not found"]) from None
    except (IsADirectoryError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{source}: cannot read config ({exc.__class__.__name__})"]) from None
    try:
        raw = yaml.safe_load(text) or {}
        lines = config_yaml.line_map(yaml.compose(text, Loader=yaml.SafeLoader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f":{mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError([f"{source}{at}: invalid YAML: {problem}"]) from None
    overridden = set()
    for assignment in overrides:
        if isinstance(raw, dict):
            apply_override(raw, assignment)
            overridden.add(tuple(config_yaml.parse_override_path(assignment.partition("=")[0].strip())))
    return validate(raw, source, lines, overridden)


# ---------------------------------------------------------------- saving


def redact(value: Any, key: str = "") -> Any:
    """A copy with secret-looking keys (tokens, API keys, passwords) replaced by ***."""
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, key) for v in value]
    if key and SECRET_KEY.search(key) and isinstance(value, str) and value:
        return REDACTED
    return value


def resolved_dict(cfg: Config, versions: dict[str, str] | None = None) -> dict:
    """The config as run: defaults filled in, secrets redacted. Loads back with `load`."""
    data = cfg.model_dump(mode="json")
    if versions:
        data["finetune_versions"] = versions
    return redact(data)


def to_yaml(cfg: Config, versions: dict[str, str] | None = None) -> str:
    return yaml.safe_dump(resolved_dict(cfg, versions), sort_keys=False, allow_unicode=True, width=120)


def reference_markdown() -> str:
    """The config reference in README, generated from the field descriptions."""
    out = []
    for title, model in (
        ("Top-level keys", Config),
        ("`datasets[]` entries", DatasetConfig),
        ("Custom `type:` dict", DatasetType),
        ("Preference `type:` dict (rl: dpo, reward_model)", PreferenceType),
    ):
        out += [f"#### {title}", "", "| key | default | what it does |", "|---|---|---|"]
        for name, field in model.model_fields.items():
            key = name
            default = (
                "required"
                if field.is_required()
                else f"`{field.default!r}`"
                if field.default is not None
                else ""
            )
            out.append(f"| `{key}` | {default} | {(field.description or '').replace('|', '/')} |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(reference_markdown())
