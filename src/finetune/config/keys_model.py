"""The keys of the base model, its adapter and the data: the first half of `Config` (schema.py).

Each group is a plain pydantic model that `Config` inherits from, only to keep files small: the groups are
never used on their own. Their field order is the README table's and the saved config.yml's.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field

from finetune.config.datasets import DatasetConfig, StrictModel

Positive = Annotated[int, Field(gt=0)]


class ModelKeys(StrictModel):
    # --- model
    base_model: str = Field(
        description="Hub id or local folder of the base model, or a local `.gguf` file (loaded dequantized)."
    )
    gguf_file: str | None = Field(
        None,
        description="A GGUF file inside base_model (a folder or hub repo) to load instead of safetensors: "
        "transformers dequantizes it to the training dtype, and its tokenizer and chat template are used.",
    )
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
    tokenizer_use_mistral_common: bool = Field(
        False,
        description="Tokenize with Mistral's own library, mistral-common (`tekken.json` or `tokenizer.model.v*` in the model folder), and its chat format for `type: chat_template` data, trained turn by turn with exact masks; supervised fine-tuning only. Needs `pip install 'finetune[mistral]'`. Off: the Hugging Face tokenizer files are used even when mistral-common is installed.",
    )
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
        description="Storage dtype of packed 4-bit weights (same NF4 values); default: the training dtype under DeepSpeed ZeRO-3 or FSDP (so they shard like every other weight), else uint8.",
    )
    bnb_4bit_quant_type: Literal["nf4", "fp4"] | None = Field(
        None, description="4-bit data type: nf4 (default, the QLoRA paper's) or fp4."
    )
    bnb_4bit_use_double_quant: bool | None = Field(
        None, description="Quantize the 4-bit blocks' scales too (default true: ~0.4 bits a weight less)."
    )
    bnb_4bit_compute_dtype: Literal["bfloat16", "float16", "float32"] | None = Field(
        None,
        description="dtype the 4-bit layers compute in (default: the run's dtype: bf16 on a GPU that has it, else fp32).",
    )
    bnb_config_kwargs: dict[str, Any] | None = Field(
        None, description="Extra BitsAndBytesConfig arguments (they win over the keys above)."
    )
    bf16: bool | Literal["auto"] | None = Field(
        "auto", description="bf16 mixed precision; `auto` uses it where the hardware supports it."
    )
    fp16: bool | None = Field(None, description="fp16 mixed precision (older GPUs).")
    tf32: bool | None = Field(None, description="Allow TF32 matmuls on Ampere+ GPUs.")
    bfloat16: bool | None = Field(
        None,
        description="Hold the base's weights in bf16 without mixed precision (axolotl's non-AMP key): half the memory of fp32, also on CPU (where `bf16: auto` keeps fp32). The adapter stays fp32.",
    )
    float16: bool | None = Field(
        None,
        description="Hold the base's weights in fp16 without mixed precision (axolotl's non-AMP key). The adapter stays fp32.",
    )
    overrides_of_model_config: dict[str, Any] | None = Field(
        None,
        validation_alias=AliasChoices("overrides_of_model_config", "model_config"),
        description="Settings of the base's model config changed before it loads, e.g. `{output_router_logits: true}` (a MoE router's load-balancing loss); each must be a setting that config has. axolotl writes it `model_config`. train, merge, generate and eval apply it alike.",
    )
    attn_implementation: str | None = Field(
        None, description="Attention kernel: sdpa (default), eager, flash_attention_2 ..."
    )
    flash_attention: bool | None = Field(
        None, description="Shorthand for attn_implementation: flash_attention_2."
    )
    sdp_attention: bool | None = Field(
        None, description="axolotl's older flag for attn_implementation: sdpa."
    )
    eager_attention: bool | None = Field(
        None, description="axolotl's older flag for attn_implementation: eager."
    )
    flex_attention: bool | None = Field(
        None, description="axolotl's older flag for attn_implementation: flex_attention."
    )
    xformers_attention: bool | None = Field(
        None,
        description="axolotl's xformers kernel. transformers has no xformers attention, so this runs as sdpa, whose memory-efficient kernel computes the same attention (a note says so).",
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
        None,
        description="lora or qlora (qlora implies load_in_4bit). Absent or null: full fine-tuning, as in axolotl: every weight of a 16/32-bit base trains (supervised fine-tuning only), which needs memory for the weights' gradients and optimizer states (about 4x the model in fp32 AdamW, before activations), and the run saves a whole model instead of an adapter.",
    )
    unfrozen_parameters: list[str] | None = Field(
        None,
        description="axolotl's patterns over parameter names (`lm_head.weight`, `model.layers.0.mlp.down_proj.weight`; a `.` is a literal dot, matched from the name's start): with no adapter only the matching parameters train; with an adapter they train beside it and are saved in unfrozen_parameters.safetensors next to it. A pattern that matches nothing is refused at train start.",
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
    peft_layers_to_transform: list[Annotated[int, Field(ge=0)]] | None = Field(
        None,
        validation_alias=AliasChoices("peft_layers_to_transform", "lora_layers_to_transform"),
        description="Adapt only these transformer layers (indices from 0; default: every layer).",
    )
    peft_layers_pattern: list[str] | None = Field(
        None,
        description="With peft_layers_to_transform: the name of the model's list of layers (e.g. `layers`), when peft cannot find it by itself.",
    )
    peft_init_lora_weights: bool | str | None = Field(
        None,
        description="How a fresh adapter starts: true (default: A random, B zero, so training starts from the base), `gaussian` (A Gaussian-scaled), or false (both random: the adapter changes the base at once; for tests).",
    )
    lora_model_dir: str | None = Field(
        None, description="Start from this existing adapter instead of a fresh one."
    )


class DataKeys(StrictModel):
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
        None,
        validation_alias=AliasChoices("dataset_processes", "dataset_num_proc"),
        description="Processes for tokenization (default: CPU count). axolotl's newer name: `dataset_num_proc`.",
    )
    dataset_exact_deduplication: bool = Field(False, description="Drop exact duplicate rows.")
    min_sample_len: Positive | None = Field(
        None, description="Drop rows of fewer tokens than this (prompt and answer together), as axolotl does."
    )
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
    batch_flattening: bool | None = Field(
        None,
        description="No padding, and the same optimizer steps as unpacked: micro_batch_size rows a batch, flattened into one padding-free row (position_ids restarting, axolotl's meaning); flash-attention's varlen kernel keeps the rows apart on a GPU, and elsewhere (CPU, sdpa) attention runs per row. Unset (the default): on for SFT wherever attention can keep the rows apart and no other key shapes the batches (sample_packing, group_by_length, pad_to_sequence_len). false: rows padded per batch (the hand-written HF script's arithmetic, bit for bit). true with eager attention groups rows by length instead. Unlike sample_packing it keeps rows / micro_batch_size steps an epoch.",
    )
