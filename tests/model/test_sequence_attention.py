# ruff: noqa: E402
"""sdpa one sequence at a time (model/sequence_attention.py): a flattened row's loss and gradients are the padded
batch's, a sliding window is kept inside long sequences, padded batches are plain sdpa, and the switch never
reaches a saved config."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from finetune.model.sequence_attention import SEQUENCE_SDPA, use_sequence_attention

pytestmark = pytest.mark.usefixtures("one_thread")

LENGTHS = (9, 31, 17, 4)


def rows(vocab: int) -> list[dict]:
    """Rows of different lengths, the first half of each masked (a prompt), as the data stage makes them."""
    gen = torch.Generator().manual_seed(0)
    out = []
    for n in LENGTHS:
        ids = torch.randint(8, vocab, (n,), generator=gen).tolist()
        out.append({"input_ids": ids, "labels": [-100] * (n // 2) + ids[n // 2 :]})
    return out


def padded(features: list[dict], pad_id: int) -> dict:
    longest = max(len(f["input_ids"]) for f in features)

    def fill(values, value):
        return torch.tensor([v + [value] * (longest - len(v)) for v in values])

    return {
        "input_ids": fill([f["input_ids"] for f in features], pad_id),
        "attention_mask": fill([[1] * len(f["input_ids"]) for f in features], 0),
        "labels": fill([f["labels"] for f in features], -100),
    }


def flattened(features: list[dict]) -> dict:
    """The training collator batch_flattening uses (rows joined, position_ids restarting, the row bounds)."""
    from finetune.train.batching import PackedCollator

    return PackedCollator(flash_kwargs=True)([dict(f) for f in features])


def loss_and_grads(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    model.zero_grad()
    loss = model(**batch).loss
    loss.backward()
    return loss.detach(), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def test_flattened_row_trains_exactly_like_the_padded_batch(tiny_model_dir, monkeypatch):
    """The LoRA model's loss and every gradient: flattened through SEQUENCE_SDPA equals padded through sdpa
    (the tiny model has grouped-query attention, as Llama 3 does), with sdpa called once per row — which
    fails if transformers stops passing the collator's cu_seq_lens_q down to the attention function."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from transformers.integrations import sdpa_attention

    plain, lengths = sdpa_attention.sdpa_attention_forward, []

    def counted(module, query, *args, **kwargs):
        lengths.append(query.shape[2])
        return plain(module, query, *args, **kwargs)

    monkeypatch.setattr(sdpa_attention, "sdpa_attention_forward", counted)

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(
        tiny_model_dir, attn_implementation="sdpa", dtype=torch.float32
    )
    model = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    )
    features = rows(base.config.vocab_size)
    want = loss_and_grads(model, padded(features, base.config.pad_token_id))
    assert use_sequence_attention(model) and base.config._attn_implementation == SEQUENCE_SDPA
    lengths.clear()
    got = loss_and_grads(model, flattened(features))
    assert lengths == list(LENGTHS) * base.config.num_hidden_layers  # each layer, row by row
    torch.testing.assert_close(got[0], want[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-6)
    # without the sequence bounds the row would be one long sequence: the bounds are what keep rows apart
    apart = {k: v for k, v in flattened(features).items() if not k.startswith(("cu_seq", "max_length"))}
    with torch.no_grad():
        merged = model(**{**apart, "position_ids": torch.arange(apart["input_ids"].shape[1])[None]}).loss
    assert abs(merged.item() - want[0].item()) > 1e-5  # a random model attends almost evenly: small, not 0
    # padded batches (evaluation, generation) through SEQUENCE_SDPA: exactly sdpa
    torch.testing.assert_close(loss_and_grads(model, padded(features, base.config.pad_token_id))[0], want[0])


def test_sliding_window_is_kept_inside_a_long_sequence():
    """A Mistral-style model whose window (4 tokens) is shorter than the rows: per-sequence attention keeps the
    window, as sdpa's padded mask does."""
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    config = MistralConfig(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, sliding_window=4, pad_token_id=0, attn_implementation="sdpa",
    )  # fmt: skip
    model = MistralForCausalLM(config).eval()
    features = rows(config.vocab_size)
    with torch.no_grad():
        want = model(**padded(features, 0)).loss
        assert use_sequence_attention(model)
        got = model(**flattened(features)).loss
        model.config.sliding_window = None  # the same rows with full causal attention: a different loss
        full = model(**flattened(features)).loss
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert abs(full.item() - want.item()) > 1e-4


def test_only_sdpa_models_switch_and_the_switch_is_not_saved(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    eager = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="eager")
    assert not use_sequence_attention(eager) and eager.config._attn_implementation == "eager"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa")
    assert use_sequence_attention(model)
    model.save_pretrained(
        tmp_path / "saved"
    )  # a full fine-tune's checkpoint loads anywhere, without finetune
    assert SEQUENCE_SDPA not in (tmp_path / "saved" / "config.json").read_text()
