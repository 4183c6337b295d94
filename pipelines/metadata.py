"""Figures as the Dagster UI shows them: each one its own int or float metadata entry (plotted across
materializations on the asset's page), tables as table metadata with a schema or as markdown, pictures inline."""

import base64
import math
from numbers import Integral, Real

import dagster as dg
import pandas as pd

from lavie_model.report import table as report_table


def numbers(figures: dict, prefix: str = "") -> dict[str, dg.MetadataValue]:
    """{prefix + name: int or float metadata} of every figure measured (None and NaN left out: nothing to plot)."""
    entries = {}
    for name, value in figures.items():
        if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
            continue
        entries[prefix + name] = (dg.MetadataValue.int(int(value)) if isinstance(value, Integral)
                                  else dg.MetadataValue.float(float(value)))
    return entries


def table(rows: list[dict], columns: dict[str, str]) -> dg.TableMetadataValue:
    """Rows as table metadata whose schema has these columns ({name: "string", "float" or "int"}), in this order."""
    def cell(value):
        if isinstance(value, bool) or not isinstance(value, Real):
            return value
        return int(value) if isinstance(value, Integral) else float(value)

    return dg.MetadataValue.table([dg.TableRecord({column: cell(row.get(column)) for column in columns})
                                   for row in rows],
                                  schema=dg.TableSchema([dg.TableColumn(name, kind) for name, kind in columns.items()]))


def markdown_table(frame: pd.DataFrame) -> dg.MetadataValue:
    """A data frame as markdown metadata, its cells formatted as in the run report."""
    return dg.MetadataValue.md(report_table(frame.to_dict("records")))


def picture(data: bytes, kind: str, title: str) -> str:
    """Markdown showing PNG or GIF bytes inline (a data URI), as the Dagster UI renders them."""
    return f"![{title}](data:image/{kind};base64,{base64.b64encode(data).decode()})"
