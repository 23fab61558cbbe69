"""Data: conversation records (SFT/RL), their readers and writers, and synthetic task generators."""
