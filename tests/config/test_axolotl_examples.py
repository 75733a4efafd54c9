"""Every real axolotl example config is either accepted or refused with one line per problem — never a crash.

ACCEPTED is the exact set accepted today, so the set only changes on purpose: when a feature lands, add the
configs it unlocks here.
"""

from __future__ import annotations

import re

import pytest

from conftest import AXOLOTL_EXAMPLES, ROOT, needs_shared
from finetune import config

ACCEPTED = {
    "archived__code-llama__34b__qlora.yml",
    "archived__code-llama__7b__lora.yml",
    "archived__gptj__qlora.yml",
    "archived__openllama-3b__lora.yml",
    "archived__qwen__lora.yml",
    "archived__qwen__qlora.yml",
    "archived__qwen__qwen2-moe-lora.yaml",
    "archived__qwen__qwen2-moe-qlora.yaml",
    "archived__starcoder2__qlora.yml",
    "archived__yi-34B-chat__qlora.yml",
    "cohere__command-r-7b-qlora.yml",
    "deepcogito__cogito-v1-preview-llama-3B-lora.yml",
    "falcon-h1__falcon-h1-1b-deep-qlora.yaml",
    "falcon-h1__falcon-h1-1b-qlora.yaml",
    "falcon-h1__falcon-h1-34b-qlora.yaml",
    "falcon-h1__falcon-h1-3b-qlora.yaml",
    "falcon-h1__falcon-h1-500m-qlora.yaml",
    "falcon-h1__falcon-h1-7b-qlora.yaml",
    "gemma2__qlora.yml",
    "llama-2__lora.yml",
    "llama-2__qlora.yml",
    "llama-3__instruct-lora-8b.yml",
    "llama-3__lora-1b-deduplicate-sft.yml",
    "llama-3__lora-8b.yml",
    "llama-3__lora-1b-deduplicate-dpo.yml",  # rl: dpo, chat_template preference rows (issue 8)
    "mimo__mimo-7b-qlora.yaml",
    "mistral__dpo__mistral-dpo-qlora.yml",  # rl: dpo on a 4-bit base (issue 8)
    "llama-3__qlora-1b-kto.yaml",  # rl: kto on axolotl's unpaired llama3.ultra rows (issue 20)
    # CutCrossEntropyPlugin (+ cut_cross_entropy: true), computed as Liger's fused linear cross-entropy
    "arcee__afm-4.5b-qlora.yaml",
    "gemma3n__gemma-3n-e2b-qlora.yml",
    "hunyuan__hunyuan-v1-dense-qlora.yaml",
    "olmo3__olmo3-7b-qlora.yaml",
    "plano__plano-4b-qlora.yaml",
    "jamba__qlora_deepspeed.yaml",  # low_cpu_mem_usage: true (what transformers 5 always does)
    "archived__cerebras__qlora.yml",  # batch_size (read as gradient_accumulation_steps)
    "archived__falcon__config-7b-qlora.yml",  # type: alpaca:chat
    "mistral__mixtral__mixtral.yml",  # model_config: {output_router_logits: true}
    "phi__lora-3.5.yaml",  # bfloat16: true
    # FSDP2 (fsdp_version / fsdp_config / the fsdp: list) (issue 19)
    "archived__dbrx__16bit-lora.yaml",
    "llama-2__qlora-fsdp.yml",
    "llama-3__qlora-fsdp-405b.yaml",
    "qwen3__qlora-fsdp.yaml",
    # full fine-tuning: no adapter (issue 31)
    "LiquidAI__lfm2-350m-fft.yaml",
    "llama-3__fft-8b.yaml",
    "qat_nvfp4__Math-Gemma3-12B_baseline.yml",
    "qat_nvfp4__Math-Gemma3-27B_baseline.yml",
    "qat_nvfp4__Math-Qwen2.5-72B_baseline.yml",
    # unfrozen_parameters: with no adapter (ZeRO-3), and beside QLoRA (issue 31)
    "mistral__bigstral__bigstral-ds-zero3.yaml",
    "gemma3__gemma-3-4b-qlora.yml",
    "jamba__qlora_fsdp_large.yaml",  # use_tensorboard (issue 30)
    # tokenizer_use_mistral_common: mistral-common's tokenizer and chat format (issue 31)
    "magistral__magistral-small-fsdp-qlora.yaml",
    "ministral3__ministral3-3b-qlora.yaml",
}
LINE = re.compile(r"^(?P<file>[^:]+)(:(?P<line>\d+))?: (--set )?[A-Za-z_][\w.\[\]]*: \S.*$")


def example_paths():
    return sorted(p for p in AXOLOTL_EXAMPLES.glob("*.y*ml")) if AXOLOTL_EXAMPLES.is_dir() else []


@needs_shared
def test_each_example_is_accepted_or_refused_one_line_per_problem(monkeypatch):
    monkeypatch.chdir(ROOT)  # relative paths (deepspeed_configs/...) resolve from the working directory
    accepted, refused = set(), {}
    for path in example_paths():
        try:
            cfg = config.load(path)
        except config.ConfigError as exc:  # anything else is a crash and fails the test with its traceback
            refused[path.name] = exc.problems
            continue
        assert cfg.adapter in ("lora", "qlora", None)  # None: full fine-tuning
        accepted.add(path.name)
    assert len(accepted) + len(refused) == len(example_paths()) > 100
    for name, problems in refused.items():
        assert problems, name
        for line in problems:
            assert LINE.match(line), f"{name}: not a one-line problem: {line!r}"
            assert "\n" not in line and "Traceback" not in line
    assert accepted == ACCEPTED


@needs_shared
def test_refusals_name_the_unsupported_feature():
    problems = {}
    for path in example_paths():
        try:
            config.load(path)
        except config.ConfigError as exc:
            problems[path.name] = "\n".join(exc.problems)
    assert "qat: not supported by finetune yet" in problems["llama-3__3b-qat-fsdp2.yaml"]
    # axolotl's unpaired KTO types are read for rl: kto only
    assert "llama-3__qlora-1b-kto.yaml" not in problems
    assert "llama-3__fft-8b.yaml" not in problems  # full fine-tuning (issue 31)
    assert "qat: not supported by finetune yet" in problems["qat_nvfp4__Math-Gemma3-12B_qat.yml"]


@pytest.mark.parametrize("name", sorted(ACCEPTED)[:3])
@needs_shared
def test_accepted_examples_resolve_to_a_saveable_config(name, monkeypatch):
    monkeypatch.chdir(ROOT)
    cfg = config.load(AXOLOTL_EXAMPLES / name)
    assert config.to_yaml(cfg).startswith("base_model:")
