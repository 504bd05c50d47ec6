"""The offline feature store on Apache Spark (``[features] offline_engine = "spark"``): training sets
and materialization with the DuckDB engine's answers, over sources a cluster reads.

PySpark is optional (the ``spark`` extra); nothing here is imported unless the engine is chosen.
"""

from mlscale.features.spark.offline import SparkOfflineStore
from mlscale.features.spark.session import spark_session

__all__ = ["SparkOfflineStore", "spark_session"]
