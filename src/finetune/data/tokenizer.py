"""Load the tokenizer a run uses: special tokens, added tokens and the chat template applied once, here.

Data formatting, training, merge and generation all call `load_tokenizer`, so they agree on every token.
`chat_template:` takes axolotl's values: `tokenizer_default`, `tokenizer_default_fallback_<name>`, a named
template (see CHAT_TEMPLATES), `jinja` (with `chat_template_jinja:`) or a Jinja string.
"""

from __future__ import annotations

from finetune import hub
from finetune.config import Config
from finetune.errors import UserError

# Named templates as axolotl writes them. Each ends a turn with one special token (EOT_OF), which is the
# token an answer is trained to stop on; Llama 3's opens with bos_token, so no second BOS is ever added.
CHAT_TEMPLATES = {
    "llama3": (
        "{% set loop_messages = messages %}{% for message in loop_messages %}"
        "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' %}"
        "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
    ),
    "chatml": (
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    "qwen_25": (
        "{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}{% endif %}"
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    "gemma": (
        "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'assistant' %}{% set role = 'model' %}"
        "{% else %}{% set role = message['role'] %}{% endif %}"
        "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
    ),
    "phi_3": (
        "{{ bos_token }}{% for message in messages %}"
        "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
    ),
}
EOT_OF = {
    "llama3": "<|eot_id|>",
    "chatml": "<|im_end|>",
    "qwen_25": "<|im_end|>",
    "gemma": "<end_of_turn>",
    "phi_3": "<|end|>",
}


def load_tokenizer(cfg: Config):
    """AutoTokenizer from tokenizer_config or base_model, with `special_tokens`, `tokens` and `chat_template`;
    mistral-common's tokenizer (data/mistral_chat.py) under tokenizer_use_mistral_common."""
    from transformers import AutoTokenizer

    source = cfg.tokenizer_config or cfg.base_source[0]
    if cfg.tokenizer_use_mistral_common:
        return load_mistral_tokenizer(source, cfg.revision_of_model)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source,
            revision=cfg.revision_of_model,
            trust_remote_code=cfg.trust_remote_code,
            use_fast=cfg.tokenizer_use_fast,
            **cfg.gguf_kwargs(source),
            **hub.loader_kwargs(),  # a GGUF file carries its tokenizer and chat template
            **_hf_format_only(),
        )
    except (OSError, ValueError) as exc:  # missing files, or a folder without tokenizer files
        raise UserError(
            f"base_model: cannot load a tokenizer from {source!r} ({str(exc).splitlines()[0]})"
        ) from None
    if cfg.special_tokens:
        tokenizer.add_special_tokens(dict(cfg.special_tokens))
    if cfg.tokens:
        tokenizer.add_tokens(list(cfg.tokens))
    if cfg.eot_tokens:
        missing = [t for t in cfg.eot_tokens if t not in tokenizer.get_vocab()]
        if missing:
            tokenizer.add_tokens(missing, special_tokens=True)
    if tokenizer.pad_token is None:
        # Llama-style tokenizers ship without a pad token; padding is masked out of the loss and attention.
        tokenizer.pad_token = tokenizer.eos_token
    if cfg.chat_template:
        tokenizer.chat_template = resolve_chat_template(
            cfg.chat_template, cfg.chat_template_jinja, tokenizer, "chat_template"
        )
    return tokenizer


def load_saved_tokenizer(folder, cfg: Config):
    """The tokenizer a run saved in `folder` (with the tokens training added and its chat template), read the way
    the run read its base's: mistral-common's under tokenizer_use_mistral_common, else the Hugging Face files."""
    if cfg.tokenizer_use_mistral_common:
        return load_mistral_tokenizer(str(folder))
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder, **_hf_format_only())


def load_mistral_tokenizer(source: str, revision: str | None = None):
    """tokenizer_use_mistral_common: `MistralCommonBackend` (transformers' wrapper of Mistral's own library) from
    the folder or hub id's tekken.json / tokenizer.model.v*, in mistral-common's test mode (generation's;
    data/mistral_chat.py encodes training rows with its finetuning-mode twin)."""
    try:
        from transformers import MistralCommonBackend

        # right padding in training batches, as the Hugging Face tokenizers of these models have (the wrapper's
        # default is left); generation pads its prompts on the left itself (model/generation.py)
        return MistralCommonBackend.from_pretrained(
            source, revision=revision, padding_side="right", **hub.loader_kwargs()
        )
    except ImportError as exc:
        raise UserError(
            "tokenizer_use_mistral_common: needs the mistral-common package "
            f"({str(exc).splitlines()[0]}): pip install 'finetune[mistral]'"
        ) from None
    except (OSError, ValueError) as exc:  # no tekken.json / tokenizer.model.v* there
        raise UserError(
            f"tokenizer_use_mistral_common: no mistral-common tokenizer (tekken.json or tokenizer.model.v*) "
            f"in {source!r} ({str(exc).splitlines()[0]})"
        ) from None


def is_mistral_common(tokenizer) -> bool:
    """Whether this is transformers' wrapper of a mistral-common tokenizer (data/mistral_chat.py). By the class's
    name: importing the class needs mistral-common installed."""
    return type(tokenizer).__name__ in ("MistralCommonBackend", "MistralCommonTokenizer")


def _hf_format_only() -> dict:
    """With mistral-common installed, transformers picks Mistral's own tokenizer by itself whenever the model
    folder has a tekken.json; finetune uses it only when tokenizer_use_mistral_common asks (axolotl's meaning),
    so the Hugging Face files are asked for explicitly. Without the package there is nothing to pick."""
    from importlib.util import find_spec

    return {"mistral_format": False} if find_spec("mistral_common") else {}


def resolve_chat_template(value: str, jinja: str | None, tokenizer, where: str) -> str:
    """The Jinja text for a `chat_template:` value; a name the tokenizer cannot honour raises UserError."""
    own = getattr(tokenizer, "chat_template", None)
    if value == "tokenizer_default":
        if not own:
            raise UserError(
                f"{where}: tokenizer_default, but the tokenizer has no chat template: name one (llama3, chatml ...)"
            )
        return own
    if value.startswith("tokenizer_default_fallback_"):
        return own or resolve_chat_template(
            value.removeprefix("tokenizer_default_fallback_"), jinja, tokenizer, where
        )
    if value == "jinja":
        if not jinja:
            raise UserError(f"{where}: jinja needs the template text in chat_template_jinja")
        return jinja
    if "{{" in value or "{%" in value:
        return value
    if value not in CHAT_TEMPLATES:
        raise UserError(
            f"{where}: unknown template {value!r} (known: tokenizer_default, {', '.join(CHAT_TEMPLATES)}, jinja, or a Jinja string)"
        )
    eot = EOT_OF[value]
    if eot not in tokenizer.get_vocab():
        raise UserError(
            f"{where}: {value} ends each turn with {eot}, which this tokenizer lacks, so the model could not learn "
            f"to stop: add it with `tokens: [{eot}]` (and its other markers), or use the model's own template"
        )
    return CHAT_TEMPLATES[value]


def count_new_tokens(cfg: Config, tokenizer) -> int:
    """How many tokens `special_tokens`/`tokens` added beyond the base tokenizer's vocabulary."""
    if not (cfg.special_tokens or cfg.tokens):
        return 0
    # the base tokenizer as shipped: no chat_template either (a named template may need the new tokens)
    plain = load_tokenizer(
        cfg.model_copy(update={"special_tokens": None, "tokens": None, "chat_template": None})
    )
    return max(0, len(tokenizer) - len(plain))
