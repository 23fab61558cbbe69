"""GRPO reinforcement learning with code-tool rollouts: advantages, the policy loss, the CodeVision
reward, the LLM judge, trajectory batches, the RL step and the loop."""
