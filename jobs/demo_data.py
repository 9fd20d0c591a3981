"""Synthetic customer data for the demo: a raw daily snapshot and a labeled table.

The label ``churned`` depends on the features through interactions and thresholds, plus noise,
so a larger model can really beat a smaller one in the A/B comparison. Generation is vectorised
(1M rows take a few seconds) and deterministic for a given date and seed.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from jobs import commit
from jobs.lake import Lake

log = logging.getLogger(__name__)

RAW_TABLE = "raw/customers"
LABELED_TABLE = "labeled/customers"
KEY = "customer_id"
LABEL = "churned"

CATEGORIES: dict[str, list[str]] = {
    "contract_type": ["month_to_month", "one_year", "two_year"],
    "payment_method": ["card", "bank_transfer", "paypal", "invoice"],
    "region": ["north", "south", "east", "west", "central"],
    "plan_tier": ["basic", "standard", "premium", "fiber"],
    "device_os": ["ios", "android", "web", "other"],
    "acquisition_channel": ["organic", "ads", "referral", "partner", "retail"],
    "auto_renew": ["yes", "no"],
}
NUMERIC = [
    "age",
    "tenure_months",
    "monthly_charges",
    "total_charges",
    "num_support_calls",
    "avg_session_minutes",
    "days_since_last_login",
    "num_devices",
    "data_usage_gb",
    "late_payments_12m",
    "discount_pct",
    "satisfaction_score",
    "referrals",
    "contract_months_left",
    "app_crashes_30d",
]
FEATURES = NUMERIC + list(CATEGORIES)
# share of nulls per column: real snapshots have gaps
NULL_SHARE = {
    "satisfaction_score": 0.10,
    "avg_session_minutes": 0.03,
    "total_charges": 0.01,
    "payment_method": 0.02,
    "device_os": 0.05,
}


def _seed(ds: dt.date, salt: int) -> int:
    return ds.toordinal() * 1009 + salt


def generate(rows: int, ds: dt.date, *, seed: int = 0, with_label: bool = False, first_id: int = 7_000_000) -> pa.Table:
    """One day's customer snapshot of ``rows`` rows (and the label when ``with_label``).

    Ids run from ``first_id``: the same customers day after day.
    """
    rng = np.random.default_rng(_seed(ds, seed))
    n = rows
    cat = {c: rng.integers(0, len(v), n) for c, v in CATEGORIES.items()}
    cat["contract_type"] = rng.choice(3, n, p=[0.55, 0.25, 0.20])
    tenure = rng.gamma(2.0, 14.0, n).clip(0, 120).round()
    monthly = (20 + 15 * cat["plan_tier"] + rng.normal(0, 12, n)).clip(10, 160).round(2)
    support = rng.poisson(1.2, n).astype(np.float64)
    satisfaction = rng.integers(1, 6, n).astype(np.float64)
    last_login = rng.exponential(9.0, n).round()
    late = rng.poisson(0.4, n).astype(np.float64)
    crashes = rng.poisson(0.8 + 1.2 * (cat["device_os"] == 3), n).astype(np.float64)
    num = {
        "age": rng.integers(18, 85, n),
        "tenure_months": tenure,
        "monthly_charges": monthly,
        "total_charges": (monthly * tenure * rng.uniform(0.9, 1.1, n)).round(2),
        "num_support_calls": support,
        "avg_session_minutes": rng.lognormal(2.5, 0.6, n).round(1),
        "days_since_last_login": last_login,
        "num_devices": rng.integers(1, 7, n),
        "data_usage_gb": rng.gamma(2.0, 8.0, n).round(2),
        "late_payments_12m": late,
        "discount_pct": rng.choice([0.0, 5.0, 10.0, 20.0], n, p=[0.6, 0.2, 0.15, 0.05]),
        "satisfaction_score": satisfaction,
        "referrals": rng.poisson(0.5, n).astype(np.float64),
        "contract_months_left": np.where(cat["contract_type"] == 0, 0, rng.integers(0, 24, n)).astype(np.float64),
        "app_crashes_30d": crashes,
    }
    columns: dict[str, pa.Array] = {KEY: pa.array(np.arange(first_id, first_id + n, dtype=np.int64))}
    for c in NUMERIC:
        columns[c] = _with_nulls(pa.array(num[c]), NULL_SHARE.get(c, 0.0), rng)
    for c, values in CATEGORIES.items():
        arr = pa.DictionaryArray.from_arrays(pa.array(cat[c].astype(np.int32)), pa.array(values)).cast(pa.string())
        columns[c] = _with_nulls(arr, NULL_SHARE.get(c, 0.0), rng)
    if with_label:
        columns[LABEL] = pa.array(_churn(num, cat, rng), type=pa.int8())
    return pa.table(columns)


def _with_nulls(arr: pa.Array, share: float, rng: np.random.Generator) -> pa.Array:
    if share <= 0:
        return arr
    import pyarrow.compute as pc

    return pc.if_else(pa.array(rng.random(len(arr)) < share), pa.scalar(None, arr.type), arr)


def _churn(num: dict[str, np.ndarray], cat: dict[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """The ground truth: main effects, thresholds and interactions, then Bernoulli noise."""
    month_to_month = cat["contract_type"] == 0
    fiber = cat["plan_tier"] == 3
    unhappy = num["satisfaction_score"] <= 2
    z = (
        -2.2
        + 1.3 * month_to_month
        - 0.035 * num["tenure_months"]
        + 0.012 * (num["monthly_charges"] - 60)
        + 0.25 * num["num_support_calls"]
        + 1.1 * (num["days_since_last_login"] > 21)
        - 0.35 * (num["satisfaction_score"] - 3)
        + 0.45 * num["late_payments_12m"]
        - 0.5 * (cat["auto_renew"] == 0)
        + 1.4 * (fiber & (num["monthly_charges"] > 75))  # price-sensitive fiber customers
        + 1.2 * (unhappy & (num["num_support_calls"] >= 3))  # unhappy and keep calling
        + 0.8 * (month_to_month & (num["tenure_months"] < 6))  # new and uncommitted
        + 0.3 * np.sin(num["age"] / 9.0)
        - 0.04 * num["discount_pct"]
        + 0.25 * (num["app_crashes_30d"] >= 3)
    )
    p = 1.0 / (1.0 + np.exp(-z))
    return (rng.random(len(p)) < p).astype(np.int8)


def write_partition(lake: Lake, table: str, ds: dt.date, data: pa.Table, *, files: int) -> str:
    """Write ``data`` as ``files`` Parquet files and commit them as one partition."""
    with commit.partition_lock(lake, table, ds, job="demo"):
        commit.recover(lake, table, ds)
        return _write_files(lake, table, ds, data, files=files)


def _write_files(lake: Lake, table: str, ds: dt.date, data: pa.Table, *, files: int) -> str:
    staging = lake.staging_path(table, ds, f"demo-{uuid.uuid4().hex[:12]}")
    lake.make_dirs(staging)
    step = -(-data.num_rows // files)
    outputs = []
    for i in range(files):
        part = data.slice(i * step, step)
        name = f"part-{staging.rsplit('/', 1)[-1]}-{i:05d}.parquet"  # unique per write: see jobs.commit
        pq.write_table(part, f"{staging}/{name}", filesystem=lake.fs, compression="snappy")
        outputs.append({"file": name, "rows": part.num_rows})
    manifest = {"table": table, "date": ds.isoformat(), "writer": "lakecast demo", "output": outputs}
    return commit.commit(lake, staging, table, ds, manifest)


def build_demo_lake(lake: Lake, ds: dt.date, *, rows: int, labeled_rows: int) -> dict[str, str]:
    """Raw snapshot for ``ds``; labeled data for ``ds - 1`` (training) and ``ds`` (evaluation).

    Returns:
        table name → committed partition path.
    """
    files = max(4, min(32, rows // 250_000))
    out = {RAW_TABLE: write_partition(lake, RAW_TABLE, ds, generate(rows, ds), files=files)}
    for day, salt in ((ds - dt.timedelta(days=1), 1), (ds, 2)):
        labeled = generate(labeled_rows, day, seed=salt, with_label=True)
        out[f"{LABELED_TABLE}@{day}"] = write_partition(lake, LABELED_TABLE, day, labeled, files=2)
    log.info("demo lake for %s: %d raw rows, %d labeled rows per day", ds, rows, labeled_rows)
    return out
