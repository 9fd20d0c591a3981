"""Job files: one YAML file under ``conf/jobs/`` is one nightly prediction job.

This module is imported when Airflow parses the dags folder, so it stays light: pydantic and
YAML only, never Ray, torch or MLflow.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, PrivateAttr, StringConstraints, field_validator, model_validator

from jobs import day_folders, labels
from jobs.settings import CONF_SHOWN, PROJECT_CONF, PROJECT_ROOT, conf_dir
from jobs.yamlconf import ConfigError, Frozen, load_model
from models.output_columns import FIXED_COLUMNS

JOB_NAME = r"^[a-z][a-z0-9_]*$"
# the schedule of a job that runs when its input table's Airflow Asset is updated
ON_INPUT = "on_input"
# Tables are paths inside the lake: lower-case segments only, so a job file can never point
# outside the lake root (no "..", no absolute paths, no schemes).
TablePath = Annotated[str, StringConstraints(pattern=r"^[a-z0-9_]+(/[a-z0-9_]+)*$")]
Column = Annotated[str, StringConstraints(min_length=1)]
# what Spark's Parquet support refuses in a column's name (ParquetSchemaConverter.checkFieldName)
SPARK_REFUSES = frozenset(" ,;{}()\n\t=")
# a class's name (model.classes), as an MLflow metric's name takes it (score.share.<class>)
CLASS_NAME = re.compile(r"[\w.\- :]+")


def each_once(values: list[str] | None) -> list[str] | None:
    """``values`` as given, or an error naming each one listed twice."""
    twice = sorted({v for v in values or () if values.count(v) > 1})
    if twice:
        raise ValueError(f"{', '.join(map(repr, twice))} listed more than once")
    return values


def spark_refused(name: str) -> str:
    """The characters of ``name`` that Spark refuses in a Parquet column's name, quoted; empty
    for a name it takes."""
    return ", ".join(sorted({repr(c) for c in name if c in SPARK_REFUSES}))


def zone_info(name: str) -> ZoneInfo:
    """The IANA time zone ``name`` (``Europe/Paris``), or an error that names the likeliest zones
    meant. A place, not an offset (``+02:00``): a nightly run keeps to its team's clock through
    daylight saving only where the zone knows when the clocks change."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        pass
    import difflib
    from zoneinfo import available_timezones

    zones = available_timezones()
    by_case = {z.lower(): z for z in zones}
    close = [by_case[name.lower()]] if name.lower() in by_case else difflib.get_close_matches(name, zones, n=2)
    meant = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
    raise ValueError(
        f"{name!r} is not an IANA time zone{meant}: name the place whose clock the schedule keeps, such as "
        "Europe/Paris, America/New_York or UTC"
    )


# an address a mail server would take: one @, a dot in the domain, no spaces or separators
EMAIL = re.compile(r"[^@\s,;<>]+@[^@\s,;<>]+\.[^@\s,;<>.]+")


class InputSpec(Frozen):
    table: TablePath = Field(description="table under the lake root, a folder a day (input.partition)")
    partition: str = Field(
        day_folders.DEFAULT,
        description="the day's folder under input.table, as a strftime pattern of %Y, %m, %d (or %j): "
        "dt=%Y%m%d, year=%Y/month=%m/day=%d",
    )
    key: Column = Field(description="the entity id, copied to the predictions")
    columns: list[Column] | None = Field(None, description="feature columns; default: the model signature")
    ready_marker: str | None = Field(
        None,
        description="a file the partition's producer writes last, e.g. _SUCCESS: no run reads a partition "
        "without it (a partition lakecast committed needs none). It starts with '_' or '.', which marks a file "
        "that is not data: lakecast reads every other file of the partition as Parquet",
    )

    @field_validator("columns")
    @classmethod
    def _each_once(cls, v: list[str] | None) -> list[str] | None:
        return each_once(v)

    @field_validator("partition")
    @classmethod
    def _a_folder_a_day(cls, v: str) -> str:
        return day_folders.check(v)

    @field_validator("ready_marker")
    @classmethod
    def _not_data(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if "/" in v or v in (".", ".."):
            raise ValueError(f"{v!r} is not a file name: the marker lies in the partition's folder, beside its files")
        if not v.startswith(("_", ".")):
            raise ValueError(
                f"{v!r} would be read as a Parquet file: lakecast skips only names that start with '_' or '.' "
                "(Spark and Hadoop write _SUCCESS)"
            )
        return v


Task = Literal["classification", "multiclass", "regression", "embedding"]
# the tasks whose versions the A/B comparison measures (ab:): an embedding has no label to score against
ABTask = Literal["classification", "multiclass", "regression"]


class ModelSpec(Frozen):
    name: str = Field(min_length=1, description="registered model in the MLflow registry")
    alias: str | None = Field("champion", description="alias to score with, resolved to a version per run")
    version: int | None = Field(None, ge=1, description="a fixed version instead of an alias")
    task: Task = Field(
        "classification",
        description="classification: the score is a probability, with a prediction column (score >= threshold); "
        "multiclass: the prediction is the most probable of model.classes, the score its probability; "
        "regression: the score is the predicted value, and no prediction column is written; "
        "embedding: the score is a vector of model.dimensions numbers a row, and no prediction column is written",
    )
    dimensions: int | None = Field(
        None,
        ge=1,
        description="embedding: the length of the vector the model returns for each row (a network's output "
        "width): every row's is checked against it, and the predictions' column holds that many float32 values",
    )
    classes: list[str] | None = Field(
        None,
        description="multiclass: the classes' names, in the order of the model's output columns (of its "
        "predict_proba, its softmax): the prediction column holds them",
    )

    @field_validator("classes", mode="before")
    @classmethod
    def _names(cls, v: object) -> object:
        """YAML reads ``[0, 1, 2]`` as numbers: a class is named by its text, as the predictions hold it."""
        if isinstance(v, list):
            return [str(c) if isinstance(c, int | float) and not isinstance(c, bool) else c for c in v]
        return v

    @model_validator(mode="after")
    def _dimensions_of_the_task(self) -> ModelSpec:
        if self.task == "embedding" and self.dimensions is None:
            raise ValueError(
                "dimensions: an embedding model (task: embedding) needs the length of the vector it returns for each "
                "row, which every row's is checked against: dimensions: 64"
            )
        if self.task != "embedding" and self.dimensions is not None:
            raise ValueError(
                f"dimensions: only an embedding model returns a vector a row (task is {self.task!r}); "
                "set task: embedding, or drop the key"
            )
        return self

    @model_validator(mode="after")
    def _classes_of_the_task(self) -> ModelSpec:
        if self.task != "multiclass":
            if self.classes is not None:
                raise ValueError(
                    f"classes: only a multiclass model has classes to name (task is {self.task!r}); "
                    "set task: multiclass, or drop the key"
                )
            return self
        if not self.classes or len(self.classes) < 2:
            raise ValueError(
                "classes: a multiclass model (task: multiclass) needs its classes' names, at least two, in the order "
                "of the model's output columns: classes: [basic, plus, premium]"
            )
        odd = [c for c in self.classes if not CLASS_NAME.fullmatch(c)]
        if odd:
            raise ValueError(
                f"classes: {odd[0]!r} is not a class name lakecast can keep: the share of the rows predicted in "
                "each class is an MLflow metric named after it (score.share.<class>), so a name holds letters, "
                "digits, and _ . - : or spaces"
            )
        try:
            each_once(self.classes)
        except ValueError as e:
            raise ValueError(f"classes: {e}") from None
        return self

    @model_validator(mode="after")
    def _one_selector(self) -> ModelSpec:
        # alias defaults to champion: only an alias the file writes clashes with a version
        if self.version is not None and self.alias is not None and "alias" in self.model_fields_set:
            raise ValueError(
                f"alias {self.alias!r} and version {self.version} both choose the model's version: set one of them"
            )
        return self


class OutputSpec(Frozen):
    table: TablePath
    score_column: Column = "score"
    threshold: float | None = Field(None, ge=0, le=1, description="default: the model's own threshold")
    class_scores: bool = Field(
        False,
        description="multiclass: also each class's probability, a column per class named "
        "<score_column>_<class>, beside the predicted class's",
    )
    passthrough: list[Column] = Field(
        [],
        description="input columns copied into the predictions beside the key, as they are (a region, a "
        "snapshot's date): read whether the model takes them or not, never validated",
    )
    rows_per_file: int = Field(
        1_000_000,
        ge=1_000,
        description="CPU actors write files of this many input rows to twice as many; with GPU actors, a lower "
        "bound per file (no tiny Parquet files). Also the size of a piece of work: a large input file is scored in "
        "runs of its row groups, small ones in turn. A file of wide predictions (an embedding's vectors) ends sooner, "
        "at 256 MiB of them",
    )

    @field_validator("passthrough")
    @classmethod
    def _each_once(cls, v: list[str]) -> list[str]:
        return each_once(v)

    @field_validator("score_column")
    @classmethod
    def _readable_downstream(cls, v: str) -> str:
        """Spark's Parquet support (and Delta Lake's) refuses these characters in a column's name,
        and the predictions are read downstream by engines lakecast does not choose."""
        if odd := spark_refused(v):
            raise ValueError(
                f"{v!r} holds {odd}, which Spark refuses in a Parquet column's name: the "
                "predictions' readers could not read it; use letters, digits and _ (churn_probability)"
            )
        return v


class ColumnCheck(Frozen):
    """Row-level rules for one input column, beyond what the model signature says."""

    nullable: bool | None = Field(None, description="default: the signature's (optional columns take nulls)")
    min: float | None = None
    max: float | None = None
    categories: list[str] | None = Field(None, min_length=1, description="allowed values; others are invalid")

    @model_validator(mode="after")
    def _a_range(self) -> ColumnCheck:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min:g} is above max {self.max:g}: every row would be invalid")
        return self


class ValidationSpec(Frozen):
    on_invalid_rows: Literal["fail", "quarantine"] = Field(
        "quarantine", description="fail the run, or set bad rows aside in quarantine/<job>/ and score the rest"
    )
    max_invalid_share: float = Field(0.01, ge=0, le=1, description="the run fails above this share of bad rows")
    duplicate_keys: Literal["keep", "fail"] = Field(
        "keep", description="keep: score every row and log the count; fail: stop before scoring"
    )
    max_string_length: int = Field(1024, ge=1, description="longer strings make a row invalid")
    columns: dict[str, ColumnCheck] = {}


CLASSIFICATION_METRICS = {"accuracy", "precision", "recall", "f1", "roc_auc", "pr_auc", "log_loss", "brier", "ece"}
MULTICLASS_METRICS = {"accuracy", "macro_f1", "log_loss", "brier"}
REGRESSION_METRICS = {"rmse", "mae", "r2"}
# what a comparison decides on where the file names no ab.primary_metric
PRIMARY_METRICS = {"classification": "roc_auc", "multiclass": "log_loss", "regression": "rmse"}
METRICS_OF = {
    "classification": CLASSIFICATION_METRICS,
    "multiclass": MULTICLASS_METRICS,
    "regression": REGRESSION_METRICS,
}


class ABSpec(Frozen):
    """Offline comparison of two aliases on a labeled table, and the policy that decides."""

    labeled_table: TablePath
    labeled_partition: str | None = Field(
        None, description="the day's folder under ab.labeled_table, as input.partition; default: input.partition's"
    )
    label: Column
    label_delay_days: int = Field(
        0,
        ge=0,
        le=366,
        description="outcomes land this many days after the day they describe: the nightly compare "
        "takes the labeled partition of this many days before the night's date",
    )
    task: ABTask = Field("classification", description="default: model.task's")
    champion: str = "champion"
    challenger: str = "challenger"
    primary_metric: str = Field(
        "roc_auc", description="default: roc_auc for a classification, log_loss for a multiclass, rmse for a regression"
    )
    min_improvement: float = Field(0.0, ge=0, description="the smallest gain in the primary metric that counts")
    guards: dict[str, float] = Field({}, description="metric → largest regression tolerated")
    confidence: float = Field(0.95, gt=0.5, lt=1)
    bootstrap: int = Field(1000, ge=100, le=100_000)
    group_key: Column | None = Field(None, description="resample entities, not rows, in the bootstrap")
    segment_column: Column | None = None
    auto_promote: bool = False
    challenger_share: float = Field(0.0, ge=0, le=1, description="canary: share of entities the challenger scores")
    shadow: bool = Field(False, description="the challenger also scores every row into <output>_shadow")

    @field_validator("labeled_partition")
    @classmethod
    def _a_folder_a_day(cls, v: str | None) -> str | None:
        return v if v is None else day_folders.check(v)

    @model_validator(mode="before")
    @classmethod
    def _primary_of_the_task(cls, data: object) -> object:
        """A regression has no AUC: its primary metric defaults to RMSE, a multiclass's to log loss."""
        if isinstance(data, dict) and "primary_metric" not in data and data.get("task") in PRIMARY_METRICS:
            return {**data, "primary_metric": PRIMARY_METRICS[data["task"]]}
        return data

    @model_validator(mode="after")
    def _two_aliases(self) -> ABSpec:
        if self.champion == self.challenger:
            raise ValueError(f"champion and challenger are both the alias {self.champion!r}: a model against itself")
        return self

    @model_validator(mode="after")
    def _known_metrics(self) -> ABSpec:
        known = METRICS_OF[self.task]
        for metric in [self.primary_metric, *self.guards]:
            if metric not in known:
                raise ValueError(f"unknown {self.task} metric {metric!r} (known: {', '.join(sorted(known))})")
        return self


def ray_label_selector(selector: dict[str, str]) -> dict[str, str]:
    """``selector`` as Ray reads it, once its syntax is known good (jobs/labels.py)."""
    for key, text in selector.items():
        if why := labels.syntax_error(key, text):
            raise ValueError(why)
    return {key: labels.for_ray(text) for key, text in selector.items()}


class FallbackOption(Frozen):
    """One entry of ``compute.fallback_strategy``, as Ray's ``fallback_strategy`` takes it."""

    label_selector: dict[str, str] = Field(description="{} for any node")

    _ray_takes_it = field_validator("label_selector")(ray_label_selector)


class ComputeSpec(Frozen):
    min_actors: int = Field(1, ge=1)
    max_actors: int = Field(2, ge=1)
    gpus_per_actor: float | Literal["auto"] = Field(
        "auto", description="'auto': 1 where the Ray cluster has GPUs, else 0 (CPU actors)"
    )
    cpus_per_actor: float = Field(1, gt=0)
    batch_size: int | Literal["auto"] = Field(
        8192, description="rows per model call; 'auto': measured at the start of each run (jobs/batch_size.py)"
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32",
        description="the network's precision on GPU actors: bfloat16 or float16 halve its memory traffic "
        "(models/precision.py); CPU actors score in float32",
    )
    transparent_huge_pages: bool = Field(
        False,
        description="false: CPU actors turn Linux's transparent huge pages off for themselves (jobs/huge_pages.py)",
    )
    label_selector: dict[str, str] = Field(
        {},
        description="the labels of the nodes the actors may run on, as Ray's label selectors (jobs/labels.py): "
        "ray.io/accelerator-type: H100, ray.io/market-type: spot, in(A100, H100), !spot",
    )
    fallback_strategy: list[FallbackOption] = Field(
        [],
        description="where Ray places an actor when no node of label_selector can hold it: each entry's "
        "label_selector in turn ({} for any node), as Ray's fallback_strategy",
    )

    @field_validator("gpus_per_actor")
    @classmethod
    def _non_negative(cls, v: float | str) -> float | str:
        if not isinstance(v, str) and v < 0:
            raise ValueError("must be 'auto' or >= 0")
        return v

    _ray_takes_it = field_validator("label_selector")(ray_label_selector)

    @field_validator("batch_size", mode="before")
    @classmethod
    def _rows_or_auto(cls, v: object) -> object:
        if v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
            return v
        raise ValueError("must be a whole number of rows >= 1, or 'auto'")

    @model_validator(mode="after")
    def _pool_bounds(self) -> ComputeSpec:
        if self.max_actors < self.min_actors:
            raise ValueError(f"max_actors ({self.max_actors}) must be >= min_actors ({self.min_actors})")
        if self.fallback_strategy and not self.label_selector:
            raise ValueError(
                "fallback_strategy is where Ray places an actor that no node of label_selector can hold, and "
                "without a label_selector every node is one: give label_selector the nodes to try first"
            )
        for where, selector in self.selectors.items():
            if self.gpus_per_actor == 0 and labels.asks_for_accelerator(selector):
                raise ValueError(
                    f"{where} picks the nodes by {labels.ACCELERATOR}, and gpus_per_actor is 0: the actors "
                    "would hold those nodes without their GPUs; set gpus_per_actor to auto or 1, or pick the "
                    "nodes by another label"
                )
        return self

    @property
    def selectors(self) -> dict[str, dict[str, str]]:
        """The label selectors of the nodes the actors may run on, in the order Ray tries them, by
        where the job file gives each."""
        return {"label_selector": self.label_selector} | {
            f"fallback_strategy.{i}.label_selector": f.label_selector for i, f in enumerate(self.fallback_strategy)
        }

    @property
    def placement(self) -> dict[str, object]:
        """Ray's options for the nodes an actor (or the GPU probe of ``batch_size: auto``) runs on."""
        return {
            "label_selector": dict(self.label_selector) or None,
            "fallback_strategy": [{"label_selector": dict(f.label_selector)} for f in self.fallback_strategy] or None,
        }


class AirflowSpec(Frozen):
    owner: str = "ml-platform"
    retries: int = Field(2, ge=0)
    retry_delay_minutes: float = Field(5, ge=0)
    timeout_minutes: float = Field(240, gt=0, description="the predict task fails after this long")
    wait_for_input_minutes: float = Field(
        0,
        ge=0,
        description="how long check_input waits for the day's partition (and its ready marker) to land, "
        "looking again every few minutes without holding a worker slot; 0: it looks once, and a missing "
        "partition is retried as any failure is",
    )
    tags: list[str] = []
    email_on_failure: list[str] = Field(
        [],
        description="addresses mailed when a task of the job's DAG fails for good (its retries spent), with the "
        "job's error and a link to the task's log, through Airflow's SMTP connection (smtp_default)",
    )
    deadline_minutes: float | None = Field(
        None,
        gt=0,
        description="a run not finished this many minutes after it was queued (a scheduled run: after its time) "
        "mails the email_on_failure addresses, through an Airflow Deadline Alert",
    )
    pool: str | None = Field(
        None,
        min_length=1,
        description="Airflow pool of the tasks that use Ray (predict, compare): caps how many run at once",
    )
    partitioned_assets: bool = Field(
        False,
        description="Airflow's partitioned Asset events: publish names the day as the event's partition key, and "
        "with schedule: on_input the DAG listens for the input's partitioned events, scoring the day each key "
        "names. Airflow keeps the two kinds apart: a partitioned event starts partition-aware DAGs only, a plain "
        "one the others only",
    )
    max_active_runs: int = Field(
        1,
        ge=1,
        description="how many of the DAG's runs go at once (nights caught up, triggered ones): each scores its own "
        "night with its own actors; on a machine of its own, a run takes every core",
    )
    catch_up_from: dt.date | None = Field(
        None,
        description="the first night the scheduler scores on its own (YYYY-MM-DD): from then on it runs each night "
        "after the DAG's last scheduled run, oldest first, one at a time (Airflow's catchup), so the nights a stopped "
        "scheduler missed are scored when it is back; none before it. Without it, a scheduler back after a weekend "
        "runs the latest night only",
    )
    hourly_keys: str | None = Field(
        None,
        min_length=1,
        description="with partitioned_assets and schedule: on_input, for a producer that lands the input table "
        "hour by hour and sends a partitioned event an hour: the events' keys as a strftime pattern "
        "(%Y-%m-%dT%H:%M:%S, as Airflow's CronPartitionTimetable keys them). The DAG runs once all 24 hours of a "
        "day have arrived, and scores that day",
    )

    @model_validator(mode="after")
    def _someone_to_mail(self) -> AirflowSpec:
        if self.deadline_minutes is not None and not self.email_on_failure:
            raise ValueError(
                f"deadline_minutes: {self.deadline_minutes:g}, and nobody to mail when a night misses it: list the "
                "addresses in airflow.email_on_failure"
            )
        return self

    @field_validator("email_on_failure", mode="before")
    @classmethod
    def _addresses(cls, v: object) -> object:
        """A list of addresses, or one string of them as Airflow's own ``email`` takes it
        (``a@example.com, b@example.com``); each one checked here, where a typo would otherwise
        surface only as an undelivered mail on the night something failed."""
        if isinstance(v, str):
            v = [part for part in re.split(r"[,;]", v) if part.strip()]
        if not isinstance(v, list):
            return v
        addresses = [a.strip() if isinstance(a, str) else a for a in v]
        for address in addresses:
            if isinstance(address, str) and not EMAIL.fullmatch(address):
                raise ValueError(f"{address!r} is not an email address (name@domain.example)")
        return addresses

    @field_validator("catch_up_from", mode="before")
    @classmethod
    def _a_day(cls, v: object) -> object:
        return v if v is None else parse_date(v if isinstance(v, dt.date) else str(v))

    @field_validator("hourly_keys")
    @classmethod
    def _an_hours_key(cls, v: str | None) -> str | None:
        """A pattern Airflow can both read an hour's key with and write the 24 keys of a day in."""
        if v is None:
            return v
        missing = [d for d in ("%Y", "%m", "%d", "%H") if d not in v]
        if missing:
            raise ValueError(f"{v!r} lacks {' '.join(missing)}: an hour's key names its year, month, day and hour")
        hour = dt.datetime(2026, 12, 5, 13)
        key = hour.strftime(v)
        try:
            back = dt.datetime.strptime(key, v)
        except (ValueError, re.error):  # re.error: a directive written twice (%d ... %d)
            back = None
        if back != hour:
            raise ValueError(
                f"{v!r} writes the hour 2026-12-05 13:00 as {key!r}, which does not read back as that hour: use "
                "%Y %m %d %H (and %M %S) with fixed text between them"
            )
        return v


class JobConfig(Frozen):
    name: Annotated[str, StringConstraints(pattern=JOB_NAME)]
    description: str = Field(min_length=1)
    schedule: str | None = Field(
        description="cron expression, on the clock of timezone; on_input: when input.table's Airflow Asset is "
        "updated; null: triggered runs only"
    )
    timezone: str = Field(
        default="UTC",
        description="the IANA time zone whose clock the schedule keeps, daylight saving included (Europe/Paris, "
        "America/New_York); a run that names no day scores the day before its date there",
    )
    input: InputSpec
    model: ModelSpec
    output: OutputSpec
    validation: ValidationSpec = ValidationSpec()
    ab: ABSpec | None = None
    compute: ComputeSpec = ComputeSpec()
    airflow: AirflowSpec = AirflowSpec()

    _source: Path | None = PrivateAttr(default=None)  # the file it was loaded from (load_job_file)

    @model_validator(mode="before")
    @classmethod
    def _one_task(cls, data: object) -> object:
        """``model.task`` and ``ab.task`` say one thing, the kind of model the job scores: the one
        a file writes is the other's default (a file written before ``model.task`` existed says
        ``ab.task: regression`` only). Both written and different is an error, below. An embedding
        has no comparison to give a task to: its ``ab:`` is refused here, before the section's own
        checks would name a task it cannot take."""
        if not isinstance(data, dict):
            return data
        model, ab = data.get("model"), data.get("ab")
        if not (isinstance(model, dict) and isinstance(ab, dict)):
            return data
        if model.get("task") == "embedding":
            raise ValueError(
                "ab: an embedding model (model.task: embedding) returns vectors, with no label to measure two versions "
                "against: drop the ab: section (a canary or shadow of a challenger is part of it)"
            )
        if "task" in model and "task" not in ab:
            return {**data, "ab": {**ab, "task": model["task"]}}
        if "task" in ab and "task" not in model:
            return {**data, "model": {**model, "task": ab["task"]}}
        return data

    @property
    def file(self) -> str:
        """The job file, as a run's errors name it for the user to edit: relative to the project
        for its own ``conf/``, else the whole path (a ``LAKECAST_CONF`` folder elsewhere, also
        for a job submitted to a cluster with it, which runs on an uploaded copy)."""
        if self._source is None:
            return f"conf/jobs/{self.name}.yaml"
        source = self._source.resolve()
        if (shown := os.environ.get(CONF_SHOWN)) and source.is_relative_to(PROJECT_CONF):
            return str(Path(shown) / source.relative_to(PROJECT_CONF))
        return str(source.relative_to(PROJECT_ROOT) if source.is_relative_to(PROJECT_ROOT) else source)

    @field_validator("schedule")
    @classmethod
    def _cron(cls, v: str | None) -> str | None:
        if v is None or v == ON_INPUT:
            return v
        from croniter import croniter  # ships with Airflow; light

        if not croniter.is_valid(v):
            raise ValueError(f"not a valid cron expression: {v!r} (or {ON_INPUT}, or null for triggered runs only)")
        return v

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        zone_info(v)
        return v

    @model_validator(mode="after")
    def _outputs_apart(self) -> JobConfig:
        """Each run replaces its output partitions whole: one that is also an input would lose the
        day's input, and a score column named as another column of the predictions would clash."""
        reads = {self.input.table: "input.table"} | ({self.ab.labeled_table: "ab.labeled_table"} if self.ab else {})
        for table, (what, key) in self.writes.items():
            if table in reads:
                raise ValueError(
                    f"{key or reads[table]}: {table!r} is both {reads[table]} and where the job writes {what}, "
                    "replacing each day's partition whole: the rows it reads there would be lost; use another table"
                )
        taken = {self.input.key: "the key (input.key)"} | {c: "a column lakecast adds" for c in FIXED_COLUMNS}
        if self.output.score_column in taken:
            raise ValueError(
                f"output.score_column: {self.output.score_column!r} is already {taken[self.output.score_column]} "
                "in the predictions: name the score otherwise"
            )
        taken |= {self.output.score_column: "the score column (output.score_column)"}
        for column in self.output.passthrough:
            if column == self.input.key:
                raise ValueError(
                    f"output.passthrough: {column!r} is the key (input.key), which every row of the predictions "
                    "holds already; drop it from the list"
                )
            if column in taken:
                raise ValueError(
                    f"output.passthrough: {column!r} is also {taken[column]} in the predictions: the two would "
                    "clash; rename the input column upstream, or the score"
                )
        taken |= {c: "an input column copied (output.passthrough)" for c in self.output.passthrough}
        for column in self.class_columns:
            if odd := spark_refused(column):
                raise ValueError(
                    f"output.class_scores: the class's column {column!r} holds {odd}, which Spark refuses "
                    "in a Parquet column's name: the predictions' readers could not read it; name the classes with "
                    "letters, digits and _ (model.classes)"
                )
            if column in taken:
                raise ValueError(
                    f"output.class_scores: the class's column {column!r} is also {taken[column]} in the "
                    "predictions: the two would clash; name the score or the input column otherwise"
                )
        if self.input.key in FIXED_COLUMNS:
            raise ValueError(
                f"input.key: {self.input.key!r} is a column lakecast adds to the predictions "
                f"({', '.join(FIXED_COLUMNS)}); rename the key column upstream"
            )
        return self

    @model_validator(mode="after")
    def _task_fits(self) -> JobConfig:
        """What ``model.task`` implies for the rest of the file."""
        if self.ab is not None and self.ab.task != self.model.task:
            raise ValueError(
                f"ab.task: {self.ab.task!r} where model.task is {self.model.task!r}: the comparison measures the model "
                "the job scores; write the task once, under model: (ab.task follows it)"
            )
        if self.model.task == "regression" and self.output.threshold is not None:
            raise ValueError(
                "output.threshold: a regression model's score is its predicted value, with no threshold to cut it "
                "at and no prediction column (model.task is 'regression'); drop the key"
            )
        if self.model.task == "embedding" and self.output.threshold is not None:
            raise ValueError(
                "output.threshold: an embedding model's score is a vector, with no threshold to cut it at and no "
                "prediction column (model.task is 'embedding'); drop the key"
            )
        if self.output.class_scores and self.model.task != "multiclass":
            raise ValueError(
                f"output.class_scores: only a multiclass model has a probability per class to write (model.task is "
                f"{self.model.task!r}); drop the key"
            )
        if self.model.task == "multiclass" and self.output.threshold is not None:
            raise ValueError(
                "output.threshold: a multiclass model's prediction is its most probable class, with no threshold "
                "to cut a score at (model.task is 'multiclass'); drop the key"
            )
        return self

    @model_validator(mode="after")
    def _hours_listened_for(self) -> JobConfig:
        """``airflow.hourly_keys`` shapes how a DAG on its input's partitioned events listens: on any
        other job it would change nothing, and its user would wait for a daily run from the hours'
        events that the DAG never hears."""
        if self.airflow.hourly_keys and not (self.schedule == ON_INPUT and self.airflow.partitioned_assets):
            raise ValueError(
                "airflow.hourly_keys: the keys of the input's hourly partitioned Asset events, which only a job on "
                "schedule: on_input with airflow.partitioned_assets: true listens for; set both, or drop the key"
            )
        return self

    @model_validator(mode="after")
    def _nights_to_catch_up(self) -> JobConfig:
        """``airflow.catch_up_from`` catches up the nights of a cron schedule; a job on its input's
        events or triggered by hand has no nights of its own to miss."""
        if self.airflow.catch_up_from is not None and self.schedule in (None, ON_INPUT):
            runs = "on its input's Asset events" if self.schedule == ON_INPUT else "when triggered (schedule: null)"
            raise ValueError(
                f"airflow.catch_up_from: the job runs {runs}, with no nights of a schedule to catch up: drop the key, "
                "or give the job a cron schedule"
            )
        return self

    @property
    def writes(self) -> dict[str, tuple[str, str | None]]:
        """Each table a run writes: what it holds there, and the key of the job file that names it
        (None: the file's name does)."""
        tables: dict[str, tuple[str, str | None]] = {
            self.output.table: ("its predictions", "output.table"),
            self.quarantine_table: ("its quarantine", None),
        }
        if self.shadows:
            tables[self.shadow_table] = ("the shadow's scores (output.table + _shadow)", "output.table")
        if self.ab is not None:
            tables[self.ab_report_table] = ("its A/B reports", None)
        return tables

    @property
    def dag_id(self) -> str:
        return f"lakecast__{self.name}"

    @property
    def labeled_partition(self) -> str:
        """How ``ab.labeled_table`` names a day's folder: as the input does, unless the file says."""
        return (self.ab and self.ab.labeled_partition) or self.input.partition

    @property
    def quarantine_table(self) -> str:
        """Where rows that fail validation are set aside (``validation.on_invalid_rows``)."""
        return f"quarantine/{self.name}"

    @property
    def shadow_table(self) -> str:
        """Where the challenger's shadow scores go, beside the predictions (``ab.shadow``)."""
        return f"{self.output.table}_shadow"

    @property
    def ab_report_table(self) -> str:
        """Where ``lakecast compare`` keeps each day's A/B report (``ab:``)."""
        return f"ab/{self.name}"

    @property
    def shadows(self) -> bool:
        """Whether each run also scores every row with the challenger, unpublished."""
        return self.ab is not None and self.ab.shadow

    @property
    def classifies(self) -> bool:
        """Whether the score is a probability, cut at a threshold into a ``prediction`` column."""
        return self.model.task == "classification"

    @property
    def predicts(self) -> bool:
        """Whether the predictions hold a ``prediction`` column: a class, the cut score's 0 or 1
        or a multiclass model's most probable class (a regression's score is its prediction)."""
        return self.model.task not in ("regression", "embedding")

    @property
    def classes(self) -> tuple[str, ...]:
        """A multiclass model's classes, in the order of its output columns; empty for the others."""
        return tuple(self.model.classes or ())

    @property
    def class_columns(self) -> tuple[str, ...]:
        """The columns of each class's probability, in ``classes``' order (``output.class_scores``);
        empty where the predictions hold none."""
        if not self.output.class_scores:
            return ()
        return tuple(f"{self.output.score_column}_{c}" for c in self.classes)


def load_job_files(paths: list[Path]) -> tuple[dict[Path, JobConfig], dict[Path, ConfigError]]:
    """Load several job files as Airflow and ``lakecast validate`` see them: each must validate
    alone, and no two may write one table (:func:`overlapping_writes`). Returns the files that
    pass, and each other file's error."""
    jobs: dict[Path, JobConfig] = {}
    errors: dict[Path, ConfigError] = {}
    for path in paths:
        try:
            jobs[path] = load_job_file(path)
        except ConfigError as e:
            errors[path] = e
    errors |= overlapping_writes(jobs)
    errors |= unheard_events(jobs)
    return {path: job for path, job in jobs.items() if path not in errors}, errors


def overlapping_writes(jobs: Mapping[Path, JobConfig]) -> dict[Path, ConfigError]:
    """The job files, each valid alone, that write a table another one writes too: each run
    replaces its day's partition whole, so the two would overwrite each other every night, the
    last to run winning. Every file of such a pair gets the error, naming the other."""
    writes = {path: job.writes for path, job in jobs.items()}
    writers: dict[str, list[Path]] = {}
    for path, tables in writes.items():
        for table in tables:
            writers.setdefault(table, []).append(path)
    errors: dict[Path, list[str]] = {}
    for table, paths in writers.items():
        for path in paths:
            what, key = writes[path][table]
            for other in paths:
                if other != path:
                    errors.setdefault(path, []).append(
                        f"{path}: {key or 'the file name'}: {table!r} is where this job writes {what}, and "
                        f"{other} writes {writes[other][table][0]} there too: each run replaces the day's "
                        "partition whole, so the two would overwrite each other; give each job a table of its own"
                    )
    return {path: ConfigError("\n".join(lines)) for path, lines in errors.items()}


def unheard_events(jobs: Mapping[Path, JobConfig]) -> dict[Path, ConfigError]:
    """The jobs on ``schedule: on_input`` whose input another job writes, the two set apart by
    ``airflow.partitioned_assets``: Airflow starts a partition-aware DAG on partitioned events
    only, and the others on plain events only, so the job would never run; nor would one that
    waits for hourly keys (``airflow.hourly_keys``), where a job's publish keys its event by the
    day. The listening file gets the error, naming the writer."""
    kinds = {True: "partitioned", False: "plain"}
    writers = {job.output.table: (path, job) for path, job in jobs.items()}
    errors = {}
    for path, job in jobs.items():
        if job.schedule != ON_INPUT or job.input.table not in writers:
            continue
        source, writer = writers[job.input.table]
        listens, sends = job.airflow.partitioned_assets, writer.airflow.partitioned_assets
        if listens != sends:
            errors[path] = ConfigError(
                f"{path}: schedule: on_input listens for {kinds[listens]} Asset events of {job.input.table!r}, "
                f"and {source}, which writes it, publishes {kinds[sends]} ones (airflow.partitioned_assets: "
                f"{str(sends).lower()} there): Airflow would never start this job; set airflow.partitioned_assets "
                "alike in both files"
            )
        elif job.airflow.hourly_keys:
            errors[path] = ConfigError(
                f"{path}: airflow.hourly_keys listens for an event for each hour of {job.input.table!r}, and "
                f"{source}, which writes it, publishes one a day, keyed by the day: Airflow would never start this "
                "job; drop airflow.hourly_keys"
            )
    return errors


def jobs_dir() -> Path:
    return conf_dir() / "jobs"


def job_files() -> list[Path]:
    return sorted(jobs_dir().glob("*.yaml"))


def load_job_file(path: Path) -> JobConfig:
    """Load one job file; its name is the file's stem."""
    if not re.match(JOB_NAME, path.stem):
        raise ConfigError(f"{path}: job file names must be lower-case letters, digits and '_', got {path.stem!r}")
    why = f"a job is named after its file ({path.stem!r}): drop the key, or rename the file to rename the job"
    job = load_model(JobConfig, path, given={"name": (path.stem, why)})
    job._source = path
    return job


def load_job(name: str) -> JobConfig:
    """Load ``conf/jobs/<name>.yaml``; an unknown job lists the known ones."""
    if not re.match(JOB_NAME, name):
        raise ConfigError(f"job name must be lower-case letters, digits and '_', got {name!r}")
    path = jobs_dir() / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(p.stem for p in job_files()) or "none"
        raise ConfigError(f"{path}: no such job file (known jobs: {known})")
    return load_job_file(path)


def parse_date(value: str | dt.date) -> dt.date:
    """Parse a partition date, ``YYYY-MM-DD`` only: it becomes part of a lake path."""
    if isinstance(value, dt.date):
        return value
    try:
        if len(value) != 10:
            raise ValueError
        return dt.date.fromisoformat(value)
    except (TypeError, ValueError):
        raise ConfigError(f"date must be a calendar date as YYYY-MM-DD, got {value!r}") from None
