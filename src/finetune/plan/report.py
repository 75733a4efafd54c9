"""`finetune plan` and the fit check `finetune train` runs first: the plan for a config on a device, printed as
a table (or one JSON object), and the one line a run that will not fit stops with."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from finetune import data, hub, methods
from finetune.config import Config
from finetune.errors import UserError
from finetune.plan import devices, fixes
from finetune.plan.devices import Device
from finetune.plan.estimate import Plan, estimate
from finetune.plan.shapes import shape_of

WORST_NOTE = "sized for the worst case, every row at sequence_len: the data's lengths were not read"
LABELS = {
    "base_weights": "base weights",
    "adapter": "LoRA parameters (fp32)",
    "adapter_gradients": "their gradients",
    "optimizer_states": "optimizer states",
    "modules_to_save": "modules_to_save / new embeddings",
    "weight_gradients": "weight gradients (full fine-tuning)",
    "activations": "activations kept for backward",
    "logits_and_loss": "logits and loss (fp32)",
    "layer_backward": "one layer's backward",
    "loading_base": "loading the base",
    "cuda_context": "CUDA context",
    "allocator_slack": "allocator slack",
    "runtime": "Python + libraries (RSS)",
    "checkpoint_pages": "checkpoint pages read for quantizing (mmap)",
    "fast_heap_kept": "freed activations the fast heap keeps",
}


def device_for(name: str | None, gpus: int, memory_gib: float | None) -> Device:
    """--device NAME (a table entry or cpu), else the GPU nvidia-smi sees, else this CPU; --memory overrides."""
    if name is None:
        device = devices.detect()
        return Device(device.name, memory_gib or device.memory_gib, device.peak_tflops, device.is_gpu)
    name = name.lower()
    if name == "cpu":
        return devices.cpu_device(memory_gib)
    if name not in devices.GPUS:
        raise UserError(f"--device: unknown device {name!r} (one of: {', '.join(devices.DEVICE_NAMES)})")
    return devices.gpu_device(name, memory_gib)


def make_plan(cfg: Config, device: Device, gpus: int = 1, lengths: dict | None = None,
              processes: int | None = None, shape=None) -> Plan:  # fmt: skip
    """The plan with its fixes when it does not fit (the shapes are read once). With `lengths`
    (data.length_stats) its peak is this data's, the worst case (every row at sequence_len) beside it."""
    shape = shape or shape_of(cfg)
    plan = estimate(cfg, device, gpus, shape, lengths=lengths, processes=processes)
    worst = estimate(cfg, device, gpus, shape, plan.micro_batch, processes=processes)
    plan.worst_case_peak_gib = worst.peak_gib
    if lengths is None:
        plan.notes.append(WORST_NOTE)
    elif worst.peak_gib > plan.peak_gib * 1.01:
        plan.notes.append(
            f"sized for {plan.sized_for}; with every row at sequence_len the peak would be "
            f"{worst.peak_gib:.2f} GiB"
        )
    if cfg.micro_batch_size == "auto":
        plan.notes.append(
            f"micro_batch_size: auto -> {plan.micro_batch} (the largest power of two that fits)"
        )
    if not plan.fits:
        plan.fixes = fixes.fixes(cfg, plan, shape)
    return plan


def data_lengths(cfg: Config) -> tuple[dict | None, str]:
    """(data.length_stats of this config's training set, "") — prepared and cached as `finetune preprocess`
    does, its summary on stderr — or (None, why not): data not on this machine, a base without a tokenizer
    here (a folder with config.json alone: no torch is imported for it), pairs or prompts, unreadable data."""
    if not methods.of(cfg).answers:
        return None, "preference pairs and prompts are sized at sequence_len"
    missing = [ds.path for ds in cfg.datasets if not Path(ds.path).expanduser().exists()]
    if missing:
        return None, f"no local data at {missing[0]}"
    source = Path(cfg.tokenizer_config or cfg.base_source[0]).expanduser()
    if source.is_dir() and not cfg.base_is_gguf and not any(source.glob("tokenizer*")):
        return None, f"no tokenizer in {source}"
    try:
        with contextlib.redirect_stdout(sys.stderr):  # the data summary; stdout is the plan (--json)
            return data.length_stats(cfg), ""
    except UserError as exc:
        return None, f"the data could not be prepared: {exc.problems[0]}"


def plan_command(cfg: Config, device: str | None, gpus: int, memory_gib: float | None, as_json: bool,
                 use_data: bool = True) -> Plan:  # fmt: skip
    base_ids = [i for i in cfg.hub_ids if i in (cfg.base_model, cfg.base_model_config, cfg.base_source[0])]
    offline = hub.offline_if_unreachable(base_ids)  # only config.json is fetched: one line, not retries
    lengths, why_not = data_lengths(cfg) if use_data else (None, "--no-data")
    plan = make_plan(cfg, device_for(device, gpus, memory_gib), gpus, lengths)
    if why_not:
        plan.notes[plan.notes.index(WORST_NOTE)] = f"{WORST_NOTE} ({why_not})"
    if offline:
        plan.notes.append(offline)
    if as_json:
        print(json.dumps(plan.as_json(), indent=2))
    else:
        print_plan(plan)
    return plan


def refusal(plan: Plan) -> str:
    """The one line `train` stops with: the prediction and the smallest fix."""
    fix = plan.fixes[0] if plan.fixes else "a larger device"
    where = "RAM" if not plan.device.is_gpu else f"{plan.device.name} memory"
    times = f" x {plan.processes} processes" if plan.processes > 1 else ""
    return (
        f"predicted peak {plan.peak_gib:.1f} GiB{times} does not fit {plan.device.memory_gib:.1f} GiB of {where} "
        f"(finetune plan shows the parts); smallest fix: {fix}; --no-fit-check runs anyway"
    )


def print_plan(plan: Plan) -> None:
    console = Console(highlight=False)
    dev = plan.device
    where = f"{dev.name} x {plan.gpus}" if dev.is_gpu else f"CPU ({dev.memory_gib:.1f} GiB RAM)"
    console.print(
        f"[bold]{plan.base_model}[/]: {plan.params['total'] / 1e9:.3g}B parameters, "
        f"{plan.params['trainable'] / 1e6:.3g}M trained; micro_batch_size {plan.micro_batch} on {where}"
    )
    table = Table(title="peak memory per device" if dev.is_gpu else "peak memory (process RSS)")
    table.add_column("part")
    table.add_column("GiB", justify="right")
    for key, value in plan.parts.items():
        if value == 0:
            continue
        table.add_row(LABELS.get(key, key), f"{value:.2f}")
    for key, value in plan.moments.items():
        if key not in plan.parts and "loading_base" not in plan.parts:
            table.add_row(f"[dim]{LABELS[key]} (not at the peak)[/]", f"[dim]{value:.2f}[/]")
    verdict = "[green]fits[/]" if plan.fits else "[bold red]does not fit[/]"
    table.add_row("[bold]peak[/]", f"[bold]{plan.peak_gib:.2f}[/]")
    if plan.worst_case_peak_gib is not None and plan.batch is not None:
        table.add_row(
            "[dim]peak with every row at sequence_len[/]", f"[dim]{plan.worst_case_peak_gib:.2f}[/]"
        )
    console.print(table)
    times = f" x {plan.processes} processes" if plan.processes > 1 else ""
    console.print(
        f"{plan.peak_gib:.1f} GiB{times} of {dev.memory_gib:.1f} GiB: {verdict} (margin {plan.margin_gib:+.1f} "
        f"GiB), sized for {plan.sized_for}"
    )
    sp = plan.speed
    line = (
        f"speed: ~{sp['tokens_per_second']:,.0f} tokens/s ({sp['flops_per_token'] / 1e9:.3g} GFLOP a token at "
        f"{sp['efficiency']:.0%} of {dev.peak_tflops:.4g} TFLOP/s"
        + (
            ", + activation traffic and a cost per layer: a step "
            + " + ".join(f"{v:.2g}" for v in sp["step_seconds"].values())
            + " s"
            if sp.get("step_seconds")
            else ""
        )
        + ")"
    )
    if sp.get("optimizer_steps"):
        line += f"; {sp['optimizer_steps']:,} optimizer steps"
    if sp.get("tokens"):
        line += f", ~{sp['tokens']:,} tokens, ~{sp['wall_hours'] * 60:.1f} min"
    if sp.get("gpu_hours"):
        line += f" ({sp['gpu_hours']:.2f} GPU-hours)"
    if sp.get("counted_from") and sp.get("tokens"):
        line += f"; counted from the {sp['counted_from']}"
    console.print(line)
    for note in plan.notes:
        console.print(f"[yellow]note:[/] {note}")
    for i, fix in enumerate(plan.fixes):
        console.print(("[bold]smallest fix:[/] " if i == 0 else "or: ") + fix)
