"""``mlflow`` tracker: one MLflow run per cell, and the leaderboard files as artifacts.

Each cell is a run named by its description, tagged with its cell id; the cell's configuration is
its params, its record's numbers its metrics (at the last step), and its curves metric histories
(one point per logging step). A cell sent again (``--force``) replaces its run. The leaderboard
files go to one run of their own (``tlbench.kind = leaderboard``), replaced by each run of the suite.

Where: the suite's ``tracking_uri`` option, else ``$MLFLOW_TRACKING_URI`` (a shared server), else a
SQLite store in the output folder (``<out>/mlflow/mlflow.db``, artifacts beside it): nothing is
written outside the output folder. View it with
``mlflow ui --backend-store-uri sqlite:///<out>/mlflow/mlflow.db``.
Needs ``pip install 'tlbench[mlflow]'``. An unreachable server is given two retries of 10 s at
most (unless ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` / ``_TIMEOUT`` say otherwise), then the run goes
on without the tracker.
"""

from __future__ import annotations

import datetime
import logging
import os
import time
from pathlib import Path

from tlbench import Tracker, UserError, hookimpl

CELL_TAG = "tlbench.cell_id"
KIND_TAG = "tlbench.kind"
#: MLflow's limits for one log_batch call
MAX_METRICS, MAX_PARAMS = 1000, 100
MAX_PARAM_CHARS = 6000


def _epoch_ms(iso: str) -> int | None:
    """Milliseconds since the epoch of an ISO 8601 time (a record's ``started_at``), None if unreadable."""
    try:
        return int(datetime.datetime.fromisoformat(iso).timestamp() * 1000)
    except (TypeError, ValueError):
        return None


def _chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


class MlflowTracker(Tracker):
    """MLflow: one run per cell (params, metrics, curves as histories), leaderboard files as artifacts."""

    name = "mlflow"
    description = "MLflow runs, one per cell, in <out>/mlflow or a tracking server"
    option_help = {
        "tracking_uri": "tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///<out>/mlflow/mlflow.db)",
        "experiment": "experiment name (default: the suite's name)",
    }

    @classmethod
    def local_paths(cls, out_dir, options) -> list[Path]:
        """The store a local tracking URI names (and, for a database, the ``./mlruns`` folder MLflow puts
        its artifacts in), or ``<out>/mlflow`` by default; nothing for a server."""
        uri = str(options.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI") or "")
        if not uri:
            return [Path(out_dir) / "mlflow"]
        if uri.split(":", 1)[0] in ("databricks", "databricks-uc", "uc"):
            return []
        store = cls.local_path(uri)
        if store is None:
            return []
        database = uri.partition(":")[0].startswith("sqlite")
        return [store, Path.cwd() / "mlruns"] if database else [store]

    def __init__(self, out_dir, suite, **options):
        super().__init__(out_dir, suite, **options)
        try:
            from mlflow.entities import Metric, Param
            from mlflow.tracking import MlflowClient
        except ImportError as exc:
            raise UserError("tracker 'mlflow' needs the mlflow package: pip install 'tlbench[mlflow]'") from exc
        self._Metric, self._Param = Metric, Param
        for logger in ("mlflow.store.db.utils", "alembic"):  # "Creating initial MLflow database tables..."
            logging.getLogger(logger).setLevel(logging.WARNING)
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        uri = self.options.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI")
        artifacts = None
        if not uri:
            store = self.out_dir.resolve() / "mlflow"
            store.mkdir(parents=True, exist_ok=True)
            uri, artifacts = f"sqlite:///{store / 'mlflow.db'}", (store / "artifacts").as_uri()
        self.tracking_uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        name = str(self.options.get("experiment") or suite.get("name") or "tlbench")
        found = self.client.get_experiment_by_name(name)
        self.experiment_id = (
            found.experiment_id if found else self.client.create_experiment(name, artifact_location=artifacts)
        )

    def log_cell(self, cell, record) -> None:
        self._delete_runs(f"tags.`{CELL_TAG}` = '{cell.id}'")
        start = _epoch_ms(record.started_at) or int(time.time() * 1000)  # the cell's own start and length
        run = self.client.create_run(
            self.experiment_id,
            run_name=cell.describe(),
            start_time=start,
            tags={
                CELL_TAG: cell.id,
                KIND_TAG: "cell",
                "tlbench.status": record.status,
                "tlbench.device": record.device or "",
                "tlbench.version": record.tlbench_version or "",
            },
        )
        run_id = run.info.run_id
        params = [self._Param(k, v[:MAX_PARAM_CHARS]) for k, v in self.cell_params(cell).items()]
        last = int(record.steps or 0)
        metrics = [self._Metric(k, v, start, last) for k, v in self.record_metrics(record).items()]
        metrics += [self._Metric(f"train/{m}", v, start, step) for m, step, v in self.curve_points(record)]
        for chunk in _chunks(params, MAX_PARAMS):
            self.client.log_batch(run_id, params=chunk)
        for chunk in _chunks(metrics, MAX_METRICS):
            self.client.log_batch(run_id, metrics=chunk)
        if record.error:
            self.client.set_tag(run_id, "tlbench.error", record.error.splitlines()[0][:5000])
        end = start + int(1000 * record.wall_s) if record.wall_s is not None else None
        self.client.set_terminated(run_id, status="FINISHED" if record.status == "ok" else "FAILED", end_time=end)

    def log_reports(self, files: list[Path]) -> None:
        if not files:
            return
        self._delete_runs(f"tags.`{KIND_TAG}` = 'leaderboard'")
        run = self.client.create_run(
            self.experiment_id,
            run_name=f"{self.suite.get('name', 'suite')} leaderboard",
            tags={KIND_TAG: "leaderboard"},
        )
        for path in files:
            self.client.log_artifact(run.info.run_id, str(path))
        self.client.set_terminated(run.info.run_id)

    def _delete_runs(self, filter_string: str) -> None:
        for old in self.client.search_runs([self.experiment_id], filter_string=filter_string):
            self.client.delete_run(old.info.run_id)


@hookimpl
def register_trackers(register):
    register(MlflowTracker)
