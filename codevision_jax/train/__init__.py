"""SFT: the loss, the jitted sharded step and the loop. What SFT shares with RL lives in runtime/."""
