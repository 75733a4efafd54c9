"""`finetune export --gguf`: the GGUF computes what the merged model computes (read back by transformers here, in
the test, not only by the command's own check), its Modelfile prompts as training did, and refusals are one line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from test_merge import make_run, reference_logits

import gotemplate
from conftest import INST_FORMAT, sentiment_rows
from finetune import config
from finetune.errors import UserError
from finetune.outputs import export, merge
from finetune.outputs.export import gguf_file, prompt_template

pytestmark = pytest.mark.usefixtures("one_thread")


def gguf_logits(out: Path, name: str, tokenizer_dir: Path) -> list:
    """The exported file loaded the way a user of transformers would: from_pretrained(dir, gguf_file=...)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out, gguf_file=name, dtype=torch.float32)
    return merge.logits(model, merge.prompt_ids(AutoTokenizer.from_pretrained(tokenizer_dir)))


def fields(path: Path) -> dict:
    import gguf

    reader = gguf.GGUFReader(str(path))
    return {"reader": reader, "names": {t.name for t in reader.tensors}, "fields": reader.fields}


def text_field(reader_fields: dict, key: str) -> str:
    field = reader_fields[key]
    return bytes(field.parts[field.data[0]]).decode()


@pytest.mark.parametrize("quant", ["f16", "q8_0"])
def test_export_tiny_matches_base_plus_adapter(tmp_path, tiny_model_dir, quant):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = make_run(tmp_path, tiny_model_dir)
    out = tmp_path / "gguf"
    diff = export.export_command(run, out, quant=quant, name="tiny-sentiment")
    assert sorted(p.name for p in out.iterdir()) == ["Modelfile", "tiny-sentiment.gguf"]
    assert diff <= export.CHECK_TOLERANCE[quant] * 3

    reference = reference_logits(run, tiny_model_dir)  # base + adapter, unmerged
    loaded = gguf_logits(out, "tiny-sentiment.gguf", run)
    scale = max(1.0, max(float(r.abs().max()) for r in reference))
    assert merge.max_difference(loaded, reference) <= export.CHECK_TOLERANCE[quant] * scale
    plain = merge.logits(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        merge.prompt_ids(AutoTokenizer.from_pretrained(run)),
    )
    assert merge.max_difference(plain, reference) > 10 * merge.max_difference(
        loaded, reference
    )  # adapter is in

    info = fields(out / "tiny-sentiment.gguf")
    assert text_field(info["fields"], "general.architecture") == "llama"
    assert text_field(info["fields"], "tokenizer.ggml.model") == "gpt2"
    assert text_field(info["fields"], "tokenizer.ggml.pre") == "gpt-2"
    assert {"token_embd.weight", "output.weight", "blk.1.attn_q.weight", "blk.0.ffn_down.weight"} <= info[
        "names"
    ]
    types = {t.name: t.tensor_type.name for t in info["reader"].tensors}
    assert types["blk.0.attn_q.weight"] == quant.upper() and types["blk.0.attn_norm.weight"] == "F32"
    for key in ("bos_token_id", "eos_token_id", "padding_token_id"):
        assert f"tokenizer.ggml.{key}" in info["fields"]
    assert "{{ message['content'] }}" in text_field(
        info["fields"], "tokenizer.chat_template"
    )  # the alpaca turn


def test_unpermuted_q_k_fails_the_check_and_writes_nothing(tmp_path, tiny_model_dir, monkeypatch, capsys):
    """Without llama.cpp's q/k row order (or with any other wrong tensor) the read-back logits differ: exit 1."""
    from finetune import cli

    run = make_run(tmp_path, tiny_model_dir)
    monkeypatch.setattr(gguf_file, "permute", lambda weights, n_head: weights)
    monkeypatch.setattr(sys, "argv", ["finetune", "export", str(run), "--gguf", "--out", str(tmp_path / "g")])
    with pytest.raises(SystemExit) as done:
        cli.main()
    assert done.value.code == 1
    err = capsys.readouterr().err
    assert "above the f16 tolerance" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no output, no temp folder


def test_qwen2_and_qwen3_export(tmp_path, tiny_model_dir):
    """Qwen2 (q/k/v biases) and Qwen3 (q/k norms): no permutation, their own tensor names. Qwen3 gets head_dim
    128 (every real Qwen3 has it): transformers 5.24 reads no attention.key_length for qwen3 GGUFs and assumes 128."""
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    sizes = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                 bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)  # fmt: skip
    for arch, (cfg_class, model_class), expected in (
        ("qwen2", (Qwen2Config, Qwen2ForCausalLM), "blk.0.attn_q.bias"),
        ("qwen3", (Qwen3Config, Qwen3ForCausalLM), "blk.0.attn_q_norm.weight"),
    ):
        torch.manual_seed(0)
        model = model_class(cfg_class(**sizes, **({"head_dim": 128} if arch == "qwen3" else {})))
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith("bias") or "norm" in name:
                    param.add_(torch.randn_like(param) * 0.1)  # biases and norms that matter
        base = tmp_path / arch
        model.save_pretrained(base)
        tokenizer.save_pretrained(base)
        run = make_run(tmp_path / f"run-{arch}", base)
        out = tmp_path / f"gguf-{arch}"
        export.export_command(run, out, quant="f16", name=arch)
        info = fields(out / f"{arch}.gguf")
        assert text_field(info["fields"], "general.architecture") == arch and expected in info["names"]
        reference = reference_logits(run, base)
        assert merge.max_difference(gguf_logits(out, f"{arch}.gguf", run), reference) < 0.01


# ---------------------------------------------------------------- refusals: one line, nothing written


def _bare_run(root: Path, base: Path, **over) -> Path:
    out = root / "run"
    out.mkdir(parents=True)
    raw = {
        "base_model": str(base),
        "adapter": "lora",
        "datasets": [{"path": "a/b"}],
        "output_dir": str(out),
        **over,
    }
    (out / "config.yml").write_text(config.to_yaml(config.validate(raw), {"finetune": "0.1.0"}))
    (out / "adapter_config.json").write_text("{}")
    return out


def test_refusals(tmp_path, tiny_model_dir):
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=1024)).save_pretrained(gpt2)
    with pytest.raises(UserError, match=r"not GPT2LMHeadModel \(model_type 'gpt2'\)") as err:
        export.export_command(_bare_run(tmp_path / "a", gpt2), tmp_path / "o1")
    assert len(str(err.value).splitlines()) == 1

    pairs = {"field_prompt": "prompt", "field_chosen": "chosen", "field_rejected": "rejected"}
    reward = _bare_run(
        tmp_path / "b", tiny_model_dir, reward_model=True, datasets=[{"path": "a/b", "type": pairs}]
    )
    with pytest.raises(UserError, match="reward model scores text"):
        export.export_command(reward, tmp_path / "o2")

    with pytest.raises(
        UserError,
        match=r"--quant q4_k_m: needs llama.cpp's llama-quantize.*--name run-f16.*llama-quantize OUT/run-f16.gguf",
    ):
        export.export_command(reward, tmp_path / "o3", quant="q4_k_m", name="run")
    with pytest.raises(UserError, match="--quant: must be one of"):
        export.export_command(reward, tmp_path / "o3", quant="int3")
    assert not any((tmp_path / o).exists() for o in ("o1", "o2", "o3"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="exists and is not a folder"):
        export.export_command(_bare_run(tmp_path / "c", tiny_model_dir), tmp_path / "file")
    with pytest.raises(UserError, match="--name"):
        export.export_command(_bare_run(tmp_path / "d", tiny_model_dir), tmp_path / "o4", name="../x")


def test_cli_refusal_is_one_line_exit_2(tmp_path, tiny_model_dir):
    import subprocess

    run = _bare_run(tmp_path, tiny_model_dir)
    cmd = [sys.executable, "-m", "finetune.cli", "export", str(run), "--gguf", "--out", str(tmp_path / "o"),
           "--quant", "q5_k_m"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert (
        done.returncode == 2
        and len(done.stderr.strip().splitlines()) == 1
        and "llama-quantize" in done.stderr
    )


# ---------------------------------------------------------------- the Modelfile TEMPLATE renders training's prompt


def _template_for(raw_over: dict, tiny_model_dir: Path):
    from finetune import data
    from finetune.data.tokenizer import load_tokenizer
    from finetune.outputs import run_dir

    cfg = config.validate({"base_model": str(tiny_model_dir), "adapter": "lora", **raw_over})
    tokenizer = load_tokenizer(cfg)
    run = run_dir.Run(Path("."), cfg, "")
    return cfg, tokenizer, export._template(run, tokenizer), data


def _ollama(template: prompt_template.PromptTemplate, question: str, system: str = "", history=()) -> str:
    """What Ollama's chat endpoint sends the model for this conversation, the Modelfile's SYSTEM the default."""
    messages = [*history, {"role": "user", "content": question}]
    if system:
        messages = [{"role": "system", "content": system}, *messages]
    return gotemplate.ollama(template.go, messages, template.system)


@pytest.mark.parametrize(
    "ds_type",
    [INST_FORMAT, "alpaca", {**INST_FORMAT, "system_prompt": "You rate news.", "system_format": "<<SYS>>{system}<</SYS>>\n"},
     {**INST_FORMAT, "format": "Q: {{literal}} {instruction}\nA:", "no_input_format": "Q: {{literal}} {instruction}\nA:"}],
    ids=["inst", "alpaca", "system", "braces"],
)  # fmt: skip
def test_modelfile_template_renders_text_formats_as_training(tiny_model_dir, ds_type):
    cfg, tokenizer, template, data = _template_for(
        {"datasets": [{"path": "a/b", "type": ds_type}]}, tiny_model_dir
    )
    ds = cfg.datasets[0]
    for row in sentiment_rows(4):
        if ds_type == "alpaca":
            row = {"instruction": row["context"], "output": row["target"]}
        question = row.get("context", row.get("instruction"))
        assert _ollama(template, question) == data.format_prompt(cfg, ds, row, tokenizer)
    assert template.add_bos  # the tiny tokenizer adds BOS to text prompts, as training tokenized them
    # the GGUF's chat template (llama.cpp's chat endpoints) renders the same prompt from messages
    for row in sentiment_rows(2):
        question = row["context"]
        chat = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], chat_template=template.jinja, tokenize=False
        )
        expected = data.format_prompt(cfg, ds, {"instruction": question, "output": "x", **row}, tokenizer)
        assert chat == expected
        system = [{"role": "system", "content": "S."}, {"role": "user", "content": question}]
        assert tokenizer.apply_chat_template(system, chat_template=template.jinja, tokenize=False) == _ollama(
            template, question, "S."
        )
    if ds_type == "alpaca":
        assert template.system.startswith("Below is an instruction")
    text = prompt_template.modelfile("m.gguf", template, ["<|eot_id|>"])
    assert text.splitlines()[1] == "FROM ./m.gguf" and 'PARAMETER stop "<|eot_id|>"' in text
    assert ('SYSTEM """' in text) == bool(template.system)


@pytest.mark.parametrize("name", ["llama3", "chatml", "phi_3", "gemma"])
def test_modelfile_template_renders_chat_templates_as_training(tiny_model_dir, name):
    tokens = {"chatml": ["<|im_start|>", "<|im_end|>"], "phi_3": ["<|user|>", "<|assistant|>", "<|system|>", "<|end|>"],
              "gemma": ["<start_of_turn>", "<end_of_turn>"]}.get(name, [])  # fmt: skip
    raw = {
        "datasets": [{"path": "a/b", "type": "chat_template"}],
        "chat_template": name,
        "tokens": tokens or None,
    }
    cfg, tokenizer, template, data = _template_for(raw, tiny_model_dir)
    assert template.go is not None, template.note
    ds = cfg.datasets[0]
    conversations = [
        [("user", "Is revenue up?"), ("assistant", "Yes.")],
        [("system", "Answer in one word."), ("user", "Sentiment?"), ("assistant", "positive")],
        [("user", "Hi"), ("assistant", "Hello."), ("user", "EBITDA?"), ("assistant", "Earnings before ...")],
    ]
    for turns in conversations:
        row = {"messages": [{"role": r, "content": c} for r, c in turns]}
        trained = data.format_prompt(cfg, ds, row, tokenizer)  # up to the last assistant header
        if template.add_bos:
            trained = trained.removeprefix(tokenizer.bos_token)
        system = turns[0][1] if turns[0][0] == "system" else ""
        history = [{"role": r, "content": c} for r, c in turns[1 if system else 0 : -2]]
        assert _ollama(template, turns[-2][1], system, history) == trained


@pytest.mark.real
def test_modelfile_smollm2_default_system_prompt(smollm2_dir):
    """SmolLM2's own template (ChatML with a default system prompt) becomes a TEMPLATE plus SYSTEM."""
    cfg, tokenizer, template, data = _template_for(
        {"base_model": str(smollm2_dir), "datasets": [{"path": "a/b", "type": "chat_template"}]}, smollm2_dir
    )
    assert template.system.startswith("You are a helpful AI assistant named SmolLM")
    row = {
        "messages": [{"role": "user", "content": "Sentiment?"}, {"role": "assistant", "content": "positive"}]
    }
    assert _ollama(template, "Sentiment?") == data.format_prompt(cfg, cfg.datasets[0], row, tokenizer)
    assert not template.add_bos


def test_modelfile_unknown_chat_template_has_no_template(tiny_model_dir):
    jinja = "{% for m in messages %}## {{ m['role'] }}: {{ m['content'] }}\n{% endfor %}## assistant:"
    raw = {
        "datasets": [{"path": "a/b", "type": "chat_template"}],
        "chat_template": "jinja",
        "chat_template_jinja": jinja,
    }
    _, _, template, _ = _template_for(raw, tiny_model_dir)
    assert template.go is None and "no TEMPLATE" in template.note and template.jinja == jinja
    assert "TEMPLATE" not in prompt_template.modelfile("m.gguf", template, []).replace("no TEMPLATE", "")


def test_gotemplate_subset_renderer():
    """The test's own renderer: Go semantics for the parts the TEMPLATEs use."""
    assert (
        gotemplate.render(
            '{{ if .System }}S:{{ .System }} {{ end }}{{ "{{" }}x}} {{ .Prompt }}', System="", Prompt="p"
        )
        == "{{x}} p"
    )
    msgs = [{"Role": "user", "Content": "a"}, {"Role": "assistant", "Content": "b"}]
    tpl = '\n{{- range .Messages }}[{{ if eq .Role "assistant" }}model{{ else }}{{ .Role }}{{ end }}:{{ .Content }}]{{ end }}'
    assert gotemplate.render(tpl, Messages=msgs) == "[user:a][model:b]"
    with pytest.raises(ValueError, match="unsupported"):
        gotemplate.render("{{ .Prompt | trim }}", Prompt="x")
    # Ollama's Execute: a `.Prompt` template runs once per turn, the last one cut after {{ .Response }}; one
    # without {{ .Response }} gets it appended; messages of one role in a row are one; .Messages runs once
    chat = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
    ]
    assert gotemplate.ollama("{{ if .System }}<{{ .System }}>{{ end }}Q:{{ .Prompt }} A:{{ .Response }}!", chat, "S") == (
        "<S>Q:a A:b!Q:c A:"
    )  # fmt: skip
    assert gotemplate.ollama("Q:{{ .Prompt }} A:", chat) == "Q:a A:bQ:c A:"
    assert gotemplate.ollama("{{ .Prompt }}|", [chat[0], {"role": "user", "content": "d"}]) == "a\n\nd|"
    assert (
        gotemplate.ollama(tpl + "{{ if .System }}!{{ end }}", chat, "S")
        == "[system:S][user:a][model:b][user:c]!"
    )


# ---------------------------------------------------------------- the real SmolLM2 fine-tune


@pytest.mark.real
@pytest.mark.slow
def test_export_real_smollm2_finetune(smollm2_gguf_run, tmp_path):
    """LoRA on the real SmolLM2 (its GGUF base), exported as q8_0 (what users ship; f16 and the other types are
    checked on the tiny model above, where the test also recomputes the command's read-back check itself: here
    the command's own check, which raises CheckFailed beyond the quant's tolerance, is what is relied on)."""
    _, run = smollm2_gguf_run
    out = tmp_path / "gguf"
    diff = export.export_command(run, out, quant="q8_0", name="smol")
    assert 0 < diff  # read back and compared against the merged model (q8_0 is not exact)
    info = fields(out / "smol.gguf")
    assert text_field(info["fields"], "tokenizer.ggml.pre") == "gpt-2"  # as training split text (see vocab)
    assert "output.weight" not in info["names"]  # tied embeddings: llama.cpp reuses token_embd
    modelfile = (out / "Modelfile").read_text()
    assert (
        'TEMPLATE """{{ if .System }}{{ .System }}{{ end }}{{ .Prompt }}{{ .Response }}<|im_end|>"""'
        in modelfile
    )
    assert 'PARAMETER stop "<|im_end|>"' in modelfile  # SmolLM2's EOS, which training appended to answers


# ---------------------------------------------------------------- tokenizers: sentencepiece-style and pre-tokenizer names


def spm_style_tokenizer(vocab_size: int = 600):
    """A Llama 2 / Mistral / TinyLlama-shaped tokenizer.json: BPE with byte fallback, `▁` for spaces from a
    normalizer, `<0xNN>` byte tokens, no pre-tokenizer; trained on the package's corpus."""
    from importlib import resources

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = resources.files("finetune").joinpath("assets/tiny_corpus.txt").read_text(encoding="utf-8")
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    tok.pre_tokenizer = pre_tokenizers.Split(
        "▁", behavior="merged_with_next"
    )  # pieces start with ▁, as in SPM
    tok.train_from_iterator(
        corpus.splitlines(),
        trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False),
    )
    tok.pre_tokenizer = None
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def test_export_sentencepiece_style_vocabulary(tmp_path):
    """tokenizer.ggml.model `llama`: byte tokens typed BYTE, scores in merge order, add_space_prefix; the
    command's own check asserts transformers' reading of it splits the check prompts into training's ids."""
    from finetune.model.tiny import build_model

    tokenizer = spm_style_tokenizer()
    base = tmp_path / "spm-base"
    build_model(tokenizer).save_pretrained(base)
    tokenizer.save_pretrained(base)
    run = make_run(tmp_path, base)
    export.export_command(run, tmp_path / "out", quant="f16", name="spm")
    info = fields(tmp_path / "out" / "spm.gguf")
    assert text_field(info["fields"], "tokenizer.ggml.model") == "llama"
    types = info["fields"]["tokenizer.ggml.token_type"]
    as_list = [int(types.parts[i][0]) for i in types.data]
    assert (
        as_list[1] == 3 and as_list[3] == 6 and as_list[300] == 1
    )  # <s> CONTROL, <0x00> BYTE, a piece NORMAL
    assert bool(info["fields"]["tokenizer.ggml.add_space_prefix"].parts[-1][0])
    reference = reference_logits(run, base)
    assert merge.max_difference(gguf_logits(tmp_path / "out", "spm.gguf", run), reference) < 0.01


def test_pre_tokenizer_names():
    """The splits llama.cpp names; anything else is refused rather than exported to tokenize differently."""
    from tokenizers import Regex, pre_tokenizers

    from finetune.outputs.export import gguf_vocab

    def name(pre) -> str | None:
        from tokenizers import Tokenizer, models

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre
        return gguf_vocab._pre_tokenizer_name(json.loads(tok.to_str())["pre_tokenizer"])

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    assert name(pre_tokenizers.ByteLevel(add_prefix_space=False)) == "gpt-2"
    assert (
        name(pre_tokenizers.Sequence([pre_tokenizers.Digits(True), pre_tokenizers.ByteLevel()])) == "smollm"
    )
    for regex, expected in (
        (gguf_vocab.LLAMA3_SPLIT, "llama-bpe"),
        (gguf_vocab.QWEN2_SPLIT, "qwen2"),
        ("x", None),
    ):
        split = pre_tokenizers.Split(Regex(regex), behavior="isolated")
        assert name(pre_tokenizers.Sequence([split, byte_level])) == expected
    assert name(pre_tokenizers.Whitespace()) is None


def test_export_qlora_run_with_dequantize_and_its_modelfile(trained_run, tmp_path):
    """A QLoRA run of the `[INST]` format: merged into the NF4-rounded base (--dequantize, as merge), and the
    Modelfile's TEMPLATE renders a training row's prompt as the data stage did."""
    from transformers import AutoTokenizer

    from finetune import data
    from finetune.outputs import run_dir

    out = tmp_path / "gguf"
    export.export_command(trained_run, out, quant="q8_0", name="inst", dequantize=True)
    text = (out / "Modelfile").read_text()
    template = text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    run = run_dir.read_run(trained_run)
    tokenizer = AutoTokenizer.from_pretrained(trained_run)
    eos = tokenizer.eos_token
    assert (
        template == "{{ if .System }}{{ .System }}{{ end }}[INST] {{ .Prompt }} [/INST]{{ .Response }}" + eos
    )
    rows = sentiment_rows(3)
    for row in rows:
        trained = data.format_prompt(run.cfg, run.cfg.datasets[0], row, tokenizer)
        assert gotemplate.ollama(template, [{"role": "user", "content": row["context"]}]) == trained
    chat = [
        {"role": r, "content": row[k]}
        for row in rows
        for r, k in (("user", "context"), ("assistant", "target"))
    ]
    assert gotemplate.ollama(template, chat[:-1]) == "".join(
        data.format_prompt(run.cfg, run.cfg.datasets[0], row, tokenizer) + row["target"] + eos for row in rows
    ).removesuffix(rows[-1]["target"] + eos)  # earlier answers end with EOS, as each trained row did
    info = fields(out / "inst.gguf")
    assert bool(
        info["fields"]["tokenizer.ggml.add_bos_token"].parts[-1][0]
    )  # training's prompts began with BOS


def test_smollm_digit_split_exports(tmp_path, tiny_model_dir, capsys):
    """SmolLM's tokenizer.json splits digits one by one (`smollm` in llama.cpp, which reproduces it); transformers
    reads such a GGUF without that split, so the command compares logits but not its tokens — and still passes."""
    import shutil

    from tokenizers import pre_tokenizers
    from transformers import AutoTokenizer

    base = tmp_path / "smollm-like"
    shutil.copytree(tiny_model_dir, base)
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tokenizer.save_pretrained(base)
    run = make_run(tmp_path, base)
    export.export_command(run, tmp_path / "out", quant="f16", name="m")
    assert "tokens not compared" in capsys.readouterr().out
    assert text_field(fields(tmp_path / "out" / "m.gguf")["fields"], "tokenizer.ggml.pre") == "smollm"
    own = AutoTokenizer.from_pretrained(tmp_path / "out", gguf_file="m.gguf")
    prompt = "Net income rose 12% in 2023"  # why: transformers' reading differs from training's on digits
    assert own(prompt)["input_ids"] != AutoTokenizer.from_pretrained(run)(prompt)["input_ids"]
