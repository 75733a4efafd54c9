"""What one run holds in memory, decided from the config and the device before anything is loaded: bytes of
the weights, of the activations and of the optimizer states — the same choices `model.compute.precision`,
`model.base.quantization_config` and `model.adapter.lora_config` make at load time, without torch."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib.util import find_spec

from finetune import data, methods
from finetune.config import Config
from finetune.config.deepspeed import zero_stage
from finetune.config.fsdp import requested as fsdp_requested
from finetune.plan.shapes import Linear, Shape

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")  # model.adapter.DEFAULT_TARGETS

# Optimizer state bytes per trained parameter (HF Trainer's optim names): two fp32 moments for AdamW, two
# 8-bit moments (+ block constants, ~2%) for the bitsandbytes 8-bit ones; paged ones page to CPU RAM only when
# the GPU runs out, so they are counted as resident. adafactor's factored moments are ~rows+cols: ~0.
OPTIMIZER_BYTES = {
    "adamw_torch": 8, "adamw_torch_fused": 8, "paged_adamw_32bit": 8, "adamw_8bit": 2.04,
    "adamw_bnb_8bit": 2.04, "paged_adamw_8bit": 2.04, "adamw_torch_8bit": 2.04, "adafactor": 0.05,
    "sgd": 0, "lion_8bit": 1.02, "paged_lion_8bit": 1.02,
}  # fmt: skip
NF4_BLOCK = 64  # bitsandbytes 4-bit block size; double quantization stores the block constants in 8 bits
NF4_BLOCK2 = 256  # ... in blocks of 256 with one fp32 constant each


@dataclass(frozen=True)
class Setting:
    """One run's numeric choices. Bytes per element: weights `wb`, the residual stream `res` (fp32 once k-bit
    preparation has cast the embeddings to fp32), autocast compute `ab` (= the activations' own dtype when
    there is no autocast)."""

    on_gpu: bool
    bits: int  # 4, 8, 16 or 32: how the decoder's linear weights are stored
    wb: int
    res: int
    ab: int
    autocast: bool
    micro_batch: int
    seq: int
    checkpointing: bool
    liger_norm: bool
    liger_glu: bool
    fused_loss: bool  # Liger fused linear cross-entropy (or cut_cross_entropy): no full logits
    optimizer_bytes: float
    zero: int  # DeepSpeed ZeRO stage, 0 without DeepSpeed
    gpus: int
    double_quant: bool
    pairs: bool = False  # preference rows: chosen and rejected go through the model together
    lm_head: bool = True  # a reward model scores with a one-output head: no vocabulary logits
    dropout: bool = False  # lora_dropout > 0: each adapter keeps its own dropped input and dropout's mask
    eager: bool = False  # eager attention: batch x heads x T x T scores and probabilities
    batch: tuple[float, int] | None = (
        None  # the data's largest micro-batch (rows, padded length); None: worst
    )

    @property
    def rows(self) -> float:
        """Rows of the largest micro-batch: micro_batch_size (the worst case), or what the data makes (a token
        budget's worth of the longest rows: not always a whole number)."""
        return self.batch[0] if self.batch else self.micro_batch

    @property
    def length(self) -> int:
        """Its padded length T: sequence_len (the worst case), or the data's."""
        return self.batch[1] if self.batch else self.seq

    @property
    def tokens(self) -> int:
        """Tokens of one micro-batch at its largest, which is what the peak is sized for: micro_batch_size rows
        of sequence_len (or the packed budget of the same size) when the data is not known, else the largest
        batch this data makes (data_batch); two sequences a row for pairs."""
        return round(self.rows * self.length) * (2 if self.pairs else 1)

    @property
    def kbit(self) -> bool:
        return self.bits in (4, 8)


def setting(cfg: Config, on_gpu: bool, micro_batch: int, gpus: int, saved_bits: int | None = None,
            lengths: dict | None = None) -> Setting:  # fmt: skip
    """`saved_bits`: a pre-quantized checkpoint's (4 or 8) loads as it was saved, whatever load_in_* say;
    `lengths`: the prepared training set's rows, tokens and longest row (data.length_stats), or None."""
    if cfg.bf16 is True or (cfg.bf16 == "auto" and on_gpu and not (cfg.fp16 or cfg.float16)):
        compute = 2  # bf16 mixed precision: the base is held in bf16 and matmuls autocast to bf16
        autocast = True
    elif cfg.fp16 and on_gpu:
        compute, autocast = 2, True
    else:
        compute, autocast = (2 if (cfg.bfloat16 or cfg.float16) else 4), False
    bits = saved_bits or (4 if cfg.quantized_4bit else 8 if cfg.load_in_8bit else 8 * compute)
    kbit = bits in (4, 8)
    res = 4 if kbit else compute  # prepare_model_for_kbit_training casts embeddings and norms to fp32
    liger_any = on_gpu  # Liger kernels are Triton (GPU); finetune skips them on CPU
    return Setting(
        on_gpu=on_gpu,
        bits=bits,
        wb=compute,
        res=res,
        ab=compute,
        autocast=autocast,
        micro_batch=micro_batch,
        seq=cfg.sequence_len,
        checkpointing=bool(cfg.gradient_checkpointing),
        liger_norm=liger_any and bool(cfg.liger_rms_norm),
        liger_glu=liger_any and bool(cfg.liger_glu_activation),
        fused_loss=liger_any and bool(cfg.liger_fused_linear_cross_entropy or cfg.cut_cross_entropy_on),
        optimizer_bytes=OPTIMIZER_BYTES.get(cfg.optimizer, 8),
        # FSDP2 shards what ZeRO-3 shards: weights, gradients and optimizer state
        zero=3 if fsdp_requested(cfg) else (zero_stage(cfg.deepspeed) or 0) if cfg.deepspeed else 0,
        gpus=max(1, gpus),
        double_quant=cfg.bnb_4bit_use_double_quant is not False,
        pairs=methods.of(cfg).preference_data,
        lm_head=not methods.of(cfg).score_head,
        dropout=cfg.lora_dropout > 0,
        eager=cfg.requested_attention == "eager",
        batch=data_batch(cfg, on_gpu, micro_batch, lengths) if lengths else None,
    )


def data_batch(cfg: Config, on_gpu: bool, micro_batch: int, lengths: dict) -> tuple[float, int]:
    """(rows, padded length) of the largest micro-batch the data makes, as train.batching cuts it: padded
    batches of micro_batch_size rows hold at most that many rows of the longest (of sequence_len on a GPU with
    pad_to_sequence_len); token-budget batches (sample_packing on CPU or without flash attention) are cut from
    the sorted lengths where train's sampler cuts them (data.batch_cuts: least padding, not the fullest batch),
    the one with most padded tokens counts — without the lengths, the budget's worth of the longest rows (an
    upper bound); packed rows (flash attention on a GPU) are one row of up to the budget."""
    rows, tokens, longest = lengths["rows"], lengths["tokens"], max(1, lengths["longest"])
    budget = micro_batch * cfg.sequence_len
    if (
        not cfg.sample_packing
    ):  # a GPU pads every row to sequence_len with pad_to_sequence_len (CPU ignores it)
        return min(micro_batch, rows), cfg.sequence_len if on_gpu and cfg.pad_to_sequence_len else longest
    if on_gpu and cfg.requested_attention.startswith("flash") and find_spec("flash_attn") is not None:
        return 1, min(budget, tokens)
    if lengths.get("lengths") is None:
        return min(rows * longest, budget) / longest, longest  # rows of shorter rows may fill the budget
    import numpy as np

    found = lengths.setdefault("largest_by_budget", {})  # the fixes and auto re-plan with the same lengths
    if budget not in found:
        ordered = np.sort(np.asarray(lengths["lengths"]))
        cuts = data.cut_points(ordered, budget)
        batches = [(b - a, int(ordered[b - 1])) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
        found[budget] = max(batches, key=lambda batch: (batch[0] * batch[1], batch[1]))
    return found[budget]


def adapted(cfg: Config, shape: Shape) -> list[Linear]:
    """The linear layers LoRA wraps: all-linear, a list of leaf names, a regex, or the attention default."""
    layers = set(cfg.peft_layers_to_transform or range(shape.layers))
    if cfg.lora_target_linear:
        chosen = list(shape.linears)
    elif isinstance(cfg.lora_target_modules, str):
        pattern = re.compile(cfg.lora_target_modules)
        chosen = [lin for lin in shape.linears if pattern.fullmatch(lin.name)]
    else:
        names = set(cfg.lora_target_modules or DEFAULT_TARGETS)
        chosen = [lin for lin in shape.linears if lin.leaf in names]
    return [lin for lin in chosen if lin.layer is None or lin.layer in layers]


def adapter_params(cfg: Config, shape: Shape) -> int:
    """LoRA A (r x in) and B (out x r) for every adapted layer; DoRA adds a magnitude vector (out)."""
    dora = cfg.peft_use_dora
    return sum(
        cfg.lora_r * (lin.in_features + lin.out_features) + (lin.out_features if dora else 0)
        for lin in adapted(cfg, shape)
    )


def trained_in_full(cfg: Config, shape: Shape) -> int:
    """Parameters of modules_to_save (embed_tokens / lm_head; new tokens train both): copied and trained."""
    names = set(cfg.lora_modules_to_save or [])
    if cfg.tokens:
        names |= {"embed_tokens", "lm_head"}
    total = 0
    if "embed_tokens" in names:
        total += shape.embed_params
    if "lm_head" in names:
        total += shape.embed_params if shape.tied else shape.head_params
    return total


def weight_bytes(shape: Shape, s: Setting) -> float:
    """The base at its storage: NF4 (0.5 byte + block constants) or int8 (1 byte + an fp32 scale per row) for
    the decoder's linear layers; everything else fp32 under k-bit training, else the compute dtype."""
    linear = shape.linear_params
    if s.bits == 4:
        consts = linear / NF4_BLOCK * (1 + 4 / NF4_BLOCK2) if s.double_quant else linear / NF4_BLOCK * 4
        quantized = linear * 0.5 + consts
    elif s.bits == 8:
        quantized = linear + 4 * sum(lin.out_features for lin in shape.linears)
    else:
        quantized = linear * s.wb
    rest = (shape.embed_params + shape.head_params + shape.other_params) * (4 if s.kbit else s.wb)
    return quantized + rest
