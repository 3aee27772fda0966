"""``release-gate config-schema``: the run config's JSON Schema, for editors and CI linters."""

from __future__ import annotations

from .common import SchemaCommand

add_parser = SchemaCommand(
    "config-schema", help="print the run config's JSON Schema",
    description="Print the JSON Schema of `release-gate run` configs (every key, its type, default and "
    "constraints), e.g. for an editor's YAML language server: "
    "`release-gate config-schema > release-gate.schema.json`.",
    module="config",
).add_parser
