"""What a push to the Hugging Face hub uploads (push.py sends it): `finetune push` and the `hub_*` keys.

What is uploaded is an allow-list, never "the folder": a run folder also holds checkpoints (optimizer state,
gigabytes), `training_args.bin` (a pickle), the data cache, W&B folders, and whatever else a user left there
(an `.env`). So only these files, from the top level of the folder:

- the adapter (adapter_config.json, adapter_model.safetensors) or, for a `finetune merge` folder, the model
  (config.json, generation_config.json, model*.safetensors and its index);
- the tokenizer files; the card (README.md, whose front matter names `base_model` when the base is a hub id);
- config.yml (saved with secrets redacted), loss.png, the results (all/train/eval_results.json,
  trainer_state.json), and the reward modules config.yml names (GRPO's `rewards.py`, copied there by training).

Checkpoints only when asked (`--checkpoints`, or `hub_strategy: checkpoint|all_checkpoints`), each into its own
folder, with the state needed to resume (optimizer, scheduler, RNG; DeepSpeed's and FSDP's own folders) and without
training_args.bin. A checkpoint folder (and `merged/`) replaces the one already on the hub: push.py deletes its
files that this push does not send in the same commit, so `last-checkpoint/` never piles up DeepSpeed's
`global_stepN/` folders of earlier saves next to the newest. `--merged DIR` goes into
`merged/` (transformers: `subfolder="merged"`); `--gguf DIR` puts its .gguf files and Modelfile at the top of
the repo, where the hub finds them for llama.cpp (`-hf REPO:Q8_0`) and Ollama (`ollama run hf.co/REPO`), with
the Modelfile's TEMPLATE, SYSTEM and PARAMETERs as the `template`, `system` and `params` files the hub's Ollama
integration reads (ollama_hub.py).

Before anything is sent, every text file (and every file under 64 MiB) is searched for the token in use and for
token-shaped strings (`hf_...`, `sk-...`, ...): one is refused with the file and line. The token itself comes
only from huggingface_hub's own lookup (HF_TOKEN, else `hf auth login`); nothing here reads or passes it on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from finetune.config import trl_keys
from finetune.errors import UserError
from finetune.outputs import card, ollama_hub

# unfrozen_parameters.safetensors: base weights trained beside the adapter (model/unfrozen.py)
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "unfrozen_parameters.safetensors")
MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json")
MODEL_SHARD = re.compile(r"^model-\d{5}-of-\d{5}\.safetensors$")
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "chat_template.jinja", "chat_template.json", "tokenizer.model", "vocab.json", "merges.txt", "vocab.txt",
)  # fmt: skip
RUN_FILES = (
    "README.md", "config.yml", "loss.png",
    "all_results.json", "train_results.json", "eval_results.json", "trainer_state.json",
)  # fmt: skip
# What a checkpoint adds to resume from it: the Trainer's files (one rng_state_N.pth per process), DeepSpeed's
# `latest` and global_stepN/ folder, FSDP's (accelerate's names): FULL_STATE_DICT's pytorch_model_fsdp.bin and
# optimizer.bin (`_N` for a second model), SHARDED_STATE_DICT's pytorch_model_fsdp_N/ and optimizer_N/ folders
# (one .distcp file per process and a .metadata)
RESUME_FILES = re.compile(
    r"^(optimizer\.pt|scheduler\.pt|scaler\.pt|rng_state(_\d+)?\.pth|latest|zero_to_fp32\.py"
    r"|pytorch_model_fsdp(_\d+)?\.bin|optimizer(_\d+)?\.bin)$"
)
STATE_FOLDERS = re.compile(r"^(global_step\d+|pytorch_model_fsdp_\d+|optimizer_\d+)$")
GGUF_FILES = re.compile(r"^(.+\.gguf|Modelfile)$")
CHECKPOINT = re.compile(r"^checkpoint-\d+$")
REPLACED = re.compile(r"^(checkpoint-\d+|last-checkpoint|merged)$")  # a push sends these folders whole

# Token-shaped strings: Hugging Face, OpenAI-style, GitHub, W&B.
SECRET_VALUE = re.compile(
    rb"\b(hf_[A-Za-z0-9]{20,}|sk-[A-Za-z0-9_-]{20,}|ghp_[A-Za-z0-9]{20,}|wandb_v1_\w{20,})"
)
TEXT_SUFFIXES = {".json", ".jsonl", ".yml", ".yaml", ".md", ".txt", ".jinja", ".py", ""}
SCAN_LIMIT = 64 * 2**20  # binary files above this (weights) are not searched for the token


@dataclass(frozen=True)
class Upload:
    """One file of a push: where it goes in the repo, and its local path or its bytes."""

    path_in_repo: str
    source: Path | bytes

    def read(self) -> bytes:
        return self.source if isinstance(self.source, bytes) else self.source.read_bytes()


# ---------------------------------------------------------------- what is uploaded


def _top_level(folder: Path, prefix: str, allowed) -> list[Upload]:
    return [Upload(prefix + p.name, p) for p in sorted(folder.iterdir()) if p.is_file() and allowed(p.name)]


def model_files(folder: Path, prefix: str = "", card: bool = True) -> list[Upload]:
    """The adapter or merged model, tokenizer, card, config.yml, loss plot and results of one folder."""
    names = set(ADAPTER_FILES + MODEL_FILES + TOKENIZER_FILES + RUN_FILES)
    if not card:
        names.discard("README.md")
    files = _top_level(folder, prefix, lambda n: n in names or bool(MODEL_SHARD.match(n)))
    return files + reward_modules(folder, prefix)


def reward_modules(folder: Path, prefix: str = "") -> list[Upload]:
    """The reward modules (GRPO's `module.function`) that the folder's config.yml names and that training copied
    beside it: the run trains again from its own folder. Found by reading the YAML, never by importing."""
    try:
        raw = yaml.safe_load((folder / "config.yml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return []
    trl = raw.get("trl") if isinstance(raw, dict) else None
    names = trl.get("reward_funcs") if isinstance(trl, dict) else None
    out = []
    for name in names if isinstance(names, list) else []:
        if not isinstance(name, str) or name in trl_keys.BUILTIN_REWARDS:
            continue
        try:
            path = trl_keys.reward_file(name, folder)
        except ValueError:
            continue
        out.append(Upload(prefix + path.relative_to(folder.resolve()).as_posix(), path))
    return out


def checkpoint_files(checkpoint: Path, prefix: str) -> list[Upload]:
    """A checkpoint with what resuming needs; never training_args.bin, nor the adapter's stub README."""
    files = model_files(checkpoint, prefix, card=False)
    files += _top_level(checkpoint, prefix, lambda n: bool(RESUME_FILES.match(n)))
    for state in sorted(p for p in checkpoint.iterdir() if p.is_dir() and STATE_FOLDERS.match(p.name)):
        files += [
            Upload(f"{prefix}{p.relative_to(checkpoint).as_posix()}", p)
            for p in sorted(state.rglob("*"))
            if p.is_file()
        ]
    return files


def replaced_folders(files: list[Upload]) -> tuple[str, ...]:
    """The folders of this push that replace the hub's (`last-checkpoint/`, ...): a file of theirs already on
    the hub and not in this push is stale (an older save's global_stepN/, a shard of an older merge)."""
    tops = {u.path_in_repo.split("/", 1)[0] for u in files if "/" in u.path_in_repo}
    return tuple(sorted(f"{top}/" for top in tops if REPLACED.match(top)))


def checkpoints_of(output_dir: Path) -> list[Path]:
    found = [p for p in output_dir.iterdir() if p.is_dir() and CHECKPOINT.match(p.name)]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def run_uploads(
    output_dir: str | Path,
    merged: str | Path | None = None,
    gguf: str | Path | None = None,
    checkpoints: bool = False,
) -> list[Upload]:
    """Everything `finetune push` sends, checked: a run (or merged) folder, and the optional extras."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        raise UserError(f"{output_dir}: not a folder")
    files = model_files(output_dir)
    names = {u.path_in_repo for u in files}
    if not names & {"adapter_config.json", "config.json"} and not (
        checkpoints and checkpoints_of(output_dir)
    ):
        raise UserError(
            f"{output_dir}: no adapter_config.json or config.json here: not a finished run or a `finetune merge` "
            "folder (an interrupted run: add --checkpoints, or `finetune merge` it first)"
        )
    if "README.md" not in names and (output_dir / "config.yml").is_file():
        files.append(Upload("README.md", card.render(output_dir).encode()))  # an interrupted run: carded now
    if checkpoints:
        for ckpt in checkpoints_of(output_dir):
            files += checkpoint_files(ckpt, f"{ckpt.name}/")
    if merged is not None:
        merged = Path(merged)
        extra = model_files(merged, "merged/") if merged.is_dir() else []
        if not any(u.path_in_repo == "merged/config.json" for u in extra):
            raise UserError(f"--merged {merged}: no config.json there: not a `finetune merge` folder")
        files += extra
    if gguf is not None:
        gguf = Path(gguf)
        extra = _top_level(gguf, "", lambda n: bool(GGUF_FILES.match(n))) if gguf.is_dir() else []
        if not any(u.path_in_repo.endswith(".gguf") for u in extra):
            raise UserError(f"--gguf {gguf}: no .gguf file there: not a `finetune export --gguf` folder")
        files += extra
        if (gguf / "Modelfile").is_file():  # what `ollama run hf.co/REPO` reads instead of a Modelfile
            files += [Upload(n, data) for n, data in ollama_hub.hub_files(gguf / "Modelfile").items()]
    return files


def card_note(files: list[Upload]) -> str | None:
    """A note when the card cannot link the base model on the hub (the base was a local folder)."""
    card = next((u for u in files if u.path_in_repo == "README.md"), None)
    if card is None:
        return "no model card (README.md) in this push: write one with `finetune card OUTPUT_DIR`"
    text = card.read().decode("utf-8", errors="replace")
    front = (
        yaml.safe_load(text.split("---", 2)[1]) if text.startswith("---") and text.count("---") >= 2 else None
    )
    if not isinstance(front, dict) or not front.get("base_model"):
        return "the card names no base_model (the base was a local folder): the hub will not link the base"
    return None


def check_no_secrets(files: list[Upload], token: str | None) -> None:
    """Refuse to upload a file holding the token in use or a token-shaped string: one line per finding."""
    problems = []
    needle = token.encode() if token else None
    for upload in files:
        size = len(upload.source) if isinstance(upload.source, bytes) else upload.source.stat().st_size
        text = Path(upload.path_in_repo).suffix.lower() in TEXT_SUFFIXES  # "": Modelfile, latest
        if not text and size > SCAN_LIMIT:
            continue
        data = upload.read()
        where = upload.source if isinstance(upload.source, Path) else upload.path_in_repo
        found = data.find(needle) if needle else -1
        match = SECRET_VALUE.search(data) if text else None
        at = found if found >= 0 else match.start() if match else -1
        if at >= 0:
            line = data.count(b"\n", 0, at) + 1
            problems.append(
                f"{where}:{line}: holds a secret (an access token): nothing was pushed; remove it and push again"
            )
    if problems:
        raise UserError(problems)
