"""Output tables: their column groups, schemas built from them, and rows built from a schema.

A column a stage forgets is null; a column that is not in the schema is an error (`build_row`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa

# Column groups shared by the output tables. The order of columns in a table is part of its format
# (existing stores stay readable): groups are concatenated in the order each schema lists them.
IDENTITY_COLUMNS = (("key", pa.string()), ("video_id", pa.string()), ("uri", pa.string()),
                    ("content_key", pa.string()))
STATUS_COLUMNS = (("status", pa.string()), ("error", pa.string()), ("error_code", pa.string()))
VIDEO_COLUMNS = (("num_frames", pa.int64()), ("width", pa.int32()), ("height", pa.int32()), ("fps", pa.float64()),
                 ("stream", pa.int32()), ("read_notes", pa.string()))
TIMING_COLUMNS = (("decode_s", pa.float64()), ("model_s", pa.float64()), ("created_at", pa.float64()),
                  ("worker", pa.string()))


def row_schema(*groups: Sequence[tuple[str, pa.DataType]]) -> pa.Schema:
    """A table schema from column groups, in order. Raises ValueError if a column is listed twice."""
    fields = [f for g in groups for f in g]
    names = [n for n, _ in fields]
    if len(set(names)) != len(names):
        raise ValueError(f"columns listed twice: {sorted({n for n in names if names.count(n) > 1})}")
    return pa.schema(fields)


def build_row(schema: pa.Schema, values: Mapping[str, Any]) -> dict[str, Any]:
    """A row of `schema`: every column, null unless `values` gives it. Raises KeyError naming columns
    that `schema` does not have."""
    unknown = set(values) - set(schema.names)
    if unknown:
        raise KeyError(f"not columns of this table: {sorted(unknown)}")
    return {name: values.get(name) for name in schema.names}
