"""tokenizer_use_mistral_common: Mistral's own tokenizer files (shipped inside the mistral-common package), its
chat format trained turn by turn with exact token masks, the prompt generation builds, and a run end to end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_chat_format import CHAT
from test_formats import decoded, encode

from conftest import one_thread_run
from finetune import config
from finetune.config import ConfigError
from finetune.data import mistral_chat, report_files, trained_prompt
from finetune.data.formats import IGNORE
from finetune.data.tokenizer import load_tokenizer

mistral_common = pytest.importorskip(
    "mistral_common", reason="the mistral extra: pip install 'finetune[mistral]'"
)

# (folder file name, file shipped in mistral_common/data): Nemo's tekken (system prompt moved into the last user
# turn), and SentencePiece v7 (its own [SYSTEM_PROMPT] block)
TOKENIZERS = {
    "tekken": ("tekken.json", "tekken_240911.json"),
    "spm_v7": ("tokenizer.model.v7", "mistral_instruct_tokenizer_241114.model.v7"),
}


def tokenizer_folder(root: Path, kind: str) -> Path:
    name, shipped = TOKENIZERS[kind]
    folder = root / kind
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(mistral_common.__file__).parent / "data" / shipped, folder / name)
    return folder


def mistral_cfg(base: Path, dataset: dict | None = None, **extra):
    return config.validate(
        {
            "base_model": str(base),
            "tokenizer_use_mistral_common": True,
            "adapter": "lora",
            "datasets": [{"path": "org/data", "type": "chat_template", **(dataset or {})}],
            **extra,
        }
    )


@pytest.fixture(scope="module", params=sorted(TOKENIZERS))
def base(request, tmp_path_factory) -> Path:
    return tokenizer_folder(tmp_path_factory.mktemp("mistral"), request.param)


@pytest.fixture(scope="module")
def tok(base):
    return load_tokenizer(mistral_cfg(base))


def trained_runs(tok, out, i=0) -> list[str]:
    """Each run of consecutive trained tokens, decoded as text (special tokens kept)."""
    runs, current = [], []
    for token, label in zip(out["input_ids"][i], out["labels"][i], strict=True):
        if label != IGNORE:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    runs += [current] if current else []
    return [
        tok.decode(run, skip_special_tokens=True).strip() + ("</s>" if run[-1] == tok.eos_token_id else "")
        for run in runs
    ]


def test_the_tokenizer_is_mistral_commons_own(tok, base):
    assert type(tok).__name__ == "MistralCommonBackend"
    assert (
        tok.padding_side == "right"
    )  # training batches pad on the right, as the HF tokenizers of these models
    # data/mistral_chat.tokenizer_file reads the wrapper's private _tokenizer_path: this fails if it moves
    assert mistral_chat.tokenizer_file(tok).parent == base


def test_assistant_turns_and_their_eos_are_trained_exactly(base, tok):
    out, _ = encode(mistral_cfg(base), [{"messages": CHAT}], tok)
    assert trained_runs(tok, out) == ["Return on equity.</s>", "Return on assets.</s>"]
    ids, labels = out["input_ids"][0], out["labels"][0]
    # every trained token is one of the answers' own tokens (their encoding alone), nothing of the format's
    answers = [
        t
        for m in CHAT
        if m["role"] == "assistant"
        for t in tok.encode(m["content"], add_special_tokens=False)
    ]
    trained = [t for t, label in zip(ids, labels, strict=True) if label != IGNORE and t != tok.eos_token_id]
    assert trained == answers
    assert ids.count(tok.bos_token_id) == 1 and labels.count(tok.eos_token_id) == 2


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"roles_to_train": ["assistant", "user"]}, ["What is ROE?", "Return on equity.</s>", "And ROA?", "Return on assets.</s>"]),
        ({"train_on_eos": "last"}, ["Return on equity.", "Return on assets.</s>"]),
        ({"train_on_eos": "none"}, ["Return on equity.", "Return on assets."]),
    ],
)  # fmt: skip
def test_roles_to_train_and_train_on_eos(base, tok, extra, expected):
    out, _ = encode(mistral_cfg(base, extra), [{"messages": CHAT}], tok)
    assert (
        trained_runs(tok, out) == expected
    )  # the system prompt is never trained, wherever the format puts it


def test_an_answer_equal_to_a_sentinel_or_repeating_the_question_is_located(base, tok):
    rows = [
        {"messages": [{"role": "user", "content": "A"}, {"role": "assistant", "content": "A"}]},
        {"messages": [{"role": "user", "content": "B or A?"}, {"role": "assistant", "content": "B or A?"}]},
    ]
    out, _ = encode(mistral_cfg(base), rows, tok)
    assert [trained_runs(tok, out, i) for i in range(2)] == [["A</s>"], ["B or A?</s>"]]


def test_a_conversation_mistral_common_refuses_is_a_row_error(base, tok):
    out, _ = encode(mistral_cfg(base), [{"messages": [{"role": "assistant", "content": "hi"}]}], tok)
    assert out["status"][0] != 0 and "mistral-common refused it" in out["error"][0]
    assert out["input_ids"][0] == []


def test_the_prompt_generation_builds_is_the_trained_one(base, tok):
    """Generation's prompt (mistral-common's test mode) is exactly the row's tokens before its last answer."""
    cfg = mistral_cfg(base)
    out, _ = encode(cfg, [{"messages": CHAT}], tok)
    prompt = trained_prompt.encode_prompt(cfg, cfg.datasets[0], {"messages": CHAT}, tok)
    labels = out["labels"][0]
    last_answer = max(i for i, label in enumerate(labels) if label != IGNORE and labels[i - 1] == IGNORE)
    assert prompt == out["input_ids"][0][:last_answer]
    assert decoded(tok, out, 0, trained=False).count("ROA") == 1


def test_without_the_key_the_hugging_face_files_are_used_even_beside_tekken_json(tmp_path, tiny_model_dir):
    folder = tmp_path / "both"
    shutil.copytree(tiny_model_dir, folder)
    tokenizer_folder(tmp_path, "tekken")
    shutil.copy(tmp_path / "tekken" / "tekken.json", folder / "tekken.json")
    plain = config.validate(
        {"base_model": str(folder), "adapter": "lora", "datasets": [{"path": "org/data"}]}
    )
    assert type(load_tokenizer(plain)).__name__ != "MistralCommonBackend"
    assert type(load_tokenizer(mistral_cfg(folder))).__name__ == "MistralCommonBackend"


def test_a_folder_without_mistral_tokenizer_files_is_one_line(tiny_model_dir):
    with pytest.raises(
        Exception, match=r"^tokenizer_use_mistral_common: no mistral-common tokenizer \(tekken.json"
    ):
        load_tokenizer(mistral_cfg(tiny_model_dir))


@pytest.mark.parametrize(
    ("extra", "dataset", "where"),
    [
        ({}, {"type": "alpaca"}, "datasets.0.type"),
        ({}, {"chat_template": "chatml"}, "datasets.0.chat_template"),
        ({"chat_template": "chatml"}, {}, "chat_template"),
        ({"special_tokens": {"pad_token": "<pad>"}}, {}, "special_tokens"),
        ({"rl": "dpo"}, {}, "rl"),
    ],
)
def test_keys_mistral_common_cannot_take_are_refused_at_the_key(
    tmp_path, write_config, extra, dataset, where
):
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"messages": CHAT}) + "\n")
    path = write_config(
        {
            "base_model": "mistralai/Magistral-Small-2506",
            "tokenizer_use_mistral_common": True,
            "adapter": "lora",
            "datasets": [{"path": str(data), "type": "chat_template", **dataset}],
            **extra,
        }
    )
    with pytest.raises(ConfigError) as info:
        config.load(path)
    (problem,) = info.value.problems
    assert f"{path}:" in problem and "mistral" in problem
    assert problem.split(": ", 1)[1].startswith(where.replace(".0.", "[0]."))


# ---------------------------------------------------------------- a run end to end


@pytest.fixture(scope="module")
def mistral_run(tmp_path_factory) -> Path:
    """LoRA on a tiny Llama whose vocabulary is Nemo's tekken (131k tokens, hidden size 16), 4 steps."""
    from transformers import MistralCommonBackend

    from finetune.model.tiny import build_model

    root = tmp_path_factory.mktemp("mistral_run")
    base = tokenizer_folder(root, "tekken")
    model = build_model(
        MistralCommonBackend.from_pretrained(base),
        hidden_size=16,
        layers=1,
        heads=2,
        kv_heads=1,
        intermediate_size=32,
    )
    model.save_pretrained(base)
    data = root / "chat.jsonl"
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"Sentiment of: shares rose {i}%"},
                {"role": "assistant", "content": "positive"},
            ]
        }
        for i in range(16)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = mistral_cfg(
        base, {"path": str(data)}, lora_r=4, lora_alpha=8, lora_target_linear=True, sequence_len=64,
        dataset_prepared_path=str(root / "prepared"), dataset_processes=1, output_dir=str(root / "out"),
        micro_batch_size=4, max_steps=4, learning_rate=0.01, lr_scheduler="constant", logging_steps=1, seed=7,
    )  # fmt: skip
    return one_thread_run(cfg)


def test_a_run_trains_saves_mistral_commons_tokenizer_and_generates(mistral_run):
    from finetune.inference import generate

    assert (mistral_run / "adapter_model.safetensors").exists()
    assert (mistral_run / "tekken.json").exists()  # the run's tokenizer, saved as mistral-common reads it
    saved = yaml_of(mistral_run / "config.yml")
    assert saved["tokenizer_use_mistral_common"] is True
    loaded = generate.load(mistral_run)
    assert type(loaded.tokenizer).__name__ == "MistralCommonBackend"
    ids = generate.question_prompt(
        loaded.cfg, loaded.dataset, loaded.tokenizer, "Sentiment of: shares rose 3%"
    )
    assert loaded.tokenizer.decode(ids).startswith("<s>[INST]Sentiment of")
    assert isinstance(generate.answer(loaded, ids, max_new_tokens=4, write=lambda _: None), str)
    # merge folds the adapter in and saves mistral-common's tokenizer file beside the model (checked by logits)
    from finetune.outputs import merge

    merged = mistral_run.parent / "merged"
    assert merge.merge_command(mistral_run, merged, dtype="fp32") < 1e-4
    assert (merged / "tekken.json").exists()
    # `finetune data` reads the prepared rows back as text with this tokenizer too
    found = report_files.data_command(loaded.cfg, [], as_json=True)
    assert json.dumps(found) and "positive" in json.dumps(found)


def yaml_of(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())
