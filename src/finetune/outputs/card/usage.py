"""The model card's usage snippet: load the adapter (or the merged model) and prompt it as it was trained.

The prompt is rendered by the same code that formatted the training data (`data.format_prompt`), so the
snippet asks in exactly the layout the adapter learned; chat-template runs use the saved tokenizer's template.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from finetune import methods
from finetune.config import PreferenceType, UnpairedType
from finetune.data import formats, trained_prompt, unpaired_format
from finetune.outputs.card import trl_training

if TYPE_CHECKING:
    from finetune.outputs.card import Merged
    from finetune.outputs.run_dir import Run

EXAMPLE_QUESTION = "What does EBITDA stand for?"
_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def example_prompt(run: Run) -> str | None:
    """The example question in the first dataset's training format; None for chat templates."""
    cfg = run.cfg
    ds = cfg.datasets[0]
    if unpaired_format.is_chat(ds):  # chat_template, or rl: kto's chatml.* / llama3.* types
        return None
    if isinstance(
        ds.type, UnpairedType | PreferenceType
    ):  # DPO, KTO: the question in the rows' prompt format
        return trained_prompt.format_prompt(cfg, ds, {ds.type.field_prompt: EXAMPLE_QUESTION}, tokenizer=None)
    spec = formats.build_format(cfg, ds, "datasets[0]", tokenizer=None).spec
    # input_output: the prompt is whatever text came before the answers
    if isinstance(spec, formats.SegmentsSpec):
        return EXAMPLE_QUESTION
    if spec.field_output is None:  # completion: the model continues raw text
        return "EBITDA stands for"
    row = {spec.field_instruction: EXAMPLE_QUESTION, spec.field_output: ""}
    return trained_prompt.format_prompt(cfg, ds, row, tokenizer=None)


def usage_snippet(run: Run, merged: Merged | None = None) -> str:
    """Python that loads what this card describes and generates one answer; empty without an adapter."""
    cfg = run.cfg
    full = cfg.adapter is None and (run.output_dir / "config.json").is_file()  # a full fine-tune's model
    if merged is None and run.adapter_dir is None and not full:
        return ""
    where = (
        str(merged.out)
        if merged
        else cfg.output_dir
        if full
        else (
            cfg.output_dir
            if run.adapter_dir == run.output_dir
            else f"{cfg.output_dir}/{run.adapter_dir.name}"
        )
    )
    if methods.of(cfg).score_head:
        return trl_training.reward_usage(run, merged, where)
    lines = ["import torch"]
    if merged or full:
        dtype = _DTYPES.get(merged.dtype, "bfloat16") if merged else "bfloat16"
        lines += [
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            f'model_dir = "{where}"  # this folder, or its repo id on the hub',
            "tokenizer = AutoTokenizer.from_pretrained(model_dir)",
            "model = AutoModelForCausalLM.from_pretrained(",
            f'    model_dir, dtype=torch.{dtype}, device_map="auto"',
            ")",
        ]
    else:
        four_bit = cfg.quantized_4bit
        lines += [
            "from peft import PeftModel",
            "from transformers import AutoModelForCausalLM, AutoTokenizer"
            + (", BitsAndBytesConfig" if four_bit else ""),
            "",
            f'base_model = "{cfg.base_source[0]}"',
            f'adapter = "{where}"  # this folder, or its repo id on the hub',
            "tokenizer = AutoTokenizer.from_pretrained(adapter)  # the tokenizer as trained (tokens, template)",
        ]
        # settings of the base's config that training changed (overrides_of_model_config): from_pretrained
        # applies keyword arguments that name config settings to the config
        overrides = "".join(f", {k}={v!r}" for k, v in (cfg.overrides_of_model_config or {}).items())
        if cfg.base_is_gguf:  # transformers dequantizes the GGUF file, as training did
            overrides = f", gguf_file={cfg.base_source[1]!r}{overrides}"
        if four_bit:  # the adapter was trained against NF4 weights: load the base the same way
            lines += [
                "quant = BitsAndBytesConfig(",
                '    load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,',
                "    bnb_4bit_compute_dtype=torch.bfloat16,",
                ")",
                "model = AutoModelForCausalLM.from_pretrained(",
                f'    base_model, quantization_config=quant, dtype=torch.bfloat16, device_map="auto"{overrides}',
                ")",
            ]
        else:
            lines += [
                "model = AutoModelForCausalLM.from_pretrained(",
                f'    base_model, dtype=torch.bfloat16, device_map="auto"{overrides}',
                ")",
            ]
        if cfg.tokens or cfg.special_tokens:
            lines += [
                "if len(tokenizer) > model.get_input_embeddings().num_embeddings:  # tokens added in training",
                "    model.resize_token_embeddings(len(tokenizer))",
            ]
        lines += ["model = PeftModel.from_pretrained(model, adapter)"]
    lines += [""]
    prompt = example_prompt(run)
    if prompt is None:
        lines += [
            f'messages = [{{"role": "user", "content": "{EXAMPLE_QUESTION}"}}]',
            "inputs = tokenizer.apply_chat_template(",
            '    messages, add_generation_prompt=True, return_tensors="pt", return_dict=True',
            ").to(model.device)",
        ]
    else:
        lines += [
            f"prompt = {prompt!r}  # the training format",
            'inputs = tokenizer(prompt, return_tensors="pt").to(model.device)',
        ]
    lines += [
        "output = model.generate(**inputs, max_new_tokens=128)",
        'print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))',
    ]
    return "\n".join(lines)
