"""The run's prompt format for the tools that run a GGUF: an Ollama TEMPLATE (Go template syntax) and, for
text formats, a Jinja chat template for the GGUF itself (llama.cpp's chat endpoints read it).

A model answers well only when prompted as it was trained, so both are built from the run's own format:
- custom formats (`[INST] {instruction} [/INST]`, `{instruction}`) and alpaca: the no-input template with the
  question in place of {instruction}, then the answer and EOS (as every trained row ended), the system format in
  front when there is a system prompt (the default one becomes the Modelfile's SYSTEM);
- completion: the text, its continuation and EOS; input_output: the texts as given (the segments carry their
  own special tokens);
- chat_template: the run's Jinja template is recognised as one of the families finetune names (chatml and
  qwen_25, llama3, gemma, phi_3), checked by rendering sample conversations through both; a template that
  matches none gets no TEMPLATE (Ollama then reads the GGUF's chat template itself), and says so.
BOS is never part of a template: the GGUF's add_bos says whether training's prompts began with it.
A multi-turn chat renders every past turn as training laid it out: text formats through Ollama's
`.Prompt`/`.Response` turns (its template/template.go), chat formats through `.Messages`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from finetune.data.formats import TextSpec

_I, _S, _B = "\ue010", "\ue011", "\ue013"  # private-use sentinels: {instruction}, {system}, bos_token


@dataclass(frozen=True)
class PromptTemplate:
    """What the Modelfile and the GGUF metadata need to prompt the model as trained."""

    go: str | None  # Ollama TEMPLATE; None: let Ollama use the GGUF's chat template
    system: str  # default system prompt ("" when none)
    jinja: str | None  # chat template for the GGUF (text formats: built here; chat: the run's own)
    add_bos: bool  # whether training's prompts start with BOS
    note: str = ""  # printed when something could not be expressed


def _go_text(text: str) -> str:
    """Literal text inside a Go template: `{{` would open an action."""
    return text.replace("{{", '{{ "{{" }}')


def _jinja_text(text: str) -> str:
    """Literal text in a Jinja template, as a string literal (Jinja2 and llama.cpp's minja both read those)."""
    return "{{ " + json.dumps(text, ensure_ascii=False) + " }}" if text else ""


def _split(template: str, sentinel: str) -> tuple[str, str] | None:
    """(before, after) of the one placeholder in a rendered format; None when it is not there exactly once."""
    if template.count(sentinel) != 1:
        return None
    before, after = template.split(sentinel)
    return before, after


def text_format(spec: TextSpec, adds_bos: bool, eos: str | None) -> PromptTemplate:
    """custom / alpaca / completion: each turn as training laid out one row (render_text's no-input path), its
    answer followed by EOS (appended to every trained answer), the system format once in front.

    The Go template is Ollama's `.Prompt`/`.Response` kind: Ollama renders it once per past turn with that turn's
    answer in `.Response`, then once for the new question with everything after `{{ .Response }}` cut, so earlier
    answers reach the model as `answer + EOS`, as the GGUF's Jinja template renders them too."""
    end = eos or ""
    if spec.field_output is None:  # completion: the prompt is the text, the answer its continuation
        turn: tuple[str, str] | None = ("", "")
    else:
        no_input = spec.no_input_format if spec.no_input_format is not None else spec.format
        turn = _split(no_input.format(instruction=_I, input=""), _I)
    system_turn = (
        _split(spec.system_format.format(system=_S), _S)
        if spec.system_format and spec.field_output is not None
        else None
    )
    if turn is None:
        return PromptTemplate(
            None, "", None, adds_bos, "note: the format does not hold {instruction} once: no TEMPLATE"
        )
    go = _go_text(turn[0]) + "{{ .Prompt }}" + _go_text(turn[1]) + "{{ .Response }}" + _go_text(end)
    jinja_turn = _jinja_text(turn[0]) + "{{ message['content'] }}" + _jinja_text(turn[1])
    jinja_system = ""
    if system_turn is not None:
        go = (
            "{{ if .System }}"
            + _go_text(system_turn[0])
            + "{{ .System }}"
            + _go_text(system_turn[1])
            + "{{ end }}"
            + go
        )
        wrap = (_jinja_text(system_turn[0]) + "{{ \ue012 }}" + _jinja_text(system_turn[1])).replace
        default = spec.system_prompt_no_input
        jinja_system = (
            "{%- if messages and messages[0]['role'] == 'system' %}" + wrap("\ue012", "messages[0]['content']")
            + ("{%- else %}" + wrap("\ue012", json.dumps(default, ensure_ascii=False)) if default else "") + "{%- endif %}"
        )  # fmt: skip
    jinja = (
        jinja_system + "{%- for message in messages %}{%- if message['role'] == 'user' %}" + jinja_turn
        + "{%- elif message['role'] == 'assistant' %}{{ message['content'] }}" + _jinja_text(end)
        + "{%- endif %}{%- endfor %}"
    )  # fmt: skip
    return PromptTemplate(go, spec.system_prompt_no_input if system_turn else "", jinja, adds_bos)


# ---------------------------------------------------------------- chat templates: the named families

# Each family: the Go template (Ollama's .Messages; a default system prompt arrives as the first message) and
# its Python mirror, used to recognise a Jinja template by rendering sample conversations through both.
FAMILIES = {
    "chatml": (
        "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n",
        lambda m: (
            "".join(f"<|im_start|>{x['role']}\n{x['content']}<|im_end|>\n" for x in m)
            + "<|im_start|>assistant\n"
        ),
    ),
    "llama3": (
        "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>{{ end }}"
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
        lambda m: (
            "".join(f"<|start_header_id|>{x['role']}<|end_header_id|>\n\n{x['content']}<|eot_id|>" for x in m)
            + "<|start_header_id|>assistant<|end_header_id|>\n\n"
        ),
    ),
    "gemma": (
        '{{- range .Messages }}<start_of_turn>{{ if eq .Role "assistant" }}model{{ else }}{{ .Role }}{{ end }}\n'
        "{{ .Content }}<end_of_turn>\n{{ end }}<start_of_turn>model\n",
        lambda m: (
            "".join(
                f"<start_of_turn>{'model' if x['role'] == 'assistant' else x['role']}\n{x['content']}<end_of_turn>\n"
                for x in m
            )
            + "<start_of_turn>model\n"
        ),
    ),
    "phi_3": (
        "{{- range .Messages }}<|{{ .Role }}|>\n{{ .Content }}<|end|>\n{{ end }}<|assistant|>\n",
        lambda m: "".join(f"<|{x['role']}|>\n{x['content']}<|end|>\n" for x in m) + "<|assistant|>\n",
    ),
}
PROBES = (
    [{"role": "user", "content": "What is EBITDA?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Net income?"},
    ],
)


def with_default_system(messages: list[dict], system: str) -> list[dict]:
    """What Ollama does with a Modelfile SYSTEM: it comes first when the conversation has no system message."""
    if system and not (messages and messages[0]["role"] == "system"):
        return [{"role": "system", "content": system}, *messages]
    return messages


def chat_format(render_jinja, jinja: str, bos: str | None) -> PromptTemplate:
    """The family whose rendering equals the run's template (`render_jinja(messages, bos_token)`, generation
    prompt added) on every probe, with its default system prompt recovered from a user-only conversation.

    Whether the template writes BOS is asked with a stand-in bos_token: SmolLM2's BOS is `<|im_start|>`, so a
    rendering that merely starts with the BOS text may not start with a BOS at all."""
    adds_bos = bool(bos) and render_jinja(PROBES[0], _B).startswith(_B)
    rendered = [render_jinja(m, None) for m in PROBES]
    if adds_bos:
        rendered = [r.removeprefix(bos) for r in rendered]
    for go, mirror in FAMILIES.values():
        system = _default_system(mirror, rendered[0], PROBES[0])
        if system is None:
            continue
        if all(mirror(with_default_system(m, system)) == r for m, r in zip(PROBES, rendered, strict=True)):
            return PromptTemplate(go, system, jinja, adds_bos)
    note = (
        "note: the run's chat template is none of chatml, llama3, gemma, phi_3: the Modelfile has no TEMPLATE"
    )
    return PromptTemplate(None, "", jinja, adds_bos, note)


def _default_system(mirror, rendered: str, messages: list[dict]) -> str | None:
    """ "" when the family renders `messages` as the template did; the default system prompt when it does so
    with one in front; None when it matches neither way."""
    if mirror(messages) == rendered:
        return ""
    before, _, after = mirror([{"role": "system", "content": _S}, *messages]).partition(_S)
    if rendered.startswith(before) and rendered.endswith(after) and len(rendered) >= len(before) + len(after):
        return rendered[len(before) : len(rendered) - len(after)]
    return None


def modelfile(gguf_name: str, template: PromptTemplate, stops: list[str]) -> str:
    """The Ollama Modelfile text: FROM, TEMPLATE, SYSTEM, stop tokens, greedy answers like finetune generate."""
    lines = [
        "# Ollama: ollama create NAME -f Modelfile && ollama run NAME",
        f"FROM ./{gguf_name}",
    ]
    if template.go is not None:
        lines.append(f'TEMPLATE """{template.go}"""')
    if template.system:
        lines.append(f'SYSTEM """{template.system}"""')
    lines += [f'PARAMETER stop "{s}"' for s in dict.fromkeys(stops) if s]
    lines += ["# greedy, as `finetune generate` answers by default", "PARAMETER temperature 0"]
    return "\n".join(lines) + "\n"
