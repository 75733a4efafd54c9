"""Rules that involve several keys, run on the validated `Config`: each returns (key path, problem) pairs that
config.validate places at the key to change. Each message says what to set instead."""

from __future__ import annotations

from finetune import methods
from finetune.config.checks import ATTENTION_FLAGS, PLUGINS
from finetune.config.datasets import KTO_TYPES, DatasetType, PreferenceType, UnpairedType
from finetune.config.fsdp import fsdp_settings
from finetune.config.fsdp import requested as fsdp_requested
from finetune.config.full_checks import full_checks
from finetune.config.keys_hub import hub_checks
from finetune.config.keys_tracking import tracking_checks
from finetune.config.mistral_checks import mistral_common_checks
from finetune.config.schema import Config


def cross_checks(cfg: Config) -> list[tuple[tuple, str]]:
    """Checks that involve several keys; each problem is reported at the key to change."""
    problems = []
    if cfg.load_in_4bit and cfg.load_in_8bit:
        problems.append((("load_in_8bit",), "cannot be combined with load_in_4bit: choose one"))
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
        pass  # defaults to the attention projections (see model/adapter.py)
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
        if plugin not in PLUGINS:
            problems.append((("plugins", i), f"{plugin} is not supported (only {', '.join(PLUGINS)})"))
    if cfg.liger_cross_entropy and cfg.liger_fused_linear_cross_entropy:
        problems.append(
            (
                ("liger_cross_entropy",),
                "choose one of liger_cross_entropy and liger_fused_linear_cross_entropy",
            )
        )
    problems += gguf_checks(cfg) + full_checks(cfg)
    problems += hub_checks(cfg)
    problems += tracking_checks(cfg) + mistral_common_checks(cfg)
    problems += fsdp_settings(cfg)[1]
    if fsdp_requested(cfg):
        key = methods.of(cfg).key
        if key is not None:
            problems.append(
                ((key,), "FSDP trains supervised fine-tuning only here: use DDP or DeepSpeed for this")
            )
    problems += (
        schedule_checks(cfg) + cut_cross_entropy_checks(cfg) + precision_checks(cfg) + runtime_checks(cfg)
    )
    for key in ("datasets", "test_datasets"):
        for i, ds in enumerate(getattr(cfg, key) or []):
            if ds.overlap_len and ds.type != "completion":
                problems.append(((key, i, "overlap_len"), "only type: completion splits texts into chunks"))
            elif ds.overlap_len and ds.overlap_len >= cfg.sequence_len:
                problems.append(
                    ((key, i, "overlap_len"), f"must be less than sequence_len ({cfg.sequence_len})")
                )
            if ds.weight > 1 and cfg.dataset_exact_deduplication:
                problems.append(
                    (
                        (key, i, "weight"),
                        f"{ds.weight:g} repeats rows that dataset_exact_deduplication removes again: "
                        "set one of them",
                    )
                )
    return problems + preference_checks(cfg)


def gguf_checks(cfg: Config) -> list[tuple[tuple, str]]:
    """A GGUF base is dequantized by transformers, which refuses to quantize it again with bitsandbytes."""
    problems = []
    if cfg.gguf_file and cfg.base_model.lower().endswith(".gguf"):
        problems.append((("gguf_file",), "base_model already names a .gguf file: set one or the other"))
    if cfg.base_is_gguf:
        for key in ("load_in_4bit", "load_in_8bit"):
            if getattr(cfg, key):
                problems.append(
                    (
                        (key,),
                        "a GGUF base is loaded dequantized and transformers cannot quantize it again: "
                        "train LoRA on it (load_in_4bit: false, load_in_8bit: false, adapter: lora), or use "
                        "the model's safetensors weights for QLoRA",
                    )
                )
        if cfg.adapter == "qlora" and not cfg.load_in_4bit:
            problems.append(
                (("adapter",), "qlora needs a 4-bit base, and a GGUF base cannot be one: use lora")
            )
    return problems


def schedule_checks(cfg: Config) -> list[tuple[tuple, str]]:
    """eta_min is the floor of the cosine decay; loss_watchdog_patience counts loss_watchdog_threshold's steps."""
    problems = []
    for key in ("eta_min", "cosine_min_lr_ratio"):
        if getattr(cfg, key) is not None and cfg.lr_scheduler != "cosine":
            problems.append(
                (
                    (key,),
                    f"the end LR of the cosine decay: only with lr_scheduler: cosine (got {cfg.lr_scheduler})",
                )
            )
    if cfg.eta_min is not None and cfg.cosine_min_lr_ratio is not None:
        problems.append((("cosine_min_lr_ratio",), "set either eta_min or cosine_min_lr_ratio, not both"))
    elif cfg.eta_min is not None and cfg.eta_min > cfg.learning_rate:
        problems.append(
            (("eta_min",), f"must be at most learning_rate ({cfg.learning_rate}), got {cfg.eta_min}")
        )
    if cfg.loss_watchdog_patience is not None and cfg.loss_watchdog_threshold is None:
        problems.append(
            (("loss_watchdog_patience",), "needs loss_watchdog_threshold (the loss to watch for)")
        )
    return problems


def precision_checks(cfg: Config) -> list[tuple[tuple, str]]:
    """One dtype for the base: bfloat16/float16 (held without mixed precision) cannot contradict bf16/fp16."""
    problems = []
    if cfg.bfloat16 and cfg.float16:
        problems.append((("float16",), "cannot be combined with bfloat16: choose one"))
    if cfg.bfloat16 and cfg.fp16:
        problems.append((("bfloat16",), "cannot be combined with fp16: true (fp16 mixed precision)"))
    if cfg.float16 and cfg.bf16 is True:
        problems.append((("float16",), "cannot be combined with bf16: true (bf16 mixed precision)"))
    return problems


def runtime_checks(cfg: Config) -> list[tuple[tuple, str]]:
    """Keys that only mean something together with another one; attention flags that disagree."""
    problems = []
    asked = [("attn_implementation", cfg.attn_implementation)] if cfg.attn_implementation else []
    asked += [(key, impl) for key, impl in ATTENTION_FLAGS.items() if getattr(cfg, key)]
    for key, impl in asked[1:]:
        if impl != asked[0][1]:
            problems.append(
                ((key,), f"asks for {impl} attention but {asked[0][0]} for {asked[0][1]}: choose one")
            )
    if cfg.dataloader_prefetch_factor is not None and not cfg.dataloader_num_workers:
        problems.append(
            (("dataloader_prefetch_factor",), "needs dataloader_num_workers > 0 (workers prefetch batches)")
        )
    if cfg.peft_layers_pattern is not None and cfg.peft_layers_to_transform is None:
        problems.append(
            (("peft_layers_pattern",), "only used with peft_layers_to_transform: set it or remove this")
        )
    if cfg.peft_layers_to_transform is not None and isinstance(cfg.lora_target_modules, str):
        problems.append(
            (
                ("peft_layers_to_transform",),
                "cannot be combined with a regex lora_target_modules (peft cannot): list the module names instead",
            )
        )
    return problems


def cut_cross_entropy_checks(cfg: Config) -> list[tuple[tuple, str]]:
    """axolotl allows one cross-entropy replacement at a time; finetune computes cut_cross_entropy with Liger's
    fused linear cross-entropy, so naming both is a contradiction too. Reported at the Liger key."""
    if not cfg.cut_cross_entropy_on:
        return []
    why = "cut_cross_entropy: true" if cfg.cut_cross_entropy else "CutCrossEntropyPlugin listed in plugins"
    return [
        ((key,), f"cannot be combined with cut_cross_entropy (on: {why}): choose one cross-entropy")
        for key in ("liger_cross_entropy", "liger_fused_linear_cross_entropy")
        if getattr(cfg, key)
    ]


def preference_checks(cfg: Config) -> list[tuple[tuple, str]]:
    """What the method table says of the config's method: keys another method owns, keys it refuses, its own
    checks; and preference data only with a method that trains on it (never silently ignored)."""
    problems = []
    method = methods.of(cfg)
    chosen = methods.selected(cfg)
    if len(chosen) > 1:  # reward_model: true and an rl: method
        problems.append(((chosen[0].key,), f"cannot be combined with {chosen[1].selector}: choose one"))
    if cfg.num_labels is not None and not method.score_head:
        problems.append((("num_labels",), "only used by reward models: set reward_model: true or remove it"))
    for key, readers in methods.own_keys().items():
        names = [m.value for m in readers if m.key == "rl"]
        if names and getattr(cfg, key) is not None and method not in readers:
            problems.append(
                ((key,), f"only used by rl: {' / '.join(names)}: set rl: {names[0]} or remove it")
            )
    problems += method.checks(cfg)
    for key, why in method.refuses:  # keys that mean nothing for this method
        if getattr(cfg, key) not in (None, False, 0, "", []):
            problems.append(((key,), why.format(name=method.name)))
    if cfg.max_prompt_len is not None and not method.preference_data:
        problems.append((("max_prompt_len",), "for preference data only: set rl: dpo or reward_model: true"))
    for key in ("datasets", "test_datasets"):
        for i, ds in enumerate(getattr(cfg, key) or []):
            problems += _data_fits_method(method, ds, (key, i))
    return problems


def _data_fits_method(method, ds, where: tuple) -> list[tuple[tuple, str]]:
    """A dataset entry's layout against what the method reads: unpaired rows (KTO), pairs, or answers."""
    pref_type = isinstance(ds.type, PreferenceType)
    chat_pairs = ds.field_chosen is not None or ds.field_rejected is not None
    unpaired = isinstance(ds.type, UnpairedType) or ds.type in KTO_TYPES
    if unpaired and method.rows != "unpaired":
        text = (
            f"{method.selector} needs chosen/rejected pairs; rl: kto reads unpaired rows"
            if method.preference_data
            else "set rl: kto to train on them"
        )
        return [((*where, "type"), f"unpaired rows (a completion and a true/false label): {text}")]
    if unpaired:
        return []
    if not method.preference_data and (pref_type or chat_pairs):
        field = "type" if pref_type else "field_chosen" if ds.field_chosen else "field_rejected"
        return [((*where, field), "preference data: set rl: dpo or reward_model: true to train on it")]
    if method.preference_data and isinstance(ds.type, str) and ds.type != "chat_template":
        return [
            (
                (*where, "type"),
                f"{method.name} trains on preference pairs: use a dict with field_prompt/field_chosen/field_rejected, or chat_template with field_chosen/field_rejected (got {ds.type})",
            )
        ]
    if method.preference_data and isinstance(ds.type, DatasetType):
        return [
            (
                (*where, "type"),
                f"{method.name} trains on preference pairs: this format has no chosen/rejected answers (use field_prompt/field_chosen/field_rejected)",
            )
        ]
    return []
