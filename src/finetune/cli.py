"""The `finetune` command: each sub-command turns its arguments into one function call.

Heavy libraries (torch, transformers, peft) are imported inside the commands that need them, so
`finetune --help` and `finetune validate` stay fast. A user's mistake (`UserError`) prints one line per
problem and exits 2; anything else is a bug and keeps its traceback. The arguments and options are declared
in cli_options.py (one declaration for an option several commands take).

Each command imports the stage it calls when it runs (the stages pull in torch or the pydantic schema): the
one reason for this package to import its own modules inside functions; a library module imports at the top.
"""

from __future__ import annotations

import atexit
import os
import sys
from contextlib import contextmanager
from pathlib import Path

import typer

from finetune import cli_options, launch
from finetune.errors import UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode="rich",
    help="Fine-tune LLMs with LoRA and QLoRA from one axolotl-style YAML file.",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def load_config(config: Path, overrides: list[str] | None):
    from finetune.config import load

    return load(config, overrides or [])


@app.command("validate")
def validate_command(config: cli_options.ConfigArg, set_: cli_options.Set = None) -> None:
    """Check a config without loading any model: every problem is listed, one line each (exit 2)."""
    cfg = load_config(config, set_)
    datasets = ", ".join(d.path for d in cfg.datasets)
    quant = "4-bit" if cfg.quantized_4bit else "8-bit" if cfg.load_in_8bit else "16/32-bit"
    method = f"{cfg.adapter} r={cfg.lora_r}" if cfg.adapter else "full fine-tune"
    print(f"{config}: OK — {cfg.base_model} ({quant}, {method}) on {datasets}")


@app.command("tiny-model")
def tiny_model_command(out_dir: cli_options.TinyOutDirArg, seed: cli_options.Seed = 0) -> None:
    """Write a tiny random Llama model + tokenizer (Hugging Face layout) for tests and dry runs."""
    from finetune.model.tiny import write_tiny_model

    write_tiny_model(out_dir, seed=seed)
    print(f"wrote a tiny Llama model and tokenizer to {out_dir}")


@app.command("preprocess")
def preprocess_command(
    config: cli_options.ConfigArg, set_: cli_options.Set = None, inspect: cli_options.Inspect = 0
) -> None:
    """Format and tokenize the datasets once into dataset_prepared_path; `train` reuses the cache."""
    from finetune import data

    data.preprocess_command(load_config(config, set_), inspect=inspect)


@app.command("data")
def data_command(
    config: cli_options.ConfigArg, set_: cli_options.Set = None, against: cli_options.Against = None,
    json_: cli_options.DataJson = False,
) -> None:  # fmt: skip
    """What the prepared training and eval sets hold, with the tokenizer only (no model): per source rows kept
    and dropped, tokens, lengths, labels; duplicates; overlap with the eval split and --against files.
    Writes data_report.{json,md,png} next to the prepared data."""
    from finetune.data import report_files

    report_files.data_command(load_config(config, set_), [str(p) for p in against or []], json_)


@app.command("plan")
def plan_command(
    config: cli_options.ConfigArg, set_: cli_options.Set = None, device: cli_options.Device = None,
    num_gpus: cli_options.NumGpus = 1, memory: cli_options.Memory = None, json_: cli_options.PlanJson = False,
    data: cli_options.PlanData = True,
) -> None:  # fmt: skip
    """Predict peak memory by part, speed and run length from the config and the base's config.json (no weights
    are read) and, when the data files are here, their lengths; exit 1 when it does not fit, with the smallest
    fixes."""
    from finetune.plan import report

    result = report.plan_command(load_config(config, set_), device, num_gpus, memory, json_, use_data=data)
    if not result.fits:
        raise typer.Exit(1)


@app.command("train")
def train_command(
    config: cli_options.ConfigArg, set_: cli_options.Set = None, overwrite: cli_options.Overwrite = False,
    resume: cli_options.Resume = False, smoke: cli_options.Smoke = False,
    num_processes: cli_options.NumProcesses = 1, nnodes: cli_options.Nnodes = 1,
    node_rank: cli_options.NodeRank = 0, master_addr: cli_options.MasterAddr = "127.0.0.1",
    master_port: cli_options.MasterPort = None, fit_check: cli_options.FitCheck = True,
    memory: cli_options.Memory = None,
) -> None:  # fmt: skip
    """Fine-tune: data -> 4-bit/16-bit base + LoRA -> HF Trainer -> adapter, config.yml and card in output_dir."""
    from finetune import train

    cfg = load_config(config, set_)
    launch.check(num_processes, nnodes, node_rank)
    if launch.wanted(num_processes, nnodes):  # replaces this process with torchrun running this command
        launch.relaunch(sys.argv[1:], num_processes=num_processes, nnodes=nnodes, node_rank=node_rank,
                        master_addr=master_addr, master_port=master_port)  # fmt: skip
    train.run(
        cfg, overwrite=overwrite, resume=resume, smoke=smoke, fit_check=fit_check, memory_gib=memory,
        tune_cpu_heap=True,  # this process exists to train: its allocator may be set for it
    )  # fmt: skip


@app.command("merge")
def merge_command(
    output_dir: cli_options.OutputDirArg, out: cli_options.MergeOut, dtype: cli_options.Dtype = "bf16",
    dequantize: cli_options.Dequantize = False, overwrite: cli_options.ReplaceOut = False,
    trust_remote_code: cli_options.TrustRemoteCode = False,
) -> None:  # fmt: skip
    """Fold the adapter into a 16/32-bit copy of the base and save a standalone model (exit 1, nothing saved,
    when the saved model's logits differ from base + adapter by more than the dtype's rounding allows)."""
    from finetune.outputs import merge

    with failed_check_exits_1(merge.CheckFailed):
        merge.merge_command(output_dir, out, dtype=dtype, dequantize=dequantize, overwrite=overwrite,
                            trust_remote_code=trust_remote_code)  # fmt: skip


@app.command("export")
def export_command(
    output_dir: cli_options.OutputDirArg, out: cli_options.ExportOut, gguf: cli_options.Gguf = False,
    quant: cli_options.Quant = "f16", name: cli_options.Name = None,
    dequantize: cli_options.Dequantize = False, overwrite: cli_options.ReplaceOut = False,
    trust_remote_code: cli_options.TrustRemoteCode = False,
) -> None:  # fmt: skip
    """Merge the adapter and write one GGUF file plus an Ollama Modelfile in the run's prompt format, checked by
    reading it back (exit 1, nothing saved, when its logits stray beyond the quant type's rounding)."""
    from finetune.outputs import export

    if not gguf:
        raise UserError("finetune export: say which format: --gguf (the one there is)")
    with failed_check_exits_1(export.CheckFailed):
        export.export_command(output_dir, out, quant=quant, name=name, overwrite=overwrite,
                              dequantize=dequantize, trust_remote_code=trust_remote_code)  # fmt: skip


@app.command("card")
def card_command(output_dir: cli_options.OutputDirArg) -> None:
    """(Re)write output_dir/README.md, the model card, from what the run saved."""
    from finetune.outputs import card

    print(f"wrote {card.write_card(output_dir)}")


@app.command("push")
def push_command(
    output_dir: cli_options.RunDirArg, repo_id: cli_options.RepoIdArg, private: cli_options.Private = True,
    merged: cli_options.Merged = None, gguf: cli_options.GgufFolder = None,
    revision: cli_options.Revision = None, checkpoints: cli_options.Checkpoints = False,
    dry_run: cli_options.DryRun = False,
) -> None:  # fmt: skip
    """Upload the adapter (or merged model), tokenizer, card, config.yml, loss plot and results to the hub in
    one commit; the token comes from HF_TOKEN or `hf auth login`. A hub or network failure: one line, exit 2."""
    from finetune.outputs import push

    push.push_command(output_dir, repo_id, private=private, merged=merged, gguf=gguf, revision=revision,
                      checkpoints=checkpoints, dry_run=dry_run)  # fmt: skip


@app.command("generate")
def generate_command(
    output_dir: cli_options.RunDirArg, question: cli_options.QuestionArg = None,
    system: cli_options.System = None, max_new_tokens: cli_options.GenerateMaxNewTokens = 256,
    temperature: cli_options.Temperature = 0.0, chat: cli_options.Chat = False,
    dataset: cli_options.Dataset = 0, trust_remote_code: cli_options.TrustRemoteCode = False,
) -> None:  # fmt: skip
    """Answer a question with base + adapter (4-bit if trained so), prompted exactly as in training; streamed."""
    from finetune.inference import generate

    generate.generate_command(output_dir, question, system=system, max_new_tokens=max_new_tokens,
                              temperature=temperature, chat_mode=chat, dataset_index=dataset,
                              trust_remote_code=trust_remote_code)  # fmt: skip


@app.command("eval")
def eval_command(
    output_dir: cli_options.RunDirArg, data: cli_options.EvalData = None, tasks: cli_options.Tasks = None,
    include_path: cli_options.IncludePath = None, num_fewshot: cli_options.NumFewshot = None,
    field_input: cli_options.FieldInput = None, field_target: cli_options.FieldTarget = None,
    metric: cli_options.Metric = "auto", limit: cli_options.Limit = None,
    batch_size: cli_options.BatchSize = 8, max_new_tokens: cli_options.EvalMaxNewTokens = None,
    tolerance: cli_options.Tolerance = 0.01, base_only: cli_options.BaseOnly = False,
    out: cli_options.EvalOut = None, dataset: cli_options.Dataset = 0,
    trust_remote_code: cli_options.TrustRemoteCode = False,
) -> None:  # fmt: skip
    """Score greedy answers on a JSONL file in the training format (--data), or run lm-evaluation-harness tasks on
    the run's model (--tasks); results into eval_results.json and the card (--base-only: the base's, for before → after)."""
    if (data is None) == (tasks is None):
        raise UserError(
            "finetune eval: give --data FILE (your rows) or --tasks NAMES (lm-eval tasks), one of the two"
        )
    if tasks is not None:
        from finetune.inference import harness

        harness.run(output_dir, tasks, include_path=include_path, limit=limit, num_fewshot=num_fewshot,
                    batch_size=batch_size, base_only=base_only, out=out,
                    trust_remote_code=trust_remote_code)  # fmt: skip
        return
    if include_path is not None or num_fewshot is not None:
        raise UserError("--include-path and --num-fewshot go with --tasks (lm-eval), not --data")
    from finetune.inference import evaluate

    evaluate.run(output_dir, data, field_input=field_input, field_target=field_target, metric=metric,
                 limit=limit, batch_size=batch_size, max_new_tokens=max_new_tokens, base_only=base_only,
                 out=out, tolerance=tolerance, dataset_index=dataset,
                 trust_remote_code=trust_remote_code)  # fmt: skip


@app.command("studio")
def studio_command(
    root: cli_options.Root = Path("."), host: cli_options.Host = "127.0.0.1", port: cli_options.Port = 7860,
    token: cli_options.Token = None,
) -> None:  # fmt: skip
    """A local web page: runs and their live progress, a config editor with the plan, new runs, a playground.
    Everything it starts is a `finetune` command in its own process (needs the studio extra)."""
    from finetune import studio

    studio.serve(root, host=host, port=port, token=token)


# ---------------------------------------------------------------- running the table


@contextmanager
def failed_check_exits_1(failure: type[Exception]):
    """merge / export: a failed read-back check is one line on stderr and exit 1 (nothing was saved)."""
    try:
        yield
    except failure as exc:
        print(exc, file=sys.stderr)
        raise typer.Exit(1) from None


def main() -> None:
    if any(arg.startswith(("--local_rank", "--local-rank")) for arg in sys.argv[1:]):
        sys.argv[1:] = launch.without_local_rank(sys.argv[1:])  # the deepspeed launcher's; LOCAL_RANK says it
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
    atexit._run_exitfuncs()


if __name__ == "__main__":
    # `python -m finetune.cli` is also how --num-processes starts each rank under torchrun: the quick exit
    # there too, which also skips C++ static destructors that can abort a rank after a finished run
    # (seen once: "terminate called without an active exception" from a ZeRO-3 rank's teardown)
    console_main()
