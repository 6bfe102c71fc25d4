"""refine-positions: rollout positions of every training sequence under the base weights."""

from __future__ import annotations

from prefect import flow

from flows.stages import run_stage


@flow(name="refine-positions", log_prints=True)
def positions_flow(params: str = "params.yaml", overrides: list[str] | None = None) -> None:
    """Make sure the base model exists, then select and cache positions (positions.policy=precomputed)."""
    run_stage("base", params, overrides)
    run_stage("positions", params, overrides)
