"""What every run shares, SFT and RL alike: run setup (mesh, tokenizer, model), the workdir layout
(`layout`), the run scaffold both loops stand on (`scaffold`: state building, checkpointing with
resume checks, metric writers, progress, SIGTERM, the typed `RunResult`), Orbax checkpointing,
resume checks, the optimizer, remat, metric writers, preemption handling, the dry run and the HF
export of a run's checkpoint."""
