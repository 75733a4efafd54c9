"""axolotl keys beside the top-level ones finetune does not implement (axolotl_keys.py): those it accepts and
ignores because they change nothing here, and the `datasets[]` entry keys it does not implement yet (off or
refused, by the same rule as the top-level ones)."""

from __future__ import annotations

# Keys axolotl accepts and finetune accepts too, but ignores because they change nothing here.
IGNORED: frozenset[str] = frozenset(
    {
        "strict",  # axolotl: overwrite model config keys strictly; no effect for us
        "debug",
        "local_rank",  # set by launchers
        "remove_unused_columns",  # our collator decides
        "tokenizer_legacy",
        "hf_use_auth_token",  # the hub token comes from the environment (HF_TOKEN), never from YAML
        "is_llama_derived_model",  # legacy architecture hints: the model's config.json says it
        "is_falcon_derived_model",
        "is_mistral_derived_model",
        "is_qwen_derived_model",
        "world_size",  # set at run time by axolotl, never by users
        "device",
        "ddp",
        "axolotl_config_path",
        "is_preprocess",
        "include_tokens_per_second",  # real tokens/s is always logged and in the results
    }
)


# Keys of a `datasets[]` entry that axolotl knows and finetune does not implement yet (same rule: off or refused).
DATASET_UNSUPPORTED: frozenset[str] = frozenset(
    {
        "chat_template_jinja",
        "conversation",
        "field_human",
        "field_model",
        "field_thinking",
        "field_tools",
        "input_format",
        "input_transform",
        "length",
        "logprobs_field",
        "max_completion_length",
        "max_input_id",
        "message_field_training",
        "message_field_training_detail",
        "min_input_id",
        "preprocess_shards",
        "seed",
        "sequence_length",
        "shards",
        "shards_idx",
        "split_thinking",
        "step_separator",
        "temperature",
        "template_thinking_key",
        "train_on_last_step_only",
        "trust_remote_code",
    }
)
