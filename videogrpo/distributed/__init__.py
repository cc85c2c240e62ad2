"""torchrun: the world of ranks, the batch layout over them, DDP / FSDP2, sharded checkpoints."""
