"""Training the cascade stages: streaming shard data, per-stage losses, the DeepSpeed trainer, checkpoints."""
