"""finetune.outputs.run_files."""
