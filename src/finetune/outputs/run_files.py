"""What a finished run leaves in output_dir, each file written atomically (a reader never sees half a file).

adapter_model.safetensors + adapter_config.json (loads with PeftModel.from_pretrained), the tokenizer,
config.yml (resolved, redacted) with the reward modules it names (GRPO), trainer_state.json, train/eval/all_results.json, metrics.jsonl, loss.png.
The model card (README.md) is written last from these files by `card.write_card`.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import resource
import shutil
from importlib import metadata
from pathlib import Path

from finetune import methods
from finetune.config import Config, to_yaml, trl_keys
from finetune.files import atomic_write_bytes, atomic_write_json, atomic_write_text

PACKAGES = (
    "finetune",
    "torch",
    "transformers",
    "peft",
    "bitsandbytes",
    "datasets",
    "accelerate",
    "tokenizers",
    "deepspeed",
    "wandb",
)


def versions() -> dict[str, str]:
    """Versions of the libraries that decide the numbers, saved in config.yml and shown on the card."""
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def peak_rss_mib() -> float:
    """This process's peak resident memory (MiB): VmHWM where Linux has it, else ru_maxrss.

    Linux keeps ru_maxrss across fork and exec, so a `finetune train` started from a large process (a notebook
    holding a model, a test runner) would report its parent's peak; VmHWM belongs to this program's own memory.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux


def peak_memory() -> dict[str, float]:
    """Peak resident memory of this process and, on a GPU, peak allocated GPU memory (MiB)."""
    import torch

    out = {"peak_cpu_memory_mb": peak_rss_mib()}
    if torch.cuda.is_available():
        out["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def write_config(cfg: Config, output_dir: str | Path) -> None:
    """config.yml, and beside it each reward module it names (GRPO's `rewards.fn`: `rewards.py`, at the same
    relative path as next to the training config), so the run folder is self-contained: its config reads back
    anywhere, and `finetune train output_dir/config.yml` finds the very code that trained."""
    output_dir = Path(output_dir)
    if methods.of(cfg).online and cfg.config_dir:
        source_dir = Path(cfg.config_dir)
        for name in trl_keys.user_rewards(cfg.trl):
            source = trl_keys.reward_file(name, source_dir)
            target = output_dir.resolve() / source.relative_to(source_dir.resolve())
            if target != source:
                atomic_write_bytes(target, source.read_bytes())
    atomic_write_text(output_dir / "config.yml", to_yaml(cfg, versions()))


def save_model(trainer, output_dir: str | Path) -> None:
    """Adapter + tokenizer saved into a temp folder, then each file moved into place with os.replace.

    Every process calls this: under ZeRO-3 the Trainer gathers the sharded weights collectively; only the
    main process writes and moves files.
    """
    output_dir = Path(output_dir)
    tmp = output_dir / ".final-tmp"
    main = trainer.is_world_process_zero()
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
    trainer.save_model(str(tmp))  # the adapter and the processing class (tokenizer)
    if not main:
        return
    try:
        for path in sorted(tmp.rglob("*")):
            if path.is_file() and path.name != "training_args.bin":  # a pickle; config.yml says it all
                target = output_dir / path.relative_to(tmp)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def final_losses(log_history: list[dict]) -> dict[str, float]:
    """The last logged training loss and the last evaluation loss."""
    out = {}
    train = [e["loss"] for e in log_history if "loss" in e]
    evals = [e["eval_loss"] for e in log_history if "eval_loss" in e]
    if train:
        out["final_train_loss"] = train[-1]
        out["first_train_loss"] = train[0]
    if evals:
        out["final_eval_loss"] = evals[-1]
    return out


def results(
    trainer, train_metrics: dict, eval_metrics: dict, session_tokens: int, data_stats: dict, facts: dict
) -> tuple[dict, dict]:
    """(train_results, all_results): HF's own metrics plus final losses, tokens/s, memory and run facts.

    train_tokens_per_second counts real tokens (attention mask, no padding) trained in this session;
    `facts` carries the batching strategy and the padding fraction (trainer.FinetuneTrainer.batching_facts).
    """
    state = trainer.state
    runtime = train_metrics.get("train_runtime") or 0
    train = {
        **train_metrics,
        "train_tokens": session_tokens,
        "train_tokens_per_second": round(session_tokens / runtime, 3) if runtime else None,
        **final_losses(state.log_history),
        "global_step": state.global_step,
        "num_input_tokens_seen": state.num_input_tokens_seen,
        **peak_memory(),
        **facts,
    }
    if data_stats:
        train["data"] = data_stats
    return train, {**train, **eval_metrics}


def _axes():
    """A figure and its axes, drawn without a display (safe in threads and on servers)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), dpi=100)
    return fig, fig.add_subplot()


def _png(fig, ax, ylabel: str) -> bytes:
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def loss_plot(log_history: list[dict]) -> bytes | None:
    """PNG of training and validation loss against the optimizer step (None when nothing was logged)."""
    train = [(e["step"], e["loss"]) for e in log_history if "loss" in e]
    evals = [(e["step"], e["eval_loss"]) for e in log_history if "eval_loss" in e]
    if not train and not evals:
        return None
    fig, ax = _axes()
    if train:
        ax.plot(*zip(*train, strict=True), label="training loss", linewidth=1.2)
    if evals:
        ax.plot(*zip(*evals, strict=True), "o-", label="validation loss", linewidth=1.5)
    return _png(fig, ax, "loss")


def reward_plot(log_history: list[dict]) -> bytes | None:
    """PNG of the mean reward (with its spread across completions) against the optimizer step: what an
    online-RL run (rl: grpo) has in place of a loss curve (its loss is near zero by construction)."""
    points = [(e["step"], e["reward"], e.get("reward_std", 0.0)) for e in log_history if "reward" in e]
    if not points:
        return None
    steps, mean, std = zip(*points, strict=True)
    fig, ax = _axes()
    ax.plot(steps, mean, label="mean reward", linewidth=1.2)
    ax.fill_between(
        steps, [m - s for m, s in zip(mean, std, strict=True)], [m + s for m, s in zip(mean, std, strict=True)],
        alpha=0.2, label="± std across completions",
    )  # fmt: skip
    return _png(fig, ax, "reward")


def write_run_files(
    trainer, output_dir: str | Path, train_res: dict, all_res: dict, eval_metrics: dict
) -> None:
    """trainer_state.json, *_results.json, metrics.jsonl (rewritten whole from the state) and loss.png (reward.png for rl: grpo)."""
    output_dir = Path(output_dir)
    state = trainer.state
    # The same JSON as TrainerState.save_to_json, written atomically.
    atomic_write_text(
        output_dir / "trainer_state.json",
        json.dumps(dataclasses.asdict(state), indent=2, sort_keys=True) + "\n",
    )
    atomic_write_json(output_dir / "train_results.json", train_res)
    if eval_metrics:
        atomic_write_json(output_dir / "eval_results.json", eval_metrics)
    atomic_write_json(output_dir / "all_results.json", all_res)
    # The live metrics.jsonl may hold lines from before a resume; the state's history is the true record.
    lines = "".join(json.dumps(entry) + "\n" for entry in state.log_history)
    atomic_write_text(output_dir / "metrics.jsonl", lines)
    rewards = reward_plot(state.log_history)  # rl: grpo: the reward curve replaces the loss curve
    if rewards is not None:
        atomic_write_bytes(output_dir / "reward.png", rewards)
        return
    png = loss_plot(state.log_history)
    if png is not None:
        atomic_write_bytes(output_dir / "loss.png", png)


def summary_lines(output_dir: str | Path, all_res: dict) -> list[str]:
    """The end-of-run summary: where things are and the numbers that matter."""

    def num(key, fmt="{:.4f}"):
        return fmt.format(all_res[key]) if all_res.get(key) is not None else "n/a"

    lines = [f"outputs: {Path(output_dir).resolve()}"]
    lines.append(
        f"loss: train {num('first_train_loss')} -> {num('final_train_loss')}, eval {num('final_eval_loss')}"
    )
    lines.append(
        f"speed: {num('train_tokens_per_second', '{:,.0f}')} real tokens/s, "
        f"{num('train_samples_per_second', '{:.2f}')} samples/s, {num('train_runtime', '{:.1f}')} s"
    )
    if all_res.get("batching"):
        pad = all_res.get("padding_fraction")
        lines.append(
            f"batching: {all_res['batching']}"
            + (f", {pad:.1%} of tokens were padding" if pad is not None else "")
            + (
                f"; {all_res['total_train_batch_tokens']:,} tokens (~{all_res['mean_rows_per_step']} rows) "
                "per optimizer step"
                if all_res.get("total_train_batch_tokens")
                else ""
            )
        )
    mem = f"peak memory: {num('peak_cpu_memory_mb', '{:,.0f}')} MiB RAM"
    if "peak_gpu_memory_mb" in all_res:
        mem += f", {num('peak_gpu_memory_mb', '{:,.0f}')} MiB GPU"
    lines.append(mem)
    return lines
