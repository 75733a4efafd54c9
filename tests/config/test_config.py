"""The config loader: what it accepts, and the exact one-line messages for what it refuses."""

from __future__ import annotations

import pytest
import yaml
from pydantic import ValidationError

from conftest import FINLORA, ROOT, needs_shared
from finetune import config
from finetune.config import ConfigError

GOOD = """\
base_model: some-org/some-model
adapter: lora
lora_r: 8
lora_alpha: 16
datasets:
  - path: {data}
    type:
      field_instruction: context
      field_output: target
      format: "[INST] {{instruction}} [/INST]"
output_dir: {out}
"""


@pytest.fixture()
def data_file(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"context": "q", "target": "a"}\n')
    return path


@pytest.fixture()
def good_text(data_file, tmp_path):
    return GOOD.format(data=data_file, out=tmp_path / "out")


def problems(path, overrides=()):
    with pytest.raises(ConfigError) as info:
        config.load(path, overrides)
    return info.value.problems


def test_good_config_loads_frozen_with_defaults(write_config, good_text):
    cfg = config.load(write_config(good_text))
    assert cfg.lora_r == 8 and cfg.seed == 42 and cfg.sequence_len == 2048
    assert cfg.datasets[0].type.field_output == "target"
    with pytest.raises(ValidationError):
        cfg.lora_r = 4  # frozen: validated once, then trusted


def test_typos_wrong_types_unsupported_and_missing_files_all_reported_at_once(write_config, good_text):
    text = good_text.replace("lora_alpha: 16", "lora_alhpa: 16")
    text = text.replace("lora_r: 8", "lora_r: eight")
    text += "qat:\n  weight_dtype: int8\nmicro_batch_size: 0\nlearning_rate: fast\ndeepspeed: nowhere/zero9.json\n"
    text = text.replace("field_output: target", "field_output: [target]")
    path = write_config(text)
    assert problems(path) == [
        f"{path}:3: lora_r: expected an integer (got 'eight')",
        f"{path}:4: lora_alhpa: unknown key (did you mean lora_alpha?)",
        f"{path}:9: datasets[0].type.field_output: expected a string",
        f"{path}:12: qat: not supported by finetune yet (remove it or set it to null)",
        f"{path}:14: micro_batch_size: must be greater than 0 (got 0)",
        f"{path}:15: learning_rate: expected a number (got 'fast')",
        f"{path}:16: deepspeed: deepspeed config not found: nowhere/zero9.json",
    ]


def test_missing_dataset_file_and_unknown_dataset_key(write_config, tmp_path):
    path = write_config(
        {
            "base_model": "org/m",
            "adapter": "lora",
            "datasets": [{"path": str(tmp_path / "nope.jsonl"), "typ": "alpaca"}],
        }
    )
    assert problems(path) == [
        f"{path}:4: datasets[0].path: dataset file not found: {tmp_path / 'nope.jsonl'}",
        f"{path}:5: datasets[0].typ: unknown key (did you mean type?)",
    ]


def test_unsupported_dataset_type_and_values(write_config, data_file):
    path = write_config(
        {
            "base_model": "org/m",
            "adapter": "dora",
            "optimizer": "adamw_torch_4bit",
            "datasets": [{"path": str(data_file), "type": "alpaca:jeopardy"}],
        }
    )
    got = problems(path)
    assert got[0] == f"{path}:2: adapter: must be 'lora' or 'qlora' (got 'dora')"
    assert got[1].startswith(
        f"{path}:3: optimizer: 'adamw_torch_4bit' is not supported (supported: adamw_torch,"
    )
    assert (
        got[2]
        == f"{path}:6: datasets[0].type: unknown dataset type 'alpaca:jeopardy' (did you mean alpaca:phi or alpaca:chat?)"
    )


@pytest.mark.parametrize(
    "typo, hint",
    [
        ("alpacca", "did you mean alpaca or alpaca:phi?"),
        ("llama3.ultr", "did you mean llama3.ultra"),
        ("chat_templat", "did you mean chat_template"),
        ("zzzz", "known: alpaca, chat_template, completion, input_output, ... or a field_* dict"),
    ],
)
def test_an_unknown_dataset_type_names_the_nearest_types_in_a_short_line(write_config, data_file, typo, hint):
    path = write_config({"datasets": [{"path": str(data_file), "type": typo}]})
    (line,) = [p for p in problems(path) if "datasets[0].type" in p]
    assert hint in line and len(line) - len(str(path)) < 160  # not the 450-character list of every type


def test_sharegpt_type_says_how_to_port_it(write_config, data_file):
    path = write_config({"base_model": "org/m", "datasets": [{"path": str(data_file), "type": "sharegpt"}]})
    assert problems(path) == [
        f"{path}:4: datasets[0].type: 'sharegpt' is not supported (axolotl removed it as well): use type: "
        "chat_template with field_messages: conversations, message_property_mappings: {role: from, content: "
        "value} and roles: {user: [human], assistant: [gpt]}"
    ]


def test_unsupported_keys_at_their_off_value_are_accepted(write_config, good_text):
    text = good_text + "qat:\nplugins: []\nliger_rope: false\nrl:\nstrict: false\ncontext_parallel_size: 1\n"
    cfg = config.load(write_config(text))
    assert not hasattr(cfg, "qat")


def test_null_means_default_as_in_axolotl(write_config, good_text):
    cfg = config.load(write_config(good_text.replace("lora_r: 8", "lora_r:") + "seed:\nwandb_project:\n"))
    assert cfg.lora_r == 8 and cfg.seed == 42 and cfg.wandb_project is None


def test_cross_key_checks_name_the_key_to_change(write_config, good_text):
    path = write_config(
        good_text + "load_in_4bit: true\nload_in_8bit: true\neval_steps: 5\nevals_per_epoch: 2\n"
    )
    assert problems(path) == [
        f"{path}:13: load_in_8bit: cannot be combined with load_in_4bit: choose one",
        f"{path}:14: eval_steps: set either eval_steps or evals_per_epoch, not both",
    ]


def test_no_adapter_is_full_finetuning_and_a_4bit_base_is_refused_with_one_line(write_config, data_file):
    path = write_config({"base_model": "org/m", "datasets": [{"path": str(data_file)}]})
    assert config.load(path).adapter is None  # axolotl's default: every weight trains
    path = write_config({"base_model": "org/m", "load_in_4bit": True, "datasets": [{"path": str(data_file)}]})
    assert problems(path) == [
        f"{path}:2: load_in_4bit: full fine-tuning (no adapter) updates every weight, and 4-bit weights cannot "
        "be updated: set load_in_4bit: false, or train an adapter (adapter: qlora)"
    ]


MODEL_PATH_KEYS = ("base_model", "base_model_config", "tokenizer_config", "lora_model_dir")


@pytest.mark.parametrize("key", MODEL_PATH_KEYS)
@pytest.mark.parametrize(
    "value", ["/no/such/folder", "./nope", "../nope", "~/no-such-model-here", "a/b/c", "models/x.Q4_K_M.gguf",
              "my model", "org/name/"],
)  # fmt: skip
def test_a_local_path_that_does_not_exist_is_a_problem(write_config, good_text, key, value):
    """A value that cannot be a hub id (`name` or `org/name`) names a local path, which must exist."""
    text = good_text if key == "base_model" else good_text + f"{key}: placeholder\n"
    path = write_config(text.replace("some-org/some-model" if key == "base_model" else "placeholder", value))
    line = 1 if key == "base_model" else 12
    assert problems(path) == [f"{path}:{line}: {key}: not found: {value} (a hub id is name or org/name)"]


@pytest.mark.parametrize("key", MODEL_PATH_KEYS)
def test_hub_ids_and_existing_paths_are_accepted(write_config, good_text, tmp_path, key):
    gguf = tmp_path / "model.Q4_K_M.gguf"  # base_model may name a local GGUF file
    gguf.write_bytes(b"GGUF")
    for value in ("org/name", "name", "Org-1/name_2.5", str(tmp_path), str(gguf)):
        text = good_text if key == "base_model" else good_text + f"{key}: {value}\n"
        cfg = config.load(write_config(text.replace("some-org/some-model", value)))
        assert getattr(cfg, key) == value


YAML_MISTAKES = {  # text, the line of the mistake
    "unclosed bracket": ("base_model: a\nlora_r: [1, 2\nadapter: lora\n", 2),
    "unclosed quote at the end": ('base_model: a\nadapter: lora\nformat: "[INST] {instruction}\n', 3),
    "unclosed quote, closed by a later one": (
        'base_model: a\nformat: "[INST] {instruction}\nadapter: lora\nsystem_prompt: "You are"\nseed: 1\n',
        2,
    ),
    "missing colon": ("base_model: a\nlora_r 8\nadapter: lora\n", 2),
    "missing colon in a list entry": (
        "base_model: a\ndatasets:\n  - path: x.jsonl\n    type alpaca\n  - path: y.jsonl\nadapter: lora\n",
        4,
    ),
    "bad indentation": (
        "base_model: a\ndatasets:\n  - path: x.jsonl\n    type: alpaca\n   split: train\n",
        5,
    ),
    "indented key": ("base_model: a\nlora_r: 8\n  lora_alpha: 16\nadapter: lora\n", 3),
    "tab": ("base_model: a\ndatasets:\n  - path: x.jsonl\n\ttype: alpaca\nadapter: lora\n", 4),
}


@pytest.mark.parametrize("mistake", YAML_MISTAKES)
def test_yaml_syntax_error_names_the_line_of_the_mistake(write_config, mistake):
    text, line_no = YAML_MISTAKES[mistake]
    path = write_config(text)
    (line,) = problems(path)
    assert line.startswith(f"{path}:{line_no}: invalid YAML:"), line


def test_yaml_is_read_with_a_safe_loader(write_config, good_text):
    path = write_config(good_text + "seed: !!python/object/apply:os.system ['echo pwned']\n")
    (line,) = problems(path)
    assert "invalid YAML" in line


def test_missing_config_file(tmp_path):
    assert problems(tmp_path / "nope.yaml") == [f"{tmp_path / 'nope.yaml'}: config file not found"]


def test_overrides_dotted_indexed_and_yaml_typed(write_config, good_text, data_file, tmp_path):
    other = tmp_path / "other.jsonl"
    other.write_text('{"context": "q", "target": "a"}\n')
    cfg = config.load(
        write_config(good_text),
        [
            "lora_r=16",
            f"datasets.0.path={other}",
            "datasets[0].type.field_output=answer",
            "lora_target_modules=[q_proj, v_proj]",
            "bf16=false",
        ],
    )
    assert cfg.lora_r == 16 and cfg.datasets[0].path == str(other)
    assert cfg.datasets[0].type.field_output == "answer"
    assert cfg.lora_target_modules == ["q_proj", "v_proj"] and cfg.bf16 is False


def test_overrides_are_validated_like_the_file(write_config, good_text):
    path = write_config(good_text)
    assert problems(path, ["lora_r=-1", "lora_alhpa=3"]) == [
        f"{path}: --set lora_r: must be greater than 0 (got -1)",
        f"{path}: --set lora_alhpa: unknown key (did you mean lora_alpha?)",
    ]
    assert problems(path, ["datasets.3.path=x"]) == ["--set datasets.3.path: index 3 is out of range"]
    assert problems(path, ["lora_r"]) == ["--set lora_r: expected key=value"]


def test_secrets_are_never_echoed_or_saved(write_config, good_text):
    secret = "hf_abcdefghijklmnopqrstuvwxyz0123456789"
    path = write_config(good_text + f"hub_token: {secret}\n")
    assert secret not in "\n".join(problems(path))
    assert config.redact({"wandb_api_key": secret, "nested": {"hf_token": secret}, "lora_r": 8}) == {
        "wandb_api_key": "***",
        "nested": {"hf_token": "***"},
        "lora_r": 8,
    }


def test_resolved_yaml_round_trips_with_versions(write_config, good_text, tmp_path):
    cfg = config.load(write_config(good_text))
    text = config.to_yaml(cfg, {"finetune": "0.1.0"})
    saved = yaml.safe_load(text)
    assert saved["seed"] == 42 and saved["finetune_versions"] == {"finetune": "0.1.0"}
    again = config.load(write_config(text, "saved.yaml"))
    assert again.model_dump(exclude={"finetune_versions"}) == cfg.model_dump(exclude={"finetune_versions"})


@pytest.mark.parametrize("name", ["examples/quickstart.yaml"])
def test_shipped_example_configs_validate(name, tiny_model_dir, monkeypatch):
    monkeypatch.chdir(ROOT)
    cfg = config.load(ROOT / name, [f"base_model={tiny_model_dir}"])
    assert cfg.adapter in ("lora", "qlora")


@needs_shared
def test_financebench_recipe_validates_with_the_finlora_data(monkeypatch):
    monkeypatch.chdir(ROOT)
    path = ROOT / "configs" / "financebench.yaml"
    # Without the data file the only problem is the documented data path.
    assert problems(path) == [
        f"{path}:22: datasets[0].path: dataset file not found: data/financebench_train.jsonl"
    ]
    cfg = config.load(path, [f"datasets.0.path={FINLORA / 'financebench_train.jsonl'}"])
    assert cfg.base_model == "meta-llama/Llama-3.1-8B-Instruct" and cfg.quantized_4bit
    assert cfg.lora_r == 4 and cfg.lora_target_modules == ["q_proj", "k_proj", "v_proj"]
    assert cfg.datasets[0].type.format == "[INST] {instruction} [/INST]"
    assert cfg.deepspeed == "deepspeed_configs/zero1.json" and cfg.wandb_project


@needs_shared
def test_finlora_example_config_validates(monkeypatch):
    monkeypatch.chdir(ROOT)
    path = FINLORA / "example_config.yml"
    assert problems(path) == [
        f"{path}:25: datasets[0].path: dataset file not found: ../data/train/finer_train_batched.jsonl"
    ]
    cfg = config.load(path, [f"datasets.0.path={FINLORA / 'financebench_train.jsonl'}"])
    assert cfg.load_in_8bit and cfg.lora_r == 8 and cfg.chat_template == "llama3"
    assert cfg.special_tokens == {"pad_token": "<|end_of_text|>"}
    # FinLoRA's script (lora/finetune.py) writes its 4-bit runs from the same template with these keys set
    four_bit = [
        f"datasets.0.path={FINLORA / 'financebench_train.jsonl'}", "load_in_8bit=false", "load_in_4bit=true",
        "bnb_4bit_use_double_quant=true", "bnb_4bit_quant_type=nf4", "bnb_4bit_compute_dtype=bfloat16",
        "optimizer=paged_adamw_8bit", "gradient_checkpointing=true",
    ]  # fmt: skip
    cfg = config.load(path, four_bit)
    assert (
        cfg.quantized_4bit and cfg.bnb_4bit_compute_dtype == "bfloat16" and cfg.bnb_4bit_quant_type == "nf4"
    )


def test_reference_lists_every_field():
    ref = config.reference_markdown()
    for name in config.Config.model_fields:
        assert f"| `{name}` |" in ref


def test_readme_config_reference_is_up_to_date():
    import subprocess
    import sys

    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_config_reference.py"), "--check"])
    assert result.returncode == 0, "README.md is stale: run python scripts/gen_config_reference.py"


def test_known_axolotl_dataset_keys_are_unsupported_not_unknown(write_config, data_file):
    path = write_config(
        {"base_model": "org/m", "adapter": "lora",
         "datasets": [{"path": str(data_file), "type": "chat_template", "field_thinking": "t", "step_separator": None}]}
    )  # fmt: skip
    assert problems(path) == [
        f"{path}:6: datasets[0].field_thinking: not supported by finetune yet (remove it or set it to null)"
    ]


def test_axolotl_training_keys_finetune_implements_are_accepted(write_config, good_text):
    text = good_text + (
        "low_cpu_mem_usage: true\nlr_scheduler: cosine\neta_min: 1.0e-6\nddp_find_unused_parameters: true\n"
        "loss_watchdog_threshold: 5.0\nplugins:\n  - axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin\n"
    )
    cfg = config.load(write_config(text))
    assert cfg.low_cpu_mem_usage is True and cfg.eta_min == 1e-6 and cfg.ddp_find_unused_parameters is True
    assert cfg.loss_watchdog_threshold == 5.0 and cfg.loss_watchdog_patience is None
    assert cfg.cut_cross_entropy is None and cfg.cut_cross_entropy_on  # axolotl: the plugin alone turns it on
    off = config.load(write_config(text + "cut_cross_entropy: false\n"))
    assert not off.cut_cross_entropy_on
    assert config.load(write_config(good_text + "cut_cross_entropy: true\n")).cut_cross_entropy_on
    assert not config.load(write_config(good_text)).cut_cross_entropy_on


def test_axolotl_training_keys_that_contradict_are_refused_at_the_key(write_config, good_text):
    path = write_config(good_text + "low_cpu_mem_usage: false\nloss_watchdog_threshold: 0\n")
    assert problems(path) == [
        f"{path}:12: low_cpu_mem_usage: transformers 5 always loads with low memory (the argument is gone): "
        "remove the key or set it to true",
        f"{path}:13: loss_watchdog_threshold: must be greater than 0 (got 0)",
    ]
    path = write_config(
        good_text + "lr_scheduler: linear\neta_min: 1.0e-6\nloss_watchdog_patience: 3\n"
        "plugins:\n  - axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin\nliger_cross_entropy: true\n"
    )
    assert problems(path) == [
        f"{path}:13: eta_min: the end LR of the cosine decay: only with lr_scheduler: cosine (got linear)",
        f"{path}:14: loss_watchdog_patience: needs loss_watchdog_threshold (the loss to watch for)",
        f"{path}:17: liger_cross_entropy: cannot be combined with cut_cross_entropy (on: CutCrossEntropyPlugin "
        "listed in plugins): choose one cross-entropy",
    ]
    path = write_config(
        good_text + "learning_rate: 1.0e-5\neta_min: 1.0e-4\ncut_cross_entropy: true\n"
        "liger_fused_linear_cross_entropy: true\n"
    )
    assert problems(path) == [
        f"{path}:13: eta_min: must be at most learning_rate (1e-05), got 0.0001",
        f"{path}:15: liger_fused_linear_cross_entropy: cannot be combined with cut_cross_entropy (on: "
        "cut_cross_entropy: true): choose one cross-entropy",
    ]


def test_axolotl_batch_size_is_read_as_gradient_accumulation(write_config, good_text, tmp_path):
    cfg = config.load(write_config(good_text + "micro_batch_size: 2\nbatch_size: 8\n"))
    assert cfg.gradient_accumulation_steps == 4 and cfg.batch_size is None  # the saved config says what ran
    assert "gradient_accumulation_steps: 4" in config.to_yaml(cfg)
    path = write_config(good_text + "micro_batch_size: 3\nbatch_size: 8\n")
    assert problems(path) == [f"{path}:13: batch_size: must be a multiple of micro_batch_size (3), got 8"]
    path = write_config(good_text + "gradient_accumulation_steps: 2\nbatch_size: 8\n")
    assert problems(path) == [
        f"{path}:13: batch_size: set either batch_size or gradient_accumulation_steps, not both"
    ]


def test_axolotl_names_and_legacy_keys_are_read(write_config, good_text):
    text = good_text + (
        "dataset_num_proc: 3\nmodel_config:\n  output_router_logits: true\nlora_layers_to_transform: [0, 2]\n"
        "bfloat16: true\ninclude_tokens_per_second: true\nmin_sample_len: 5\nddp_timeout: 600\n"
        "dataloader_num_workers: 2\ndataloader_prefetch_factor: 4\ncosine_min_lr_ratio: 0.1\n"
    )
    cfg = config.load(write_config(text))
    assert cfg.dataset_processes == 3 and cfg.overrides_of_model_config == {"output_router_logits": True}
    assert cfg.peft_layers_to_transform == [0, 2] and cfg.bfloat16 and cfg.min_sample_len == 5
    assert (cfg.ddp_timeout, cfg.dataloader_num_workers, cfg.cosine_min_lr_ratio) == (600, 2, 0.1)
    assert config.validate(yaml.safe_load(config.to_yaml(cfg))) == cfg  # the saved names read back


def test_axolotl_keys_that_need_another_are_refused_at_the_key(write_config, good_text):
    path = write_config(
        good_text + "bfloat16: true\nfloat16: true\ndataloader_prefetch_factor: 2\n"
        "eta_min: 1.0e-6\ncosine_min_lr_ratio: 0.1\nlora_target_modules: '.*proj'\npeft_layers_to_transform: [1]\n"
    )
    assert problems(path) == [
        f"{path}:13: float16: cannot be combined with bfloat16: choose one",
        f"{path}:14: dataloader_prefetch_factor: needs dataloader_num_workers > 0 (workers prefetch batches)",
        f"{path}:16: cosine_min_lr_ratio: set either eta_min or cosine_min_lr_ratio, not both",
        f"{path}:18: peft_layers_to_transform: cannot be combined with a regex lora_target_modules (peft "
        "cannot): list the module names instead",
    ]
    path = write_config(
        good_text + "lr_scheduler: linear\ncosine_min_lr_ratio: 0.5\npeft_layers_pattern: [layers]\n"
        "rl: dpo\nmin_sample_len: 4\n"
    )
    assert problems(path)[1:] == [
        f"{path}:13: cosine_min_lr_ratio: the end LR of the cosine decay: only with lr_scheduler: cosine (got linear)",
        f"{path}:14: peft_layers_pattern: only used with peft_layers_to_transform: set it or remove this",
        f"{path}:16: min_sample_len: for SFT data only (not dpo pairs): remove it",
    ]
    path = write_config(good_text + "cosine_min_lr_ratio: 1.5\n")
    assert problems(path) == [f"{path}:12: cosine_min_lr_ratio: must be less than or equal to 1 (got 1.5)"]


def test_axolotl_attention_flags_and_their_conflicts(write_config, good_text):
    def attention(extra: str) -> str:
        return config.load(write_config(good_text + extra)).requested_attention

    assert attention("") == "sdpa"
    assert attention("sdp_attention: true\n") == "sdpa" and attention("xformers_attention: true\n") == "sdpa"
    assert attention("flash_attention: true\n") == "flash_attention_2"
    assert attention("eager_attention: true\nattn_implementation: eager\n") == "eager"  # they agree
    assert attention("flex_attention: true\nflash_attention: false\n") == "flex_attention"
    path = write_config(good_text + "flash_attention: true\nsdp_attention: true\n")
    assert problems(path) == [
        f"{path}:13: sdp_attention: asks for sdpa attention but flash_attention for flash_attention_2: choose one"
    ]


def test_more_axolotl_training_keys(write_config, good_text):
    cfg = config.load(
        write_config(
            good_text + "noisy_embedding_alpha: 5\ntorch_compile: auto\npeft_init_lora_weights: gaussian\n"
            "lr_scheduler_kwargs:\n  num_cycles: 2\nloraplus_lr_ratio: 16\n"
        )
    )
    assert cfg.neftune_noise_alpha == 5 and cfg.torch_compile == "auto"
    assert cfg.peft_init_lora_weights == "gaussian" and cfg.lr_scheduler_kwargs == {"num_cycles": 2}
    assert cfg.loraplus_lr_ratio == 16
    path = write_config(good_text + "peft_init_lora_weights: pissa\n")
    assert problems(path) == [
        f"{path}:12: peft_init_lora_weights: must be true, false or 'gaussian' (got 'pissa'); peft's pissa, olora, "
        "loftq and eva rewrite the base weights or need data first, which finetune does not do"
    ]


def test_gguf_base_is_split_into_folder_and_file_and_cannot_be_requantized(tmp_path):
    base = {"adapter": "lora", "datasets": [{"path": str(ROOT / "examples" / "finance_qa.jsonl")}]}
    gguf = tmp_path / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF")
    cfg = config.validate({**base, "base_model": str(gguf)})
    assert cfg.base_source == (str(gguf.parent), gguf.name) and cfg.base_is_gguf
    cfg = config.validate({**base, "base_model": "org/model-GGUF", "gguf_file": "m.Q8_0.gguf"})
    assert cfg.base_source == ("org/model-GGUF", "m.Q8_0.gguf")
    assert not config.validate({**base, "base_model": "org/model"}).base_is_gguf
    with pytest.raises(ConfigError) as err:
        config.validate({**base, "base_model": "org/m-GGUF", "gguf_file": "m.gguf", "load_in_4bit": True})
    assert "load_in_4bit: a GGUF base is loaded dequantized and transformers cannot quantize it again" in str(
        err.value
    )
    with pytest.raises(ConfigError) as err:
        config.validate({**base, "base_model": str(gguf), "gguf_file": "y.gguf"})
    assert "gguf_file: base_model already names a .gguf file" in str(err.value)


def test_hub_keys_need_a_repo_and_default_to_private(write_config, data_file):
    base = {"base_model": "org/m", "adapter": "lora", "datasets": [{"path": str(data_file)}]}
    path = write_config(
        {**base, "hub_strategy": "every_save", "hub_revision": "dev", "hub_private_repo": False}
    )
    assert problems(path) == [
        f"{path}:5: hub_strategy: needs hub_model_id (the repo to push to): set it, or remove this key",
        f"{path}:6: hub_revision: needs hub_model_id (the repo to push to): set it, or remove this key",
    ]  # hub_private_repo: false is axolotl's placeholder, accepted alone
    cfg = config.load(path, ["hub_model_id=me/run"])
    assert cfg.hub_model_id == "me/run" and cfg.hub_strategy == "every_save" and cfg.hub_private is False
    plain = config.load(write_config({**base, "hub_model_id": "me/run"}, name="plain.yaml"))
    assert plain.hub_private is True and plain.hub_strategy_or_default == "every_save"  # as axolotl
    assert problems(path, ["hub_model_id=me/run/x"]) == [
        f"{path}: --set hub_model_id: not a hub repo id: 'me/run/x' (expected name or org/name)"
    ]
    assert problems(path, ["hub_model_id=me/run", "hub_strategy=hourly"]) == [
        f"{path}: --set hub_strategy: must be 'end', 'every_save', 'checkpoint' or 'all_checkpoints' (got 'hourly')"
    ]


def test_a_bare_no_is_the_no_strategy(write_config, good_text):
    """YAML reads `no` as false; for the strategy keys it can only mean "no"."""
    cfg = config.load(write_config(good_text + "save_strategy: no\n"), ["eval_strategy=no"])
    assert cfg.save_strategy == "no" and cfg.eval_strategy == "no"
    assert problems(write_config(good_text + "save_strategy: true\n"))  # true is still no strategy
