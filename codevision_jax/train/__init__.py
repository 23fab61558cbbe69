"""SFT training: optimizer, loss, the jitted step, the loop, Orbax checkpoints, metrics."""
