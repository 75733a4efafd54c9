"""Every argument and option of the `finetune` commands, declared once: its flag, its help text and whether
`--help` shows its default. cli.py's commands name them, so cli.py reads as a table of commands; an option
several commands take (the config, --set, --trust-remote-code, the run folder ...) is one declaration here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def opt(help: str, *flags: str, shown: bool = True):
    """An option: its help, its flags when they are not the parameter's name, whether its default shows."""
    return typer.Option(*flags, help=help, show_default=shown)


def arg(help: str):
    return typer.Argument(help=help, show_default=False)


# ---------------------------------------------------------------- shared by several commands

ConfigArg = Annotated[Path, arg("axolotl-style YAML config.")]
Set = Annotated[
    list[str] | None,
    opt("Override a key: --set lora_r=16 --set datasets.0.path=data.jsonl (repeatable).", "--set"),
]
OutputDirArg = Annotated[Path, arg("A finished (or interrupted) run's output_dir.")]
RunDirArg = Annotated[Path, arg("A run's output_dir, or a `finetune merge` folder.")]
Dataset = Annotated[int, opt("Prompt in the format of this `datasets:` entry (0 = the first).", "--dataset")]
TrustRemoteCode = Annotated[
    bool,
    opt(
        "Allow a base whose loading runs its own code (a run saved with trust_remote_code: true).",
        "--trust-remote-code",
    ),
]
Memory = Annotated[
    float | None, opt("Memory of one device in GiB (default: the device's own).", "--memory", shown=False)
]
Dequantize = Annotated[bool, opt("Merge into the NF4-dequantized base the adapter was trained against.")]
ReplaceOut = Annotated[bool, opt("Replace an existing --out folder.")]

# ---------------------------------------------------------------- tiny-model, preprocess, data, plan

TinyOutDirArg = Annotated[Path, arg("Folder to write the model and tokenizer to.")]
Seed = Annotated[int, opt("Seed of the random weights.")]
Inspect = Annotated[int, opt("Print N tokenized examples with masked/trained parts marked.")]
Against = Annotated[
    list[Path] | None,
    opt(
        "A file of rows (in datasets[0]'s format) to check the training rows against: exact rows and "
        "13-gram overlap, the usual contamination test (repeatable).",
        "--against",
        shown=False,
    ),
]
DataJson = Annotated[bool, opt("Every figure as one JSON object.", "--json")]
Device = Annotated[
    str | None,
    opt(
        "h100-80gb, h200, a100-80gb, a100-40gb, l40s, l4, a10g, rtx4090, rtx3090 or cpu "
        "[default: the GPU here, else the CPU]",
        shown=False,
    ),
]
NumGpus = Annotated[
    int, opt("GPUs the run shares (DeepSpeed ZeRO shards across them); on cpu: processes sharing its RAM.")
]
PlanJson = Annotated[bool, opt("The same figures as one JSON object.", "--json")]
PlanData = Annotated[
    bool,
    opt(
        "Size the peak for this data's largest micro-batch (prepares and caches the data as "
        "preprocess does); --no-data: every row at sequence_len, without reading the data."
    ),
]

# ---------------------------------------------------------------- train

Overwrite = Annotated[bool, opt("Replace an existing non-empty output_dir.")]
Resume = Annotated[bool, opt("Continue from the last complete checkpoint in output_dir.")]
Smoke = Annotated[
    bool,
    opt(
        "Dry run: same config and data formatting on a tiny random model, a few rows and steps, in a temp folder."
    ),
]
NumProcesses = Annotated[int, opt("Start N processes (one per GPU) on this node through torchrun.")]
Nnodes = Annotated[int, opt("Number of nodes taking part (run the command on each).")]
NodeRank = Annotated[int, opt("This node's rank, 0 .. nnodes-1.")]
MasterAddr = Annotated[str, opt("Address of node 0, reachable from every node.")]
MasterPort = Annotated[
    int | None, opt("Port on node 0 [default: a free port on one node, 29500 across nodes]", shown=False)
]
FitCheck = Annotated[bool, opt("Stop (exit 2) before loading anything when the run is predicted not to fit.")]

# ---------------------------------------------------------------- merge, export, push

MergeOut = Annotated[Path, opt("Folder for the merged model.", "--out", shown=False)]
Dtype = Annotated[str, opt("bf16, fp16 or fp32.")]
ExportOut = Annotated[Path, opt("Folder for NAME.gguf and the Modelfile.", "--out", shown=False)]
Gguf = Annotated[bool, opt("Write a GGUF file (llama.cpp, Ollama, LM Studio).", "--gguf")]
Quant = Annotated[str, opt("f16, bf16, q8_0 or f32 (others: llama-quantize on the f16 file).")]
Name = Annotated[str | None, opt("File name: NAME.gguf (default: the run folder's name).", shown=False)]
RepoIdArg = Annotated[str, arg("Hub repo: org/name, or name in your namespace.")]
Private = Annotated[bool, opt("Visibility if the repo is created now.", "--private/--public")]
Merged = Annotated[Path | None, opt("Also a `finetune merge` folder, into merged/.", shown=False)]
GgufFolder = Annotated[
    Path | None, opt("Also the .gguf files and Modelfile of this folder, at the top.", shown=False)
]
Revision = Annotated[str | None, opt("Branch to push to (created if needed).", shown=False)]
Checkpoints = Annotated[bool, opt("Also every checkpoint-N folder.", "--checkpoints")]
DryRun = Annotated[bool, opt("List the files; send nothing.", "--dry-run")]

# ---------------------------------------------------------------- generate, eval

QuestionArg = Annotated[str | None, arg("The question (left out with --chat).")]
System = Annotated[
    str | None, opt("System prompt (chat templates, or a custom format with a system slot).", shown=False)
]
GenerateMaxNewTokens = Annotated[int, opt("Longest answer, in tokens.")]
Temperature = Annotated[float, opt("0 = greedy; above 0 samples.")]
Chat = Annotated[bool, opt("Interactive: ask question after question.", "--chat")]
EvalData = Annotated[Path | None, opt("Rows to score: a JSONL, JSON (array) or CSV file.", shown=False)]
Tasks = Annotated[
    str | None,
    opt(
        "Instead of --data: lm-evaluation-harness tasks, comma-separated (any task lm-eval knows, "
        "your own with --include-path, or a task YAML file); needs `pip install 'finetune[eval]'`.",
        shown=False,
    ),
]
IncludePath = Annotated[Path | None, opt("--tasks: a folder of your own lm-eval task YAMLs.", shown=False)]
NumFewshot = Annotated[
    int | None, opt("--tasks: few-shot examples per prompt (default: each task's own).", shown=False)
]
FieldInput = Annotated[
    str | None, opt("Column with the question (default: the training format's).", shown=False)
]
FieldTarget = Annotated[
    str | None, opt("Column with the expected answer (default: the training format's).", shown=False)
]
Metric = Annotated[str, opt("auto, accuracy, f1 (label sets: both + F1 by class), exact or numeric.")]
Limit = Annotated[int | None, opt("Score only the first N rows (of each task with --tasks).", shown=False)]
BatchSize = Annotated[int, opt("Prompts generated (or scored, --tasks) together.")]
EvalMaxNewTokens = Annotated[
    int | None, opt("Longest answer (default: longest target + 16 tokens).", shown=False)
]
Tolerance = Annotated[float, opt("numeric: relative tolerance.")]
BaseOnly = Annotated[bool, opt("Score the base model alone, the same way (the 'before').", "--base-only")]
EvalOut = Annotated[
    Path | None, opt("Folder for eval_results.json and predictions (default: OUTPUT_DIR).", shown=False)
]

# ---------------------------------------------------------------- studio

Root = Annotated[Path, opt("Folder whose runs the Studio shows and starts.")]
Host = Annotated[str, opt("Address to listen on (off loopback a token is required).")]
Port = Annotated[int, opt("Port to listen on.")]
Token = Annotated[
    str | None, opt("Token for requests (default: a new one, printed with the URL).", shown=False)
]
