"""The SparkSession the Spark offline engine runs on: an active one if the process has it, else one
built from ``[features] spark_master`` and ``spark_config``.

Settings mlscale relies on are set on every session, including one the user built:
- ``spark.sql.legacy.parquet.nanosAsLong``: Spark cannot read Parquet nanosecond timestamps (what
  pandas writes by default up to pandas 2); as longs they are read and converted exactly here.
- Arrow for the driver's conversions (entity frames in, training sets out).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

from mlscale.errors import ConfigError

# Always set (runtime SQL settings, so an existing session takes them too).
RUNTIME_CONFIG = {
    "spark.sql.legacy.parquet.nanosAsLong": "true",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
}
# Defaults for a session mlscale builds; spark_config overrides them.
BUILD_DEFAULTS = {
    "spark.app.name": "mlscale",
    "spark.sql.session.timeZone": "UTC",
    "spark.ui.showConsoleProgress": "false",
}


def spark_session(master: str = "local[2]", config: Mapping[str, str] | None = None) -> Any:
    """The active SparkSession, or a new one on ``master`` with ``config``."""
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise ConfigError(
            'offline_engine = "spark" needs PySpark: pip install "mlscale[spark]" (and Java 17 or newer)'
        ) from None
    session = SparkSession.getActiveSession()
    if session is None:
        builder = SparkSession.builder.master(master)
        options = {**BUILD_DEFAULTS, **RUNTIME_CONFIG}
        python = (config or {}).get("spark.pyspark.python")
        if python:
            # The executors' interpreter (one with mlscale and PyArrow installed). PySpark reads it
            # from PYSPARK_PYTHON only when the driver is a Python process rather than spark-submit,
            # and would start "python3" on every executor whatever the setting said.
            os.environ["PYSPARK_PYTHON"] = str(python)
        elif master.startswith("local"):
            # Local executors start Python workers with PYSPARK_PYTHON ("python3" when unset, which
            # may lack mlscale and PyArrow): the driver's own interpreter instead.
            os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        for key, value in {**options, **(config or {})}.items():
            builder = builder.config(key, str(value))
        try:
            session = builder.getOrCreate()
        except Exception as exc:  # py4j and Java errors have no common public base
            raise ConfigError(f"cannot start Spark on {master!r}: {str(exc).splitlines()[0]}") from None
    prepare(session)
    return session


def prepare(session: Any) -> Any:
    """Set the runtime settings the engine relies on (see the module docstring)."""
    for key, value in RUNTIME_CONFIG.items():
        session.conf.set(key, value)
    return session
