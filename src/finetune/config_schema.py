"""The top-level config schema: one flat pydantic model, because the YAML is flat (axolotl's keys).

Fields are grouped by concern with `# ---` banners; their order is the README table's order and the saved
config.yml's order. Dataset entries are in config_datasets.py, value and cross-key checks in config_checks.py,
reading and validating a file in config.py (import everything from there).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, field_validator

from finetune import config_checks as checks
from finetune.config_checks import CCE_PLUGIN, DPO_LOSSES, OPTIMIZERS, RL_LATER, SCHEDULERS
from finetune.config_datasets import DatasetConfig, StrictModel

Positive = Annotated[int, Field(gt=0)]


class Config(StrictModel):
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
    low_cpu_mem_usage: bool | None = Field(
        None,
        description="Accepted as `true`, which is what always happens: transformers 5 builds the model on the meta device and loads the weights straight into it (or partitioned, under ZeRO-3), never a full random copy first. `false` is refused: transformers 5 removed that slower path.",
    )
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
        "drop",
        description="What happens to rows longer than sequence_len (completion texts are split into chunks instead, see overlap_len).",
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
        None,
        description="Pad every batch to sequence_len (steadier GPU memory). On GPU only: on CPU it would "
        "only cost time (the loss is the same), so it is left out there, and with sample_packing.",
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
    eta_min: float | None = Field(
        None,
        ge=0,
        description="lr_scheduler: cosine only: the learning rate the cosine decay ends at (default 0), at most learning_rate; runs as transformers' cosine_with_min_lr schedule.",
    )
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
    loss_watchdog_threshold: float | None = Field(
        None,
        gt=0,
        description="Stop training when the logged training loss stays above this for loss_watchdog_patience logged steps in a row (a diverging run stops instead of spending its budget; a NaN loss counts as above). The adapter trained so far is saved and the run says why it stopped.",
    )
    loss_watchdog_patience: Positive | None = Field(
        None, description="Logged steps in a row above loss_watchdog_threshold before stopping (default 3)."
    )
    load_best_model_at_end: bool = Field(False, description="Keep the checkpoint with the best eval loss.")
    resume_from_checkpoint: str | None = Field(None, description="Checkpoint folder to resume from.")
    auto_resume_from_checkpoints: bool = Field(
        False, description="Resume from the last complete checkpoint in output_dir."
    )
    deepspeed: str | dict[str, Any] | None = Field(
        None, description="DeepSpeed config: a JSON path or an inline mapping."
    )
    ddp_find_unused_parameters: bool | None = Field(
        None,
        description="Multi-process DDP (no DeepSpeed): look for trainable weights that got no gradient after each backward. Needed only when some trainable weights can sit out a forward; costs a walk over the autograd graph each step. Default false: every LoRA weight takes part in every forward.",
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
        description="axolotl plugins: axolotl.integrations.liger.LigerPlugin (its liger_* keys below are what takes effect) and axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin (turns cut_cross_entropy on, as in axolotl).",
    )
    cut_cross_entropy: bool | None = Field(
        None,
        description="Cross-entropy without storing the full logits (axolotl's CutCrossEntropyPlugin; default: on when that plugin is listed). finetune computes it with Liger's fused linear cross-entropy (the same loss, lm_head and loss fused in chunks), so it needs liger-kernel on a GPU and is skipped on CPU; not with liger_cross_entropy or liger_fused_linear_cross_entropy.",
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

    # Single-key checks (config_checks.py); pydantic reports them at the key.
    _deepspeed_exists = field_validator("deepspeed")(checks.deepspeed_exists)
    _adapter_exists = field_validator("lora_model_dir")(checks.adapter_exists)
    _known_rl = field_validator("rl")(checks.known_rl)
    _known_dpo_loss = field_validator("dpo_loss_type")(checks.known_dpo_loss)
    _known_optimizer = field_validator("optimizer")(checks.known_optimizer)
    _known_scheduler = field_validator("lr_scheduler")(checks.known_scheduler)
    _low_cpu_mem_usage = field_validator("low_cpu_mem_usage")(checks.low_cpu_mem_usage_only_true)

    # --- derived values (never stored back into the config)
    @property
    def quantized_4bit(self) -> bool:
        return self.load_in_4bit or self.adapter == "qlora"

    @property
    def cut_cross_entropy_on(self) -> bool:
        """cut_cross_entropy as axolotl reads it: the key if set, else on when CutCrossEntropyPlugin is listed."""
        if self.cut_cross_entropy is not None:
            return self.cut_cross_entropy
        return CCE_PLUGIN in (self.plugins or [])

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
