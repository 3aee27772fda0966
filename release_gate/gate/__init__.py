"""The gate: paired statistics, the decision rule, and the run's outputs (SPEC §7–§8)."""
