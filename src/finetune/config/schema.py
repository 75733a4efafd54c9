"""The top-level config schema: one flat pydantic model, because the YAML is flat (axolotl's keys).

The keys are declared by concern in keys_model.py (model, adapter, data) and keys_train.py
(training, speed-ups, preference, tracking); `Config` joins them, in that order (the README table's order and
the saved config.yml's order), and adds the single-key checks and the derived values. Dataset entries are in
datasets.py, cross-key checks in cross_checks.py, reading and validating a file in config/__init__.py
(import everything from there).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import PrivateAttr, field_validator

from finetune import methods
from finetune.config import checks
from finetune.config.checks import CCE_PLUGIN
from finetune.config.datasets import looks_local
from finetune.config.keys_hub import HubKeys
from finetune.config.keys_model import DataKeys, ModelKeys, Positive  # noqa: F401 - Positive re-exported
from finetune.config.keys_tracking import TrackingKeys
from finetune.config.keys_train import PreferenceKeys, TrainingKeys


class Config(TrackingKeys, HubKeys, PreferenceKeys, TrainingKeys, DataKeys, ModelKeys):
    """Every key a finetune run reads. Names follow axolotl so existing configs work unchanged.

    (pydantic orders inherited fields from the last base to the first: model, data, training, preference,
    hub, then lm-eval and the trackers.)
    """

    # The config file's folder (set by config.load): where `trl.reward_funcs` modules are found (and, by train only, imported).
    _config_dir: str | None = PrivateAttr(None)

    # Single-key checks (checks.py); pydantic reports them at the key.
    _deepspeed_exists = field_validator("deepspeed")(checks.deepspeed_exists)
    _model_paths_exist = field_validator(
        "base_model", "base_model_config", "tokenizer_config", "lora_model_dir"
    )(checks.model_path_exists)
    _known_rl = field_validator("rl")(checks.known_rl)
    _known_dpo_loss = field_validator("dpo_loss_type")(checks.known_dpo_loss)
    _known_optimizer = field_validator("optimizer")(checks.known_optimizer)
    _known_scheduler = field_validator("lr_scheduler")(checks.known_scheduler)
    _low_cpu_mem_usage = field_validator("low_cpu_mem_usage")(checks.low_cpu_mem_usage_only_true)
    _known_lora_init = field_validator("peft_init_lora_weights")(checks.known_lora_init)

    # --- derived values (never stored back into the config)
    @property
    def quantized_4bit(self) -> bool:
        return self.load_in_4bit or self.adapter == "qlora"

    @property
    def hub_ids(self) -> list[str]:
        """The hub ids a run reads: base model, tokenizer, base config and datasets that are not local paths."""
        ids = [
            name
            for name in (self.base_model, self.tokenizer_config, self.base_model_config)
            if name and not Path(name).expanduser().exists()
        ]
        ids += [ds.path for ds in [*self.datasets, *(self.test_datasets or [])] if not looks_local(ds.path)]
        return ids

    @property
    def base_source(self) -> tuple[str, str | None]:
        """(hub id or folder, GGUF file name or None) to pass to from_pretrained as (path, gguf_file=...):
        `base_model: models/x.Q4_1.gguf` is the folder `models` and the file `x.Q4_1.gguf`."""
        if self.base_model.lower().endswith(".gguf"):
            path = Path(self.base_model).expanduser()
            return str(path.parent), path.name
        return self.base_model, self.gguf_file

    @property
    def base_is_gguf(self) -> bool:
        return self.base_source[1] is not None

    def gguf_kwargs(self, source: str) -> dict:
        """`{"gguf_file": name}` for from_pretrained when `source` is the GGUF base's folder, else {}."""
        folder, gguf_file = self.base_source
        return {"gguf_file": gguf_file} if gguf_file and source == folder else {}

    @property
    def requested_attention(self) -> str:
        """The attention kernel the config asks for: attn_implementation, else axolotl's older flags, else sdpa
        (cross_checks.py refuses flags that disagree; model.attn_implementation decides what can run)."""
        return self.attn_implementation or next(
            (impl for key, impl in checks.ATTENTION_FLAGS.items() if getattr(self, key)), "sdpa"
        )

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
        """`sft`, `reward`, or the rl: method: the name of the method table's record (finetune.methods)."""
        return methods.of(self).name

    @property
    def config_dir(self) -> str | None:
        return self._config_dir
