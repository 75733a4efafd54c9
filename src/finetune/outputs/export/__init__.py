"""`finetune export OUTPUT_DIR --gguf --out DIR`: the run as one GGUF file plus an Ollama Modelfile, checked.

    finetune export outputs/sentiment --gguf --quant q8_0 --out exports/sentiment

1. Merge exactly as `finetune merge` does (its code: same --dequantize rules, same logit check), in fp32 so the
   GGUF's own rounding is the only one.
2. Write NAME.gguf (gguf_file: architecture, tensors, tokenizer) and a Modelfile whose TEMPLATE is the run's
   prompt format (prompt_template).
3. Check the result before it lands: gguf's GGUFReader reads it back, transformers loads it
   (`from_pretrained(dir, gguf_file=...)`), its tokenizer splits the check prompts into the same ids, and its
   logits on merge's check prompts stay within the quant type's rounding of the merged model's. A failed check
   exits 1 and leaves nothing (everything is written in a temp folder moved in at the end).
"""

from __future__ import annotations

import gc
import math
import re
import shutil
from pathlib import Path

from finetune import methods, quiet
from finetune.data import answer_format, chat, formats
from finetune.errors import UserError
from finetune.files import atomic_dir, atomic_write_text
from finetune.model import gguf_base
from finetune.outputs import merge, run_dir
from finetune.outputs.export import gguf_file, gguf_vocab, prompt_template
from finetune.outputs.merge import CheckFailed

__all__ = ["CHECK_TOLERANCE", "CheckFailed", "check", "export_command"]

# Largest |logit difference| between the GGUF (as transformers reads it back) and the merged fp32 model, as a
# share of the largest |logit| (at least 1), per type. Measured on real SmolLM2-135M fine-tunes (logits up to
# ~40; BENCHMARKS.md): f16 0.07-0.12%, bf16 0.6%, q8_0 2.3%; f32 0 (the same numbers). The limits leave 4-8x
# room for deeper models; a wrong permutation, a dropped bias or a swapped tensor moves logits by far more
# (an unpermuted q/k fails even the tiny model's f16 check).
CHECK_TOLERANCE = {"f32": 1e-4, "f16": 0.005, "bf16": 0.05, "q8_0": 0.1}


# llama.cpp pre-tokenizers that transformers 5.24 rebuilds without their split when it reads a GGUF (it knows
# llama-bpe, qwen2 and GPT-2's own): its tokenizer then differs from training on digits, llama.cpp's does not.
TRANSFORMERS_MISREADS = {"smollm"}
TRANSFORMERS_MISREADS_NOTE = "tokens not compared (transformers reads a smollm GGUF tokenizer without its digit split; llama.cpp has it)"


def _name(name: str | None, output_dir: Path) -> str:
    name = name or output_dir.resolve().name
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*", name):
        raise UserError(f"--name {name!r}: use letters, digits, '.', '_' and '-' (it becomes NAME.gguf)")
    return name


def _template(run: run_dir.Run, tokenizer) -> prompt_template.PromptTemplate:
    """The TEMPLATE/SYSTEM/chat template of the run's first `datasets:` entry (the one finetune generate uses)."""
    cfg, ds = run.cfg, run.cfg.datasets[0]
    adds_bos = gguf_vocab.adds_bos(tokenizer)  # text formats: tokenized with special tokens
    if methods.of(cfg).preference_data:
        return prompt_template.PromptTemplate(
            None,
            "",
            tokenizer.chat_template,
            adds_bos,
            "note: a preference run's prompt_format has no TEMPLATE here",
        )
    kind = answer_format.format_kind(ds)
    if kind == "input_output":
        # the segments carry their own BOS/EOS, tokenized without special tokens: past answers as generated
        return prompt_template.PromptTemplate("{{ .Prompt }}{{ .Response }}", "", None, False)
    spec = formats.build_format(cfg, ds, "datasets[0]", tokenizer).spec
    if isinstance(spec, chat.ChatSpec):
        jinja = spec.template or tokenizer.chat_template

        def render(messages: list[dict], bos_token: str | None) -> str:
            if bos_token is None:  # as the data stage renders it
                return chat.render_chat(spec, tokenizer, messages, add_generation_prompt=True)
            return tokenizer.apply_chat_template(
                messages, chat_template=jinja, tokenize=False, add_generation_prompt=True, bos_token=bos_token
            )

        return prompt_template.chat_format(render, jinja, tokenizer.bos_token)
    return prompt_template.text_format(spec, adds_bos, tokenizer.eos_token)


def _stops(run: run_dir.Run, tokenizer, model) -> list[str]:
    """The tokens that end an answer (what finetune generate stops on), as text for `PARAMETER stop`."""
    if methods.of(run.cfg).preference_data:
        ids = [tokenizer.eos_token_id]
    else:
        ids = answer_format.stop_ids(run.cfg, run.cfg.datasets[0], tokenizer, model)
    return [t for t in tokenizer.convert_ids_to_tokens(ids) if t]


def export_command(
    output_dir: str | Path,
    out: str | Path,
    quant: str = "f16",
    name: str | None = None,
    overwrite: bool = False,
    dequantize: bool = False,
    trust_remote_code: bool = False,
) -> float:
    """Write OUT/NAME.gguf and OUT/Modelfile; returns the checked max |logit difference| (raises CheckFailed)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet.false_alarms()
    output_dir, out = Path(output_dir), Path(out)
    name = _name(name, output_dir)
    gguf_file.check_quant(quant, name)
    run = run_dir.read_run(output_dir, trust_remote_code=trust_remote_code)
    if methods.of(run.cfg).score_head:
        raise UserError(
            f"{output_dir}: a reward model scores text and does not generate; GGUF export is for generation"
        )
    full = run.cfg.adapter is None  # a full fine-tune's folder is the model: nothing to merge
    if full and not (output_dir / "config.json").is_file():
        raise UserError(f"{output_dir}: a full fine-tune with no saved model here (interrupted?)")
    if run.adapter_dir is None and not full:
        raise UserError(f"{output_dir}: no adapter_config.json here or in a checkpoint-* folder")
    gguf_file.architecture(merge.base_config(run))  # refused before anything is merged
    if out.resolve() == output_dir.resolve() or output_dir.resolve().is_relative_to(out.resolve()):
        raise UserError(
            f"--out {out}: would replace the run folder {output_dir} itself; choose another folder"
        )
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")

    with atomic_dir(out, overwrite=overwrite) as tmp:
        merged_dir = output_dir if full else tmp / "merged"  # a full fine-tune's folder is the model
        if not full:
            merge.merge_command(
                output_dir, merged_dir, dtype="fp32", dequantize=dequantize, announce=False,
                trust_remote_code=trust_remote_code,
            )  # fmt: skip
        tokenizer = AutoTokenizer.from_pretrained(merged_dir)
        model = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32)
        template = _template(run, tokenizer)
        if template.note:
            print(template.note)
        gguf_path = tmp / f"{name}.gguf"
        print(f"writing {gguf_path.name} ({quant})")
        count = gguf_file.write(
            gguf_path, model.state_dict(), model.config, tokenizer, quant, name,
            eot_tokens=_eot_tokens(run, tokenizer), add_bos=template.add_bos, chat_template=template.jinja,
        )  # fmt: skip
        prompts = merge.prompt_ids(tokenizer)
        reference = merge.logits(model, prompts)
        stops = _stops(run, tokenizer, model)
        del model
        if not full:
            shutil.rmtree(merged_dir)
        gc.collect()
        diff = check(gguf_path, count, tokenizer, prompts, reference, quant)
        atomic_write_text(tmp / "Modelfile", prompt_template.modelfile(gguf_path.name, template, stops))
    print(
        f"wrote {out / gguf_path.name} and {out / 'Modelfile'} (ollama create {name} -f {out / 'Modelfile'})"
    )
    return diff


def _eot_tokens(run: run_dir.Run, tokenizer) -> tuple[str, ...]:
    ds = run.cfg.datasets[0]
    if methods.of(run.cfg).preference_data or answer_format.format_kind(ds) != "chat":
        return tuple(run.cfg.eot_tokens or ())
    return formats.build_format(run.cfg, ds, "datasets[0]", tokenizer).spec.eot_tokens


def check(path: Path, count: int, tokenizer, prompts: list, reference: list, quant: str) -> float:
    """Read the GGUF back (gguf, then transformers) and compare tokens and logits; CheckFailed when off."""
    import gguf
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    reader = gguf.GGUFReader(str(path))
    if len(reader.tensors) != count:
        raise CheckFailed(
            f"export check failed: {path.name} holds {len(reader.tensors)} tensors, {count} written"
        )
    pre = reader.fields["tokenizer.ggml.pre"]
    compare_tokens = bytes(pre.parts[pre.data[0]]).decode() not in TRANSFORMERS_MISREADS
    own = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    for prompt in merge.CHECK_PROMPTS if compare_tokens else ():
        ours, theirs = (t(prompt, add_special_tokens=False)["input_ids"] for t in (tokenizer, own))
        if ours != theirs:
            raise CheckFailed(
                f"export check failed: the GGUF's tokenizer splits {prompt!r} into {theirs[:12]}, training into "
                f"{ours[:12]}; nothing was written"
            )
    loaded = AutoModelForCausalLM.from_pretrained(
        path.parent, dtype=torch.float32, **gguf_base.load_kwargs(path.name)
    )
    diff = merge.max_difference(merge.logits(loaded, prompts), reference)
    del loaded
    scale = max(1.0, max(float(r.abs().max()) for r in reference))
    limit = CHECK_TOLERANCE[quant] * scale
    print(
        f"check: max |logit difference| between the GGUF ({quant}, read back by transformers) and the merged "
        f"model = {diff:.3g} (limit {limit:.3g}); "
        + ("its tokenizer gives the same ids" if compare_tokens else TRANSFORMERS_MISREADS_NOTE)
    )
    if not (math.isfinite(diff) and diff <= limit):
        raise CheckFailed(
            f"export check failed: max |logit difference| {diff:.3g} between the GGUF and the merged model is above "
            f"the {quant} tolerance {limit:.3g}; nothing was written"
        )
    return diff
