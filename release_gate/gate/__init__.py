"""The gate: paired statistics, the looks, the decision rule and its words (SPEC §7); no outputs, no report."""
