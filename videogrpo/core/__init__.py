"""Pure tensor math of videogrpo: no model, file or process knowledge (docs/ALGORITHMS.md).

Modules (import them directly; this package imports nothing so importing it stays cheap):

- ``schedule``: σ grids with the timestep shift, model timesteps, grid validation (§1).
- ``sde``: the step rules ode / dance / flow / sage / cps in one registry, one ``step`` that
  samples or replays a transition and returns its float32 log-probability, Σ and ∂μ/∂v (§2–4).
- ``equalizer``: SAGE's per-step Gradient Norm Equalizer factors S_k (§4).
- ``advantage``: group-relative advantages, composite rewards, NaN-safe statistics (§5).
- ``loss``: the clipped policy loss with per-step weights and its diagnostics (§6).
- ``kl``: Gaussian and step-wise KL terms, the dual trust region, λ_t schedules (§7).
- ``selection``: where the rollout uses the SDE and which steps are trained (§6, §10).
- ``curriculum``: Self-Paced GRPO reward weights (§8).
"""
