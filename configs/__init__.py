"""ml_collections configs; tiny.py is the embedded default."""
