"""Structured output: a job's [output] JSON Schema in, typed Parquet columns out.

* :mod:`batcher.output.schema`: loading the schema (a file, a pydantic model, an inline table) and
  the checks made at start (:func:`load_output`, :func:`check_column_names`);
* :mod:`batcher.output.strict`: the schema as the API takes it (the official SDK's strict transform);
* :mod:`batcher.output.columns`: the column types a schema implies (pure); :mod:`batcher.output.arrow`
  maps them to Arrow, :mod:`batcher.output.values` converts an answer's values to them;
* :mod:`batcher.output.spec`: :class:`OutputSpec`, the loaded [output], which checks answers.

Light to import: jsonschema, pyarrow and users' model modules are imported only when used.
"""

from __future__ import annotations

from batcher.errors import MAX_TOKENS, REFUSAL, SCHEMA_MISMATCH
from batcher.output.schema import check_column_names, load_output
from batcher.output.spec import Checked, OutputSpec

__all__ = [
    "MAX_TOKENS",
    "REFUSAL",
    "SCHEMA_MISMATCH",
    "Checked",
    "OutputSpec",
    "check_column_names",
    "load_output",
]
