"""Eval binaries and benchmark loaders."""
