"""One declared stage: what every Ray Data stage of the pipeline is, and the driver written once.

A stage (`Stage`) has a name, an output row schema, the resources its actors ask for, a `setup` that
runs once per actor (load the model) and a `process` that turns a batch of manifest rows into output
rows, one per input row, catching every per-video failure into the row. `extract-inter`, `score` and
the attack job's clean scoring and attacks are stages. `driver.run` is the driver for all of them: keys
already committed are skipped, the rest go to an actor pool (`driver.StageActor`: setup once, process each
batch, commit it as one version of the output table), a worker that dies is isolated to its video (`driver.run_stage`),
progress lines show the time left, and a `StageSummary` gives the one-line summary.

Row schemas are built from column groups (`rows.row_schema`), and rows from their schema
(`Stage.new_row`, `rows.build_row`).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import pandas as pd
import pyarrow as pa

from pipeline.io.table import KeyedTable
from pipeline.log import driver_level

from .driver import pool_strategy
from .options import RunOptions
from .rows import build_row


class Stage(ABC):
    """A stage of the pipeline. Subclasses set `name` and `schema` and implement `process`.

    The object is built on the driver and pickled to each actor, so `__init__` only keeps
    configuration; what is expensive (the model) is built in `setup`.
    """

    name: ClassVar[str]
    schema: ClassVar[pa.Schema]
    # Whether `prepare` is CPU work worth its own Ray Data stage (tasks on every CPU of the cluster, CPU-only
    # nodes included) in front of the model actors, which then only run the model and commit.
    separate_preparation: ClassVar[bool] = False

    def __init__(self, opts: RunOptions) -> None:
        self.opts = opts
        self.log_level = driver_level()  # the actors log at the driver's level (pipeline.log)

    def resources(self, table: KeyedTable) -> tuple[Any, dict[str, Any]]:
        """Ray Data's compute strategy for the actor pool and what each actor reserves (num_cpus,
        num_gpus), from the run options and the cluster (`resources.plan_actors`)."""
        return pool_strategy(self.opts, table, self.name)

    def setup(self) -> None:
        """Once per actor, before its first batch (load the model here). Default: nothing."""

    def prepare(self, batch: pd.DataFrame) -> pd.DataFrame:
        """CPU work on a batch of manifest rows before the model (decode, sample, cut): the batch with the
        columns `process` reads added (`prepare.PREPARED_COLUMNS`). Runs in a Ray Data task when
        `separate_preparation`, else in the actor just before `process`. Default: the batch as it is."""
        return batch

    @abstractmethod
    def process(self, batch: pd.DataFrame) -> list[dict[str, Any]]:
        """Rows of `schema` for the rows of a prepared batch (`prepare`), one per input row, in order. A
        failure of one video is caught into its row (`driver.failure`); only what is no video's fault raises."""

    def new_row(self, r: Any, **values: Any) -> dict[str, Any]:
        """A row of this stage's table for manifest row `r`: its identity, status ok, `created_at` now
        where the table has it, then `values`."""
        base: dict[str, Any] = {"key": r.key, "video_id": str(r.video_id), "uri": str(r.uri),
                                "content_key": str(r.content_key), "status": "ok"}
        if "created_at" in self.schema.names:
            base["created_at"] = time.time()
        return build_row(self.schema, {**base, **values})
