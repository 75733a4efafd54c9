"""`finetune generate`: ask a trained run a question, prompted exactly as it was trained.

    finetune generate outputs/quickstart "What is liquidity?"
    finetune generate outputs/quickstart --chat                      # a conversation; empty line or Ctrl-D ends it

`load(path)` reads a run folder (base + adapter, in 4-bit when it trained in 4-bit, with the tokenizer the
run saved) or a `finetune merge` folder (the merged weights; merge copies config.yml there, so the prompt
format is known). The prompt comes from the first `datasets:` entry's format (or the one `--dataset N` names)
through the same code that tokenized the training data (`data.encode_prompt`), so the model sees the same tokens it learned from: the
custom format's template, alpaca's, raw text for `completion`, or the chat template. The answer is streamed
and stops at the tokenizer's EOS, the template's end-of-turn token or the model's own stop tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune import data, hub, methods, quiet
from finetune.config import Config, DatasetConfig
from finetune.data import (
    answer_format,
    question_prompt,  # noqa: F401 - the prompt for a question (the playground calls it here)
)
from finetune.data.tokenizer import load_saved_tokenizer
from finetune.errors import UserError
from finetune.model import generation
from finetune.outputs import run_dir


@dataclass
class Loaded:
    """A model ready to answer, with what it needs to prompt it as trained."""

    model: Any
    tokenizer: Any
    run: run_dir.Run
    what: str  # "adapter", "merged", "fully fine-tuned" or "base"
    dataset_index: int = 0  # which `datasets:` entry's format prompts are built in (--dataset)

    @property
    def cfg(self) -> Config:
        return self.run.cfg

    @property
    def dataset(self) -> DatasetConfig:
        """The dataset entry whose format prompts are built in."""
        return self.cfg.datasets[self.dataset_index]


# ---------------------------------------------------------------- loading


def _precision(cfg: Config):
    from finetune.model import Precision, precision

    try:
        return precision(cfg)
    except UserError:  # fp16 runs on a machine without GPU: answer in fp32
        return Precision(bf16=False, fp16=False, tf32=None, dtype="float32")


def load(
    path: str | Path, base_only: bool = False, say: Callable[[str], None] = print, dataset_index: int = 0,
    trust_remote_code: bool = False,
) -> Loaded:  # fmt: skip
    """Base + adapter (or a merged model, or with base_only the base alone) and the run's tokenizer.

    `dataset_index` picks the `datasets:` entry whose format the prompts take (a run may mix formats).
    """
    import transformers
    from transformers import AutoModelForCausalLM

    from finetune.model import cpu_threads, load_base  # torch

    transformers.utils.logging.disable_progress_bar()  # "Loading weights" bars: noise around an answer
    quiet.false_alarms()
    path = Path(path)
    run = run_dir.read_run(path, trust_remote_code=trust_remote_code)
    count = len(run.cfg.datasets)
    if not 0 <= dataset_index < count:
        raise UserError(
            f"--dataset: {dataset_index} is not an entry of this run's datasets (0 to {count - 1})"
        )
    offline = hub.offline_if_unreachable(run.cfg.hub_ids)
    if offline:
        say(f"note: {offline}")
    if methods.of(run.cfg).score_head:
        raise UserError(
            f"{path}: a reward model scores text and does not generate (its card shows how to score)"
        )
    model_dir = path
    if run.cfg.adapter is None and run.adapter_dir is None and not (path / "config.json").is_file():
        model_dir = run_dir.newest_full_model(path)  # an interrupted full fine-tune
        say(f"note: {path} has no final model (interrupted run?); using the newest checkpoint {model_dir}")
    merged = run.adapter_dir is None and (model_dir / "config.json").is_file()
    if run.adapter_dir is None and not merged:
        raise UserError(
            f"{path}: no adapter_config.json here or in a checkpoint-* folder, and no merged model"
        )
    if run.adapter_dir not in (None, path):
        say(
            f"note: {path} has no final adapter (interrupted run?); using the newest checkpoint {run.adapter_dir}"
        )
    tok_dir = run.adapter_dir or model_dir
    tokenizer = load_saved_tokenizer(tok_dir, run.cfg)  # as trained: added tokens, pad token, template
    prec = _precision(run.cfg)
    notes: list[str] = []
    if merged and not base_only:
        import torch

        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=prec.torch_dtype)
        if torch.cuda.is_available():
            model = model.to("cuda")
        what = "merged" if run.cfg.adapter else "fully fine-tuned"  # a full fine-tune's folder is the model
    else:
        # one whole copy on this device: DeepSpeed's placement (ZeRO-3) is for training only
        cfg = run.cfg.model_copy(update={"deepspeed": None})
        base = load_base(cfg, prec, notes)
        if base_only:
            if len(tokenizer) > base.get_input_embeddings().num_embeddings:
                base.resize_token_embeddings(len(tokenizer))  # the rows training started from
            model, what = base, "base"
        else:
            model = generation.attach_adapter(
                base, tokenizer, run.adapter_dir
            )  # quiet.false_alarms: peft's read
            what = "adapter"
    cpu_threads(model, notes)  # a tiny model generates faster on one thread, as it trains
    for note in notes:
        say(f"note: {note}")
    model.eval()
    return Loaded(model, tokenizer, run, what, dataset_index)


# ---------------------------------------------------------------- prompts


def prompt_ids(cfg: Config, ds: DatasetConfig, row: dict, tokenizer) -> list[int]:
    """Token ids of a row's prompt as training tokenized it (data.encode_prompt); a bad row raises UserError."""
    return data.encode_prompt(cfg, ds, row, tokenizer)


# ---------------------------------------------------------------- answering


def _streamer(tokenizer, write: Callable[[str], None]):
    from transformers import TextStreamer

    class _Write(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if text:
                write(text)

    return _Write(tokenizer, skip_prompt=True, skip_special_tokens=True)


def answer(
    loaded: Loaded,
    ids: list[int],
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    write: Callable[[str], None] | None = None,
) -> str:
    """Generate after the prompt `ids` (greedy at temperature 0), streaming text to `write`; the answer text."""
    import torch
    from transformers import GenerationConfig

    if temperature < 0:
        raise UserError(f"--temperature: must be >= 0 (got {temperature})")
    if max_new_tokens <= 0:
        raise UserError(f"--max-new-tokens: must be > 0 (got {max_new_tokens})")
    tok, model = loaded.tokenizer, loaded.model
    stop = answer_format.stop_ids(loaded.cfg, loaded.dataset, tok, model)
    sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        eos_token_id=stop,
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else stop[0],
        **sampling,
    )
    input_ids = torch.tensor([ids], device=model.device)
    with torch.no_grad():
        out = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            generation_config=config,
            streamer=_streamer(tok, write) if write else None,
        )
    return generation.decode_answer(tok, out[0, len(ids) :].tolist(), stop)


def chat(
    loaded: Loaded,
    system: str | None = None,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    read: Callable[[str], str] = input,
    write: Callable[[str], None] = print,
) -> list[tuple[str, str]]:
    """Interactive loop; chat formats keep the conversation, single-turn formats answer each question alone.

    An empty line, `exit`, or end of input stops it. Returns the (question, answer) pairs.
    """
    multi_turn = answer_format.format_kind(loaded.dataset) == "chat"
    if not multi_turn:
        write(
            f"note: this run trained on single-turn prompts ({answer_format.format_kind(loaded.dataset)}): each question is answered on its own\n"
        )
    history: list[tuple[str, str]] = []
    pairs = []
    while True:
        try:
            question = read(">>> ").strip()
        except EOFError:
            break
        if question in ("", "exit", "quit"):
            break
        ids = question_prompt(
            loaded.cfg, loaded.dataset, loaded.tokenizer, question, system, history if multi_turn else ()
        )
        text = answer(loaded, ids, max_new_tokens, temperature, write)
        write("\n")
        pairs.append((question, text))
        if multi_turn:
            history += [("user", question), ("assistant", text)]
    return pairs


def generate_command(
    path: str | Path,
    question: str | None,
    system: str | None = None,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    chat_mode: bool = False,
    write: Callable[[str], None] | None = None,
    dataset_index: int = 0,
    trust_remote_code: bool = False,
) -> str | None:
    """`finetune generate`: one streamed answer, or a chat session with --chat."""
    import sys

    def out(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    write = write or out
    if not chat_mode and not question:
        raise UserError("generate: give a question, or --chat for a conversation")
    if chat_mode and question:
        raise UserError("generate: --chat reads questions interactively; leave the question out")
    loaded = load(
        path, say=lambda m: print(m, file=sys.stderr), dataset_index=dataset_index,
        trust_remote_code=trust_remote_code,
    )  # fmt: skip
    if chat_mode:
        chat(loaded, system, max_new_tokens, temperature, write=write)
        return None
    ids = question_prompt(loaded.cfg, loaded.dataset, loaded.tokenizer, question, system)
    text = answer(loaded, ids, max_new_tokens, temperature, write)
    write("\n")
    return text
