"""The keys of training, speed-ups, preference training and tracking: the second half of `Config`
(schema.py), split off only to keep files small.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AliasChoices, Field, field_validator

from finetune.config.checks import DPO_LOSSES, OPTIMIZERS, SCHEDULERS
from finetune.config.datasets import StrictModel
from finetune.config.keys_model import Positive
from finetune.config.trl_keys import TrlConfig


class TrainingKeys(StrictModel):
    # --- training
    output_dir: str = Field(
        "./outputs/lora-out", description="Where the adapter, checkpoints, card and logs go."
    )
    micro_batch_size: Positive | Literal["auto"] = Field(
        1,
        description="Rows per device per step; `auto`: the largest power of two (up to 128) that `finetune plan` predicts fits the device.",
    )
    eval_batch_size: Positive | None = Field(
        None, description="Rows per device per eval step (default: micro_batch_size)."
    )
    gradient_accumulation_steps: Positive = Field(1, description="Micro-batches per optimizer step.")
    batch_size: Positive | None = Field(
        None,
        description="axolotl's older way to give the batch: rows per optimizer step on each device. Read as gradient_accumulation_steps = batch_size / micro_batch_size (what the saved config says); set one of the two.",
    )
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
    cosine_min_lr_ratio: float | None = Field(
        None,
        ge=0,
        le=1,
        description="lr_scheduler: cosine only: the cosine decay ends at this fraction of learning_rate instead of 0 (axolotl's key; eta_min sets the same floor as a learning rate).",
    )
    lr_scheduler_kwargs: dict[str, Any] | None = Field(
        None,
        description="Extra arguments of the learning-rate schedule (transformers' get_scheduler), e.g. `{num_cycles: 2}` for cosine_with_restarts.",
    )
    learning_rate: float = Field(2e-4, gt=0, description="Peak learning rate.")
    loraplus_lr_ratio: float | None = Field(
        None,
        gt=0,
        description="LoRA+: the adapter's B matrices learn this many times faster than its A matrices (the paper suggests 16, with a somewhat lower learning_rate); peft's LoRA+ optimizer.",
    )
    loraplus_lr_embedding: float | None = Field(
        None, gt=0, description="LoRA+: learning rate of adapted embedding layers (default 1e-6)."
    )
    neftune_noise_alpha: float | None = Field(
        None,
        gt=0,
        validation_alias=AliasChoices("neftune_noise_alpha", "noisy_embedding_alpha"),
        description="NEFTune: noise of this scale (divided by sqrt(tokens x hidden size)) added to the input embeddings during training only; often helps instruction tuning (e.g. 5). The HF Trainer's own implementation.",
    )
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

    @field_validator("eval_strategy", "save_strategy", mode="before")
    @classmethod
    def _bare_no(cls, value):
        """YAML 1.1 reads a bare `no` as false (`save_strategy: no`, `--set save_strategy=no`): the "no" strategy."""
        return "no" if value is False else value

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
    fsdp_version: int | None = Field(
        None,
        description="FSDP: 2 (PyTorch's fully_shard through accelerate; FSDP1 is not supported). Any fsdp key turns FSDP on.",
    )
    fsdp_config: dict[str, Any] | None = Field(
        None,
        description="FSDP2 settings, axolotl's names (an fsdp_ prefix is allowed): reshard_after_forward, offload_params, cpu_ram_efficient_loading, state_dict_type (FULL_STATE_DICT / SHARDED_STATE_DICT: checkpoint layout), auto_wrap_policy, transformer_layer_cls_to_wrap, activation_checkpointing; FSDP1's sharding_strategy is read as reshard_after_forward.",
    )
    fsdp: list[str] | str | None = Field(
        None,
        description="axolotl's older FSDP list: full_shard / shard_grad_op (resharding), offload (parameters to CPU), auto_wrap (always on in FSDP2).",
    )
    ddp_find_unused_parameters: bool | None = Field(
        None,
        description="Multi-process DDP (no DeepSpeed): look for trainable weights that got no gradient after each backward. Needed only when some trainable weights can sit out a forward; costs a walk over the autograd graph each step. Default false: every LoRA weight takes part in every forward.",
    )
    ddp_timeout: Positive | None = Field(
        None,
        description="Multi-process runs: seconds a process waits for the others (a collective, or the main process preparing the data) before the run fails (default 1800).",
    )
    ddp_bucket_cap_mb: Positive | None = Field(
        None,
        description="DDP (no DeepSpeed): size of the gradient buckets all-reduced together (default 25).",
    )
    ddp_broadcast_buffers: bool | None = Field(
        None,
        description="DDP (no DeepSpeed): copy the model's buffers from the first process at each forward (default off).",
    )
    dataloader_num_workers: int | None = Field(
        None,
        ge=0,
        description="Processes that build batches in the background (default 0: in the training process; collating token ids is cheap).",
    )
    dataloader_prefetch_factor: Positive | None = Field(
        None, description="Batches each dataloader worker prepares ahead (needs dataloader_num_workers > 0)."
    )
    dataloader_pin_memory: bool | None = Field(
        None,
        description="Batches in page-locked memory for faster copies to the GPU (default: on with a GPU; no effect on CPU).",
    )
    torch_empty_cache_steps: Positive | None = Field(
        None,
        description="Empty the GPU's memory cache every N steps (less fragmentation, a little slower; no effect on CPU).",
    )
    torch_compile: bool | Literal["auto"] | None = Field(
        None,
        description="torch.compile the model on a GPU (compiles per new shape; skipped on CPU, where it measured slower, with a note; `auto`: the same without the note).",
    )
    torch_compile_backend: str | None = Field(None, description="torch.compile backend (default inductor).")
    torch_compile_mode: str | None = Field(
        None, description="torch.compile mode: default, reduce-overhead, max-autotune ..."
    )
    # --- Liger kernels (GPU, `pip install liger-kernel`; skipped on CPU): fused Triton kernels, less memory
    plugins: list[str] | None = Field(
        None,
        description="axolotl plugins: axolotl.integrations.liger.LigerPlugin (its liger_* keys below are what takes effect) axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin (turns cut_cross_entropy on, as in axolotl) and axolotl.integrations.lm_eval.LMEvalPlugin (accepted; its lm_eval_* keys below are what takes effect).",
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


class PreferenceKeys(StrictModel):
    # --- preference training (reward models, DPO): see data/preference.py and train/preference.py
    rl: str | None = Field(
        None,
        description="Train with TRL instead of SFT. On preference pairs: `dpo` (DPOTrainer; the reference model is the base with the adapter switched off, so no second copy is loaded; ~2x an SFT step), `kto` (KTOTrainer: unpaired rows with a true/false label, and each pair as a desirable and an undesirable row; reference as for DPO), `orpo` (ORPO: SFT loss + odds-ratio penalty, no reference model), `simpo` (TRL's CPO with loss_type simpo: length-normalized margin, no reference model). Online: `grpo` (GRPOTrainer: samples trl.num_generations completions per prompt of the SFT-format datasets, scores them with trl.reward_funcs, and pushes the policy toward the better ones; a step costs num_generations generations of max_completion_length tokens).",
    )
    trl: TrlConfig | None = Field(
        None,
        description="`rl: grpo` settings, axolotl's `trl:` block: num_generations, max_completion_length, beta, temperature, top_p, top_k, min_p, repetition_penalty, num_iterations, epsilon, scale_rewards, reward_funcs, reward_weights, use_vllm (see the README's RL section).",
    )
    rl_beta: float | None = Field(
        None,
        gt=0,
        description="DPO / KTO / SimPO beta: how strongly the policy is held to the reference (DPO, KTO; larger = closer) or the reward scale (SimPO). Default 0.1 (TRL's DPO and KTO), 2.0 for SimPO (the paper's).",
    )
    kto_desirable_weight: float | None = Field(
        None, gt=0, description="KTO: weight of the desirable (chosen) rows' loss; default 1.0."
    )
    kto_undesirable_weight: float | None = Field(
        None, gt=0, description="KTO: weight of the undesirable (rejected) rows' loss; default 1.0."
    )
    orpo_alpha: float | None = Field(
        None,
        gt=0,
        description="ORPO: weight of the odds-ratio term added to the SFT loss (TRL's beta); default 0.1.",
    )
    simpo_gamma: float | None = Field(
        None, ge=0, description="SimPO: target reward margin (TRL's simpo_gamma); default 0.5."
    )
    cpo_alpha: float | None = Field(
        None,
        ge=0,
        description="SimPO: weight of the SFT term on the chosen answers (TRL's cpo_alpha); default 0 (pure SimPO).",
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
