"""The export chats as trained: Ollama renders a multi-turn conversation (system prompt, earlier questions and
answers, the new question) as training laid it out, for every format family finetune exports, and a pushed GGUF
folder carries the `template`, `system` and `params` files the hub's Ollama integration reads in place of the
Modelfile (outputs/ollama_hub.py)."""

from __future__ import annotations

import json

import pytest
from test_export import _bare_run, _template_for

import gotemplate
from conftest import FINLORA_INST, INST_FORMAT
from finetune.outputs.export import prompt_template

pytestmark = pytest.mark.usefixtures("one_thread")

# Every format family finetune exports: (dataset `type`, other config keys)
CHATML_TOKENS = ["<|im_start|>", "<|im_end|>"]
EXPORTED_FORMATS = {
    "inst": (INST_FORMAT, {}),
    "system": ({**INST_FORMAT, "system_prompt": "You rate news.", "system_format": "<<SYS>>{system}<</SYS>>\n"}, {}),
    "row_system": (FINLORA_INST, {}),
    "braces": ({**INST_FORMAT, "format": "Q: {{literal}} {instruction}\nA:", "no_input_format": "Q: {{literal}} {instruction}\nA:"}, {}),
    "alpaca": ("alpaca", {}),
    "alpaca_chat": ("alpaca:chat", {}),
    "alpaca_chatml": ("alpaca:chatml", {"tokens": CHATML_TOKENS}),
    "alpaca_phi": ("alpaca:phi", {}),
    "completion": ("completion", {}),
    "input_output": ("input_output", {}),
    "chatml": ("chat_template", {"chat_template": "chatml", "tokens": CHATML_TOKENS}),
    "qwen_25": ("chat_template", {"chat_template": "qwen_25", "tokens": CHATML_TOKENS}),
    "llama3": ("chat_template", {"chat_template": "llama3"}),
    "gemma": ("chat_template", {"chat_template": "gemma", "tokens": ["<start_of_turn>", "<end_of_turn>"]}),
    "phi_3": ("chat_template", {"chat_template": "phi_3", "tokens": ["<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]}),
}  # fmt: skip
CONVERSATIONS = (
    [("user", "Is revenue up?"), ("assistant", "Yes."), ("user", "And costs?"), ("assistant", "Down."),
     ("user", "Net income?")],
    [("system", "Answer in one word."), ("user", "Sentiment?"), ("assistant", "positive"), ("user", "Why?")],
)  # fmt: skip


def _as_trained(cfg, ds, tokenizer, template, turns: list[tuple[str, str]]) -> str:
    """The conversation as training laid it out, up to where the model answers next. Text formats: each
    question and answer is one row (prompt, answer, EOS), the system prompt (the conversation's, else the
    format's default) in front of the first; input_output: the segments' texts; chat: the chat template."""
    from dataclasses import replace

    from finetune import data
    from finetune.data import formats

    messages = [{"role": r, "content": c} for r, c in turns]
    spec = formats.build_format(cfg, ds, "datasets[0]", tokenizer).spec
    if isinstance(spec, formats.SegmentsSpec):
        row = {"segments": [{"text": c, "label": r == "assistant"} for r, c in turns if r != "system"]}
        return "".join(text for _, text in formats.segments(spec, row))
    if not isinstance(spec, formats.TextSpec):
        # format_prompt lays out a row up to its last answer's header: a placeholder answer ends the row
        row = {"messages": [*messages, {"role": "assistant", "content": "-"}]}
        trained = data.format_prompt(cfg, ds, row, tokenizer)
        return trained.removeprefix(tokenizer.bos_token) if template.add_bos else trained
    system = turns[0][1] if turns[0][0] == "system" else spec.system_prompt_no_input
    asked = [c for r, c in turns if r == "user"]
    answers = [c for r, c in turns if r == "assistant"] + [None]
    out = []
    for k, (question, answer) in enumerate(zip(asked, answers, strict=True)):
        row_spec = replace(spec, system_prompt_no_input=system if k == 0 else "")
        if spec.field_output is None:  # completion: the question and its continuation are one trained text
            _, text = formats.render_text(row_spec, {spec.field_instruction: question + (answer or "")})
            out.append(text)
        else:
            row = {spec.field_instruction: question, spec.field_output: answer or "-"}
            prompt, text = formats.render_text(row_spec, row)
            out.append(prompt + (text if answer is not None else ""))
        out.append(tokenizer.eos_token if answer is not None else "")
    return "".join(out)


@pytest.mark.parametrize("family", EXPORTED_FORMATS)
def test_ollama_renders_multi_turn_chats_as_training(tiny_model_dir, tmp_path, family):
    """Ollama renders a conversation (its system prompt, earlier questions and answers, the new question) as
    training laid it out — earlier answers with the EOS every trained answer ended with — for every format
    family; so does the GGUF's own chat template (text formats), and the hub's Ollama files pushed with the
    export agree with its Modelfile."""
    from finetune.outputs import push_files

    ds_type, over = EXPORTED_FORMATS[family]
    cfg, tokenizer, template, _ = _template_for(
        {"datasets": [{"path": "a/b", "type": ds_type}], **over}, tiny_model_dir
    )
    assert template.go is not None, template.note
    for turns in CONVERSATIONS:
        messages = [{"role": r, "content": c} for r, c in turns]
        trained = _as_trained(cfg, cfg.datasets[0], tokenizer, template, turns)
        assert gotemplate.ollama(template.go, messages, template.system) == trained
        if template.jinja is not None and cfg.datasets[0].type != "chat_template":
            assert (
                tokenizer.apply_chat_template(messages, chat_template=template.jinja, tokenize=False)
                == trained
            )

    # the same prompt from the pushed repo: `template`, `system` and `params` written from the Modelfile
    stops = [tokenizer.eos_token, "<|end|>"]
    folder = tmp_path / "gguf"
    folder.mkdir()
    (folder / "m.gguf").write_bytes(b"GGUF")
    (folder / "Modelfile").write_text(prompt_template.modelfile("m.gguf", template, stops))
    run = _bare_run(tmp_path, tiny_model_dir)
    (run / "README.md").write_text("card")
    pushed = {u.path_in_repo: u.read() for u in push_files.run_uploads(run, gguf=folder)}
    assert pushed["template"].decode() == template.go
    assert pushed.get("system", b"").decode() == template.system
    assert json.loads(pushed["params"]) == {"stop": stops, "temperature": 0}
    system = pushed.get("system", b"").decode()
    for turns in CONVERSATIONS:
        messages = [{"role": r, "content": c} for r, c in turns]
        expected = gotemplate.ollama(template.go, messages, template.system)
        assert gotemplate.ollama(pushed["template"].decode(), messages, system) == expected


def test_hub_files_read_the_modelfile_as_ollama_does(tmp_path):
    """Quoted values spanning lines, bare values, comments, the last TEMPLATE winning, typed PARAMETERs; an
    unclosed quote is one line naming the file and line."""
    from finetune.errors import UserError
    from finetune.outputs import ollama_hub

    modelfile = tmp_path / "Modelfile"
    modelfile.write_text(
        '# made by hand\nFROM ./m.gguf\nTEMPLATE old\ntemplate """{{ .Prompt }}\n\n  {{ .Response }}"""\n'
        'SYSTEM "Say "hi" first."\nPARAMETER stop <|end|>\nPARAMETER stop "</s>"\nPARAMETER num_ctx 4096\n'
        "PARAMETER temperature 0.7\nPARAMETER penalize_newline false\n"
    )
    files = ollama_hub.hub_files(modelfile)
    assert files["template"] == b"{{ .Prompt }}\n\n  {{ .Response }}"
    assert files["system"] == b'Say "hi" first.'
    assert json.loads(files["params"]) == {
        "stop": ["<|end|>", "</s>"], "num_ctx": 4096, "temperature": 0.7, "penalize_newline": False,
    }  # fmt: skip
    modelfile.write_text("FROM ./m.gguf\n")
    assert ollama_hub.hub_files(modelfile) == {}  # nothing said: the hub reads the GGUF's own chat template
    modelfile.write_text('FROM ./m.gguf\nTEMPLATE """{{ .Prompt }}\n')
    with pytest.raises(UserError, match=r"Modelfile:2: the quoted value is never closed"):
        ollama_hub.hub_files(modelfile)
