"""The training loop: step settings, rollout, replay, trust region, update, and the trainer that
composes them (one GRPO iteration, ALGORITHMS §9)."""
