"""Code-execution service for model-written image code. Run: python -m executor --port 8700."""
