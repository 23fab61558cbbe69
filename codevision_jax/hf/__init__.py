"""HF checkpoints: `load.load_hf` reads one onto the mesh, `save.save_hf` writes one that
transformers loads; the key mapping and streaming safetensors I/O beside them. Training-run
checkpoints (Orbax) are `runtime.checkpointing`."""
