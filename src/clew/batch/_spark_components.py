"""Connected components of the identifier graph, in Spark DataFrames (nothing is collected to
the driver but one count per round).

Each event's nodes (see ``_spark_rows``) form a star around its smallest node. Every node
starts with the smallest label among itself and its neighbours; each round then takes the
smallest label among its neighbours' (label propagation) and jumps to its label's label
(pointer jumping, which halves long chains). Labels only decrease, and stop changing exactly
when every component carries its smallest node as label, so the loop ends with that.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

MAX_ROUNDS = 64


class ComponentsError(RuntimeError):
    """Label propagation did not settle within :data:`MAX_ROUNDS` rounds."""


def components(events: DataFrame) -> tuple[DataFrame, int]:
    """``node, component`` for every node in the ``nodes`` column (array of strings) of
    ``events``, where ``component`` is the smallest node of its connected component; and the
    number of rounds it took."""
    from pyspark.sql import functions as F

    stars = (
        events.where(F.size("nodes") > 0)
        .select(F.array_distinct("nodes").alias("nodes"))
        .distinct()
        .select(F.explode("nodes").alias("a"), F.array_min("nodes").alias("b"))
        .where(F.col("a") != F.col("b"))
    )
    edges = (
        stars.unionByName(stars.select(F.col("b").alias("a"), F.col("a").alias("b")))
        .distinct()
        .localCheckpoint()
    )
    singles = events.select(F.explode("nodes").alias("node")).distinct()
    labels = (
        singles.join(edges.withColumnRenamed("a", "node"), "node", "left")
        .groupBy("node")
        .agg(F.least(F.min("b"), F.first("node")).alias("label"))
        .localCheckpoint()
    )
    for rounds in range(1, MAX_ROUNDS + 1):
        spread = (
            edges.join(labels.withColumnRenamed("node", "b"), "b")
            .groupBy("a")
            .agg(F.min("label").alias("near"))
            .withColumnRenamed("a", "node")
        )
        nearer = labels.join(spread, "node", "left").select(
            "node",
            F.col("label").alias("before"),
            F.least("label", F.coalesce("near", "label")).alias("label"),
        )
        parent = nearer.select(F.col("node").alias("label"), F.col("label").alias("up"))
        labels = (
            nearer.join(parent, "label", "left")
            .select(
                "node",
                "before",
                F.least("label", F.coalesce("up", "label")).alias("label"),
            )
            .localCheckpoint()
        )
        settled = labels.where(F.col("label") != F.col("before")).limit(1).count() == 0
        labels = labels.drop("before")
        if settled:
            return labels.withColumnRenamed("label", "component"), rounds
    raise ComponentsError(
        f"identifier components did not settle in {MAX_ROUNDS} rounds; "
        "run the rebuild with --engine duckdb"
    )
