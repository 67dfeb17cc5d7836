"""The batch layer: everything that reads the lake back to re-derive profiles.

``clew rebuild`` on DuckDB (:mod:`clew.batch.rebuild`) and on Spark
(:mod:`clew.batch.spark_rebuild`), with their reconciliation against the serving store;
``clew identity split`` (:mod:`clew.batch.split`); and an audience backfill's history
(:mod:`clew.batch.history`). Each runs the same :class:`~clew.identity.unifier.Unifier` as the
profiles stage. See docs/architecture.md, "The batch layer".
"""
