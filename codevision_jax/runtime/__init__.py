"""What every run shares, SFT and RL alike: run setup (mesh, tokenizer, model), Orbax checkpointing
and resume checks, the optimizer, remat, metric writers, preemption handling, the dry run and the
HF export of a run's checkpoint."""
