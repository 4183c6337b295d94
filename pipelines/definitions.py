"""The code location loaded by workspace.yaml. Assets arrive with the curation and training issues."""

import dagster as dg

defs = dg.Definitions(assets=[])
