"""Drift detection: a reference profile fitted once, then per-column tests over current windows."""

from mlscale.monitoring.drift.detector import ColumnDrift, DatasetDrift, DriftDetector, as_columns
from mlscale.monitoring.drift.profile import ColumnProfile, ReferenceProfile
from mlscale.monitoring.drift.stattests import TESTS, StatTest, default_test

__all__ = [
    "TESTS",
    "ColumnDrift",
    "ColumnProfile",
    "DatasetDrift",
    "DriftDetector",
    "ReferenceProfile",
    "StatTest",
    "as_columns",
    "default_test",
]
