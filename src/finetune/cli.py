"""The `finetune` command: each sub-command turns its arguments into one function call.

Heavy libraries (torch, transformers, peft) are imported inside the commands that need them, so
`finetune --help` and `finetune validate` stay fast. A user's mistake (`UserError`) prints one line per
problem and exits 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from finetune.errors import UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode="rich",
    help="Fine-tune LLMs with LoRA and QLoRA from one axolotl-style YAML file.",
    context_settings={"help_option_names": ["-h", "--help"]},
)

ConfigArg = Annotated[Path, typer.Argument(help="axolotl-style YAML config.", show_default=False)]
RunDirArg = Annotated[
    Path, typer.Argument(help="A run's output_dir, or a `finetune merge` folder.", show_default=False)
]
DatasetOpt = Annotated[
    int, typer.Option("--dataset", help="Prompt in the format of this `datasets:` entry (0 = the first).")
]
SetOpt = Annotated[
    Optional[list[str]],  # noqa: UP045 - typer needs Optional here
    typer.Option(
        "--set", help="Override a key: --set lora_r=16 --set datasets.0.path=data.jsonl (repeatable)."
    ),
]
OutputDirArg = Annotated[
    Path, typer.Argument(help="A finished (or interrupted) run's output_dir.", show_default=False)
]


def _load(config: Path, overrides: list[str] | None):
    from finetune import config as config_module

    return config_module.load(config, overrides or [])


TrustRemoteCodeOpt = Annotated[
    bool,
    typer.Option(
        "--trust-remote-code",
        help="Allow a base whose loading runs its own code (a run saved with trust_remote_code: true).",
    ),
]


@app.command()
def validate(config: ConfigArg, set_: SetOpt = None) -> None:
    """Check a config without loading any model: every problem is listed, one line each (exit 2)."""
    cfg = _load(config, set_)
    datasets = ", ".join(d.path for d in cfg.datasets)
    quant = "4-bit" if cfg.quantized_4bit else "8-bit" if cfg.load_in_8bit else "16/32-bit"
    method = f"{cfg.adapter} r={cfg.lora_r}" if cfg.adapter else "full fine-tune"
    print(f"{config}: OK — {cfg.base_model} ({quant}, {method}) on {datasets}")


@app.command("tiny-model")
def tiny_model(
    out_dir: Annotated[
        Path, typer.Argument(help="Folder to write the model and tokenizer to.", show_default=False)
    ],
    seed: Annotated[int, typer.Option(help="Seed of the random weights.")] = 0,
) -> None:
    """Write a tiny random Llama model + tokenizer (Hugging Face layout) for tests and dry runs."""
    from finetune.model.tiny import write_tiny_model

    write_tiny_model(out_dir, seed=seed)
    print(f"wrote a tiny Llama model and tokenizer to {out_dir}")


@app.command()
def preprocess(
    config: ConfigArg,
    set_: SetOpt = None,
    inspect: Annotated[
        int, typer.Option(help="Print N tokenized examples with masked/trained parts marked.")
    ] = 0,
) -> None:
    """Format and tokenize the datasets once into dataset_prepared_path; `train` reuses the cache."""
    from finetune import data

    cfg = _load(config, set_)
    data.preprocess_command(cfg, inspect=inspect)


@app.command("data")
def data_(
    config: ConfigArg,
    set_: SetOpt = None,
    against: Annotated[
        Optional[list[Path]],  # noqa: UP045 - typer needs Optional here
        typer.Option(
            "--against",
            help="A file of rows (in datasets[0]'s format) to check the training rows against: exact rows and "
            "13-gram overlap, the usual contamination test (repeatable).",
            show_default=False,
        ),
    ] = None,
    json_: Annotated[bool, typer.Option("--json", help="Every figure as one JSON object.")] = False,
) -> None:
    """What the prepared training and eval sets hold, with the tokenizer only (no model): per source rows kept
    and dropped, tokens, lengths, labels; duplicates; overlap with the eval split and --against files.
    Writes data_report.{json,md,png} next to the prepared data."""
    from finetune.data import report_files

    report_files.data_command(_load(config, set_), [str(p) for p in against or []], json_)


MemoryOpt = Annotated[
    Optional[float],  # noqa: UP045 - typer needs Optional here
    typer.Option(
        "--memory", help="Memory of one device in GiB (default: the device's own).", show_default=False
    ),
]


@app.command()
def plan(
    config: ConfigArg,
    set_: SetOpt = None,
    device: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            help="h100-80gb, h200, a100-80gb, a100-40gb, l40s, l4, a10g, rtx4090, rtx3090 or cpu "
            "[default: the GPU here, else the CPU]",
            show_default=False,
        ),
    ] = None,
    num_gpus: Annotated[
        int,
        typer.Option(
            help="GPUs the run shares (DeepSpeed ZeRO shards across them); on cpu: processes sharing its RAM."
        ),
    ] = 1,
    memory: MemoryOpt = None,
    json_: Annotated[bool, typer.Option("--json", help="The same figures as one JSON object.")] = False,
    data: Annotated[
        bool,
        typer.Option(
            help="Size the peak for this data's largest micro-batch (prepares and caches the data as "
            "preprocess does); --no-data: every row at sequence_len, without reading the data."
        ),
    ] = True,
) -> None:
    """Predict peak memory by part, speed and run length from the config and the base's config.json (no weights
    are read) and, when the data files are here, their lengths; exit 1 when it does not fit, with the smallest
    fixes."""
    from finetune.plan import report

    result = report.plan_command(_load(config, set_), device, num_gpus, memory, json_, use_data=data)
    if not result.fits:
        raise typer.Exit(1)


@app.command()
def train(
    config: ConfigArg,
    set_: SetOpt = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing non-empty output_dir.")] = False,
    resume: Annotated[
        bool, typer.Option(help="Continue from the last complete checkpoint in output_dir.")
    ] = False,
    smoke: Annotated[
        bool,
        typer.Option(
            help="Dry run: same config and data formatting on a tiny random model, a few rows and steps, in a temp folder."
        ),
    ] = False,
    num_processes: Annotated[
        int, typer.Option(help="Start N processes (one per GPU) on this node through torchrun.")
    ] = 1,
    nnodes: Annotated[int, typer.Option(help="Number of nodes taking part (run the command on each).")] = 1,
    node_rank: Annotated[int, typer.Option(help="This node's rank, 0 .. nnodes-1.")] = 0,
    master_addr: Annotated[
        str, typer.Option(help="Address of node 0, reachable from every node.")
    ] = "127.0.0.1",
    master_port: Annotated[
        Optional[int],  # noqa: UP045 - typer needs Optional here
        typer.Option(
            help="Port on node 0 [default: a free port on one node, 29500 across nodes]", show_default=False
        ),
    ] = None,
    fit_check: Annotated[
        bool, typer.Option(help="Stop (exit 2) before loading anything when the run is predicted not to fit.")
    ] = True,
    memory: MemoryOpt = None,
) -> None:
    """Fine-tune: data -> 4-bit/16-bit base + LoRA -> HF Trainer -> adapter, config.yml and card in output_dir."""
    from finetune import train as train_module
    from finetune import launch

    cfg = _load(config, set_)
    launch.check(num_processes, nnodes, node_rank)
    if launch.wanted(num_processes, nnodes):  # replaces this process with torchrun running this command
        launch.relaunch(
            sys.argv[1:],
            num_processes=num_processes,
            nnodes=nnodes,
            node_rank=node_rank,
            master_addr=master_addr,
            master_port=master_port,
        )
    train_module.run(
        cfg, overwrite=overwrite, resume=resume, smoke=smoke, fit_check=fit_check, memory_gib=memory,
        tune_cpu_heap=True,  # this process exists to train: its allocator may be set for it
    )  # fmt: skip


@app.command()
def merge(
    output_dir: OutputDirArg,
    out: Annotated[Path, typer.Option("--out", help="Folder for the merged model.", show_default=False)],
    dtype: Annotated[str, typer.Option(help="bf16, fp16 or fp32.")] = "bf16",
    dequantize: Annotated[
        bool, typer.Option(help="Merge into the NF4-dequantized base the adapter was trained against.")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --out folder.")] = False,
    trust_remote_code: TrustRemoteCodeOpt = False,
) -> None:
    """Fold the adapter into a 16/32-bit copy of the base and save a standalone model (exit 1, nothing saved,
    when the saved model's logits differ from base + adapter by more than the dtype's rounding allows)."""
    from finetune.outputs import merge as merge_module

    try:
        merge_module.merge_command(
            output_dir, out, dtype=dtype, dequantize=dequantize, overwrite=overwrite,
            trust_remote_code=trust_remote_code,
        )  # fmt: skip
    except merge_module.CheckFailed as exc:
        print(exc, file=sys.stderr)
        raise typer.Exit(1) from None


@app.command()
def export(
    output_dir: OutputDirArg,
    out: Annotated[
        Path, typer.Option("--out", help="Folder for NAME.gguf and the Modelfile.", show_default=False)
    ],
    gguf: Annotated[
        bool, typer.Option("--gguf", help="Write a GGUF file (llama.cpp, Ollama, LM Studio).")
    ] = False,
    quant: Annotated[
        str, typer.Option(help="f16, bf16, q8_0 or f32 (others: llama-quantize on the f16 file).")
    ] = "f16",
    name: Annotated[
        Optional[str],  # noqa: UP045 - typer needs Optional here
        typer.Option(help="File name: NAME.gguf (default: the run folder's name).", show_default=False),
    ] = None,
    dequantize: Annotated[
        bool, typer.Option(help="Merge into the NF4-dequantized base the adapter was trained against.")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --out folder.")] = False,
    trust_remote_code: TrustRemoteCodeOpt = False,
) -> None:
    """Merge the adapter and write one GGUF file plus an Ollama Modelfile in the run's prompt format, checked by
    reading it back (exit 1, nothing saved, when its logits stray beyond the quant type's rounding)."""
    from finetune.outputs import export as export_module

    if not gguf:
        raise UserError("finetune export: say which format: --gguf (the one there is)")
    try:
        export_module.export_command(
            output_dir, out, quant=quant, name=name, overwrite=overwrite, dequantize=dequantize,
            trust_remote_code=trust_remote_code,
        )  # fmt: skip
    except export_module.CheckFailed as exc:
        print(exc, file=sys.stderr)
        raise typer.Exit(1) from None


@app.command()
def card(output_dir: OutputDirArg) -> None:
    """(Re)write output_dir/README.md, the model card, from what the run saved."""
    from finetune.outputs import card as card_module

    path = card_module.write_card(output_dir)
    print(f"wrote {path}")


@app.command()
def push(
    output_dir: RunDirArg,
    repo_id: Annotated[
        str, typer.Argument(help="Hub repo: org/name, or name in your namespace.", show_default=False)
    ],
    private: Annotated[
        bool, typer.Option("--private/--public", help="Visibility if the repo is created now.")
    ] = True,
    merged: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="Also a `finetune merge` folder, into merged/.", show_default=False),
    ] = None,
    gguf: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            help="Also the .gguf files and Modelfile of this folder, at the top.", show_default=False
        ),
    ] = None,
    revision: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="Branch to push to (created if needed).", show_default=False),
    ] = None,
    checkpoints: Annotated[
        bool, typer.Option("--checkpoints", help="Also every checkpoint-N folder.")
    ] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List the files; send nothing.")] = False,
) -> None:
    """Upload the adapter (or merged model), tokenizer, card, config.yml, loss plot and results to the hub in
    one commit; the token comes from HF_TOKEN or `hf auth login`. A hub or network failure: one line, exit 2."""
    from finetune.outputs import push as push_module

    push_module.push_command(
        output_dir, repo_id, private=private, merged=merged, gguf=gguf, revision=revision,
        checkpoints=checkpoints, dry_run=dry_run,
    )  # fmt: skip


@app.command("generate")
def generate_(
    output_dir: RunDirArg,
    question: Annotated[
        Optional[str],  # noqa: UP045 - typer needs Optional here
        typer.Argument(help="The question (left out with --chat).", show_default=False),
    ] = None,
    system: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            help="System prompt (chat templates, or a custom format with a system slot).", show_default=False
        ),
    ] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Longest answer, in tokens.")] = 256,
    temperature: Annotated[float, typer.Option(help="0 = greedy; above 0 samples.")] = 0.0,
    chat: Annotated[bool, typer.Option("--chat", help="Interactive: ask question after question.")] = False,
    dataset: DatasetOpt = 0,
    trust_remote_code: TrustRemoteCodeOpt = False,
) -> None:
    """Answer a question with base + adapter (4-bit if trained so), prompted exactly as in training; streamed."""
    from finetune.inference import generate as generate_module

    generate_module.generate_command(
        output_dir,
        question,
        system=system,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        chat_mode=chat,
        dataset_index=dataset,
        trust_remote_code=trust_remote_code,
    )


@app.command("eval")
def eval_(
    output_dir: RunDirArg,
    data: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="Rows to score: a JSONL, JSON (array) or CSV file.", show_default=False),
    ] = None,
    tasks: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            help="Instead of --data: lm-evaluation-harness tasks, comma-separated (any task lm-eval knows, "
            "your own with --include-path, or a task YAML file); needs `pip install 'finetune[eval]'`.",
            show_default=False,
        ),
    ] = None,
    include_path: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="--tasks: a folder of your own lm-eval task YAMLs.", show_default=False),
    ] = None,
    num_fewshot: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(
            help="--tasks: few-shot examples per prompt (default: each task's own).", show_default=False
        ),
    ] = None,
    field_input: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="Column with the question (default: the training format's).", show_default=False),
    ] = None,
    field_target: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            help="Column with the expected answer (default: the training format's).", show_default=False
        ),
    ] = None,
    metric: Annotated[
        str, typer.Option(help="auto, accuracy, f1 (label sets: both + F1 by class), exact or numeric.")
    ] = "auto",
    limit: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(help="Score only the first N rows (of each task with --tasks).", show_default=False),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Prompts generated (or scored, --tasks) together.")] = 8,
    max_new_tokens: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(help="Longest answer (default: longest target + 16 tokens).", show_default=False),
    ] = None,
    tolerance: Annotated[float, typer.Option(help="numeric: relative tolerance.")] = 0.01,
    base_only: Annotated[
        bool, typer.Option("--base-only", help="Score the base model alone, the same way (the 'before').")
    ] = False,
    out: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            help="Folder for eval_results.json and predictions (default: OUTPUT_DIR).", show_default=False
        ),
    ] = None,
    dataset: DatasetOpt = 0,
    trust_remote_code: TrustRemoteCodeOpt = False,
) -> None:
    """Score greedy answers on a JSONL file in the training format (--data), or run lm-evaluation-harness tasks on
    the run's model (--tasks); results into eval_results.json and the card (--base-only: the base's, for before → after)."""
    if (data is None) == (tasks is None):
        raise UserError(
            "finetune eval: give --data FILE (your rows) or --tasks NAMES (lm-eval tasks), one of the two"
        )
    if tasks is not None:
        from finetune.inference import harness

        harness.run(
            output_dir, tasks, include_path=include_path, limit=limit, num_fewshot=num_fewshot,
            batch_size=batch_size, base_only=base_only, out=out, trust_remote_code=trust_remote_code,
        )  # fmt: skip
        return
    if include_path is not None or num_fewshot is not None:
        raise UserError("--include-path and --num-fewshot go with --tasks (lm-eval), not --data")
    from finetune.inference import evaluate

    evaluate.run(
        output_dir, data, field_input=field_input, field_target=field_target, metric=metric, limit=limit,
        batch_size=batch_size, max_new_tokens=max_new_tokens, base_only=base_only, out=out, tolerance=tolerance,
        dataset_index=dataset, trust_remote_code=trust_remote_code,
    )  # fmt: skip


@app.command()
def studio(
    root: Annotated[Path, typer.Option(help="Folder whose runs the Studio shows and starts.")] = Path("."),
    host: Annotated[
        str, typer.Option(help="Address to listen on (off loopback a token is required).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 7860,
    token: Annotated[
        Optional[str],  # noqa: UP045 - typer needs Optional here
        typer.Option(
            help="Token for requests (default: a new one, printed with the URL).", show_default=False
        ),
    ] = None,
) -> None:
    """A local web page: runs and their live progress, a config editor with the plan, new runs, a playground.
    Everything it starts is a `finetune` command in its own process (needs the studio extra)."""
    from finetune import studio as studio_module

    studio_module.serve(root, host=host, port=port, token=token)


def main() -> None:
    if any(arg.startswith(("--local_rank", "--local-rank")) for arg in sys.argv[1:]):
        # the deepspeed launcher's; LOCAL_RANK says the same. Imported only then: finetune.train imports the
        # config schema (pydantic models built at import), which `--help` and most commands never need
        from finetune.launch import without_local_rank

        sys.argv[1:] = without_local_rank(sys.argv[1:])
    try:
        app()
    except UserError as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:  # Ctrl-C outside training (loading, tokenizing): nothing half-written to report
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)


def console_main() -> None:
    """The `finetune` console script: `main`, then a quick exit.

    After torch and transformers are imported, the interpreter's own shutdown (tearing down every module)
    takes ~1.4 s, longer than a short run trains (BENCHMARKS.md). The exit handlers still run (logging, W&B,
    torch.distributed), output is flushed, then the process ends. Only the console script does this: `main`
    stays safe to call inside another process (tests, notebooks).
    """
    import os

    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if exc.code is not None and not isinstance(exc.code, int):
            print(exc.code, file=sys.stderr)
    run_exit_handlers()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_exit_handlers() -> None:
    """Run the interpreter's exit handlers now (logging, W&B, torch.distributed), before os._exit skips them.

    CPython has no public API for this: `atexit._run_exitfuncs` (checked on 3.11-3.13);
    tests/test_library_guards.py fails loudly if it goes.
    """
    import atexit

    atexit._run_exitfuncs()


if __name__ == "__main__":
    # `python -m finetune.cli` is also how --num-processes starts each rank under torchrun: the quick exit
    # there too, which also skips C++ static destructors that can abort a rank after a finished run
    # (seen once: "terminate called without an active exception" from a ZeRO-3 rank's teardown)
    console_main()
