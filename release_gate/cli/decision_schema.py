"""``release-gate decision-schema``: ``decision.json``'s JSON Schema, for pipelines that read the decision."""

from __future__ import annotations

from .common import SchemaCommand

add_parser = SchemaCommand(
    "decision-schema", help="print decision.json's JSON Schema",
    description="Print the JSON Schema of the decision.json a run writes (the outcome, the promoted arm, every "
    "arm's scores, every comparison and criterion, the looks, provenance), e.g. to validate it in a pipeline "
    "step: `release-gate decision-schema > decision.schema.json`.",
    module="document",
).add_parser
