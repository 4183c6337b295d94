"""The Dagster code location: thin assets that call into `lavie_model` and record metadata."""
