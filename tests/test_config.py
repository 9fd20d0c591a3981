"""Job files and profiles: what a user sees when a YAML file is wrong."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from pathlib import Path

import pytest

from jobs.config import load_job, load_job_file, parse_date
from jobs.settings import PROJECT_ROOT, conf_dir, load_settings
from jobs.yamlconf import ConfigError

VALID = """\
description: test job
schedule: "0 2 * * *"
input: {table: raw/customers, key: customer_id}
model: {name: churn-classifier, alias: champion}
output: {table: predictions/churn_test}
"""


def write(tmp_path: Path, text: str, name: str = "myjob") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


def test_the_demo_job_file_loads(home):
    job = load_job("churn")
    assert job.dag_id == "lakecast__churn"
    assert job.model.alias == "champion"
    assert job.output.score_column == "churn_probability"
    assert job.compute.gpus_per_actor == "auto"


def test_unknown_key_names_file_and_key(tmp_path):
    path = write(tmp_path, VALID + "compute: {batch_sise: 10}\n")
    with pytest.raises(ConfigError) as e:
        load_job_file(path)
    assert str(path) in str(e.value)
    assert "compute.batch_sise: unknown key" in str(e.value)


def test_wrong_type_names_key_and_value(tmp_path):
    path = write(tmp_path, VALID + "compute: {batch_size: lots}\n")
    with pytest.raises(
        ConfigError, match=r"compute\.batch_size: .*whole number of rows >= 1, or 'auto' \(got 'lots'\)"
    ):
        load_job_file(path)


def test_batch_size_is_rows_or_auto(tmp_path):
    assert load_job_file(write(tmp_path, VALID + "compute: {batch_size: auto}\n")).compute.batch_size == "auto"
    assert load_job_file(write(tmp_path, VALID + "compute: {batch_size: 4096}\n")).compute.batch_size == 4096
    for bad in ("0", "2.5", "true"):
        with pytest.raises(
            ConfigError, match=rf"compute\.batch_size: .*\(got {bad.title() if bad == 'true' else bad}\)"
        ):
            load_job_file(write(tmp_path, VALID + f"compute: {{batch_size: {bad}}}\n"))


def test_missing_required_key(tmp_path):
    path = write(tmp_path, VALID.replace("output: {table: predictions/churn_test}\n", ""))
    with pytest.raises(ConfigError, match=r"myjob\.yaml: output: required key is missing"):
        load_job_file(path)


def test_missing_job_lists_known_jobs(home):
    with pytest.raises(ConfigError, match=r"no such job file \(known jobs: .*churn"):
        load_job("nope")


@pytest.mark.parametrize("table", ["../etc", "/abs/path", "raw/../../x", "s3://bucket/x", "Raw/Customers"])
def test_tables_cannot_leave_the_lake(tmp_path, table):
    path = write(tmp_path, VALID.replace("predictions/churn_test", table))
    with pytest.raises(ConfigError, match=r"output\.table"):
        load_job_file(path)


@pytest.mark.parametrize("name", ["../x", "Churn", "a-b", ""])
def test_job_names_are_checked(home, name):
    with pytest.raises(ConfigError, match="job name"):
        load_job(name)


def test_bad_cron_and_pool_bounds(tmp_path):
    path = write(tmp_path, VALID.replace('"0 2 * * *"', '"every night"') + "compute: {min_actors: 3, max_actors: 2}\n")
    with pytest.raises(ConfigError) as e:
        load_job_file(path)
    # each problem once, in a sentence: the value is not repeated after the validator's message
    assert (
        f"{path}: schedule: not a valid cron expression: 'every night' (or on_input, or null for triggered runs only)\n"
    ) in str(e.value)
    assert "max_actors (2) must be >= min_actors (3)" in str(e.value)
    assert load_job_file(write(tmp_path, VALID.replace('"0 2 * * *"', "on_input"))).schedule == "on_input"


def test_a_schedule_keeps_the_clock_of_the_zone_the_file_names(tmp_path):
    """``timezone``: an IANA zone, where the team's night is; a misspelt one names the zones meant."""
    assert load_job_file(write(tmp_path, VALID)).timezone == "UTC"
    assert load_job_file(write(tmp_path, VALID + "timezone: Europe/Paris\n")).timezone == "Europe/Paris"
    for bad, meant in (
        ("Europe/Pari", " (did you mean 'Europe/Paris' or 'Europe/Madrid'?)"),
        ("america/new_york", " (did you mean 'America/New_York'?)"),
        ("+02:00", ""),
    ):
        path = write(tmp_path, VALID + f"timezone: '{bad}'\n")
        with pytest.raises(ConfigError) as e:
            load_job_file(path)
        assert str(e.value) == (
            f"{path}: timezone: '{bad}' is not an IANA time zone{meant}: name the place whose clock the schedule "
            "keeps, such as Europe/Paris, America/New_York or UTC"
        )


def test_catching_up_takes_a_day_and_a_schedule_with_nights(tmp_path):
    """``airflow.catch_up_from``: a calendar day, on a job whose cron gives it nights to catch up."""
    job = load_job_file(write(tmp_path, VALID + "airflow: {catch_up_from: 2026-11-01}\n"))
    assert job.airflow.catch_up_from == dt.date(2026, 11, 1)
    path = write(tmp_path, VALID + "airflow: {catch_up_from: 2026-11-31}\n")
    with pytest.raises(ConfigError, match=r"airflow\.catch_up_from: date must be a calendar date as YYYY-MM-DD"):
        load_job_file(path)
    path = write(tmp_path, VALID.replace('"0 2 * * *"', "on_input") + "airflow: {catch_up_from: 2026-11-01}\n")
    with pytest.raises(ConfigError) as e:
        load_job_file(path)
    assert (
        "airflow.catch_up_from: the job runs on its input's Asset events, with no nights of a schedule to catch up: "
        "drop the key, or give the job a cron schedule"
    ) in str(e.value)


def test_an_embedding_model_names_its_width_and_has_nothing_to_compare(tmp_path):
    """``model.task: embedding``: the vector's length is the file's to say, and only such a model's; a
    threshold or an ``ab:`` section (no label to measure a vector against) is refused, each in a
    sentence."""
    vectors = VALID.replace(
        "model: {name: churn-classifier, alias: champion}", "model: {name: enc, task: embedding, dimensions: 64}"
    )
    assert load_job_file(write(tmp_path, vectors)).model.dimensions == 64
    for text, error in (
        (vectors.replace(", dimensions: 64", ""), "model: dimensions: an embedding model (task: embedding) needs"),
        (VALID.replace("alias: champion}", "alias: champion, dimensions: 8}"), "model: dimensions: only an embedding"),
        (
            vectors.replace("{table: predictions/churn_test}", "{table: predictions/churn_test, threshold: 0.5}"),
            "output.threshold: an embedding model's score is a vector",
        ),
        (
            vectors + "ab: {labeled_table: labeled/customers, label: churned}\n",
            "ab: an embedding model (model.task: embedding) returns vectors, with no label to measure two versions "
            "against: drop the ab: section",
        ),
    ):
        path = write(tmp_path, text)
        with pytest.raises(ConfigError) as e:
            load_job_file(path)
        assert f"{path}: {error}" in str(e.value)


def test_the_precision_is_one_of_three(tmp_path):
    assert load_job_file(write(tmp_path, VALID)).compute.dtype == "float32"
    job = load_job_file(write(tmp_path, VALID + "compute: {dtype: bfloat16}\n"))
    assert job.compute.dtype == "bfloat16"
    expected = r"compute\.dtype: Input should be 'float32', 'bfloat16' or 'float16' \(got 'bf16'\)"
    with pytest.raises(ConfigError, match=expected):
        load_job_file(write(tmp_path, VALID + "compute: {dtype: bf16}\n"))


def test_a_label_selector_is_checked_as_ray_would_when_the_file_loads(tmp_path):
    """Ray refuses a selector's syntax only when it creates the actor, after the run's checks, its
    MLflow run and its Ray have started: the job file says so at once."""
    selector = {"ray.io/accelerator-type": "in(A100, H100)", "ray.io/market-type": "!spot", "team": "!in(a,b)"}
    job = load_job_file(write(tmp_path, VALID + f"compute: {{label_selector: {json.dumps(selector)}}}\n"))
    # Ray's scheduler would keep the space after a comma in the value: " H100" (jobs/labels.py)
    assert job.compute.label_selector == selector | {"ray.io/accelerator-type": "in(A100,H100)"}
    for text, error in [
        ("{ray.io/market-type: 'in(spot'}", "compute.label_selector: 'in(spot' is not a label selector"),
        ("{zone: 'us west'}", "compute.label_selector: 'us west' is not a label selector"),
        ("{'gpu type': A100}", "compute.label_selector: the label key 'gpu type' is not a label's name"),
        ("{-bad.prefix/gpu: A100}", "the label key '-bad.prefix/gpu' has a prefix that is not a series of DNS"),
        (
            "{ray.io/accelerator-type: H100}, gpus_per_actor: 0",
            "compute: label_selector picks the nodes by ray.io/accelerator-type, and gpus_per_actor is 0",
        ),
    ]:
        path = write(tmp_path, VALID + f"compute: {{label_selector: {text}}}\n")
        with pytest.raises(ConfigError) as e:
            load_job_file(path)
        assert f"{path}: " in str(e.value) and error in str(e.value), text


def test_a_fallback_strategy_is_checked_as_ray_would_when_the_file_loads(tmp_path):
    """Ray's ``fallback_strategy``: the nodes to place an actor on where none of ``label_selector``
    can hold it, each entry's selector in turn; ``{}`` for any node."""
    fallbacks = [{"label_selector": {"ray.io/market-type": "on-demand", "zone": "in(a, b)"}}, {"label_selector": {}}]
    text = f"compute: {{label_selector: {{ray.io/market-type: spot}}, fallback_strategy: {json.dumps(fallbacks)}}}\n"
    compute = load_job_file(write(tmp_path, VALID + text)).compute
    assert compute.placement == {
        "label_selector": {"ray.io/market-type": "spot"},
        "fallback_strategy": [
            {"label_selector": {"ray.io/market-type": "on-demand", "zone": "in(a,b)"}},
            {"label_selector": {}},
        ],
    }
    for text, error in [
        (
            "{label_selector: {zone: a}, fallback_strategy: [{label_selector: {zone: 'in(b'}}]}",
            "compute.fallback_strategy.0.label_selector: 'in(b' is not a label selector",
        ),
        (
            "{label_selector: {zone: a}, fallback_strategy: [{zone: b}]}",
            "compute.fallback_strategy.0.label_selector: required key is missing",
        ),
        (
            "{fallback_strategy: [{label_selector: {zone: b}}]}",
            "compute: fallback_strategy is where Ray places an actor that no node of label_selector can hold, and "
            "without a label_selector every node is one",
        ),
        (
            "{label_selector: {zone: a}, gpus_per_actor: 0, fallback_strategy: "
            "[{label_selector: {ray.io/accelerator-type: A100}}]}",
            "compute: fallback_strategy.0.label_selector picks the nodes by ray.io/accelerator-type, and "
            "gpus_per_actor is 0",
        ),
    ]:
        path = write(tmp_path, VALID + f"compute: {text}\n")
        with pytest.raises(ConfigError) as e:
            load_job_file(path)
        assert f"{path}: {error}" in str(e.value), text


@pytest.mark.parametrize(
    ("selector", "placed"),
    [  # each as Ray 2.60 placed an actor, or left it pending, on a node labelled only team: ml
        ({"team": "ml"}, True),
        ({"team": "!ml"}, False),
        ({"zone": "!a"}, True),
        ({"zone": "!in(a,b)"}, True),
        ({"team": "in(ml, x)"}, True),
        ({"zone": "a"}, False),
        ({"team": "ml", "zone": "a"}, False),
        ({}, True),
    ],
)
def test_a_selector_matches_a_nodes_labels_as_ray_places_actors(selector, placed):
    from jobs import labels

    assert labels.matches(selector, {"team": "ml"}) is placed


def test_failure_mail_addresses_are_checked_when_the_file_loads(tmp_path, monkeypatch):
    """``airflow.email_on_failure``: a list, or one string of addresses as Airflow's ``email`` takes
    them, from a variable too; an address with a typo is named now, not found missing on the night
    a task fails."""
    monkeypatch.setenv("ONCALL", "oncall@example.com")
    for said, addresses in [
        ("[oncall@example.com]", ["oncall@example.com"]),
        ("'ml-team@example.com, oncall@example.org'", ["ml-team@example.com", "oncall@example.org"]),
        ("'${ONCALL}'", ["oncall@example.com"]),
    ]:
        job = load_job_file(write(tmp_path, VALID + f"airflow: {{email_on_failure: {said}}}\n"))
        assert job.airflow.email_on_failure == addresses
    assert load_job_file(write(tmp_path, VALID)).airflow.email_on_failure == []
    for bad in ("oncall", "oncall@example", "on call@example.com"):
        path = write(tmp_path, VALID + f"airflow: {{email_on_failure: [ml@example.com, '{bad}']}}\n")
        with pytest.raises(ConfigError) as e:
            load_job_file(path)
        assert f"{path}: airflow.email_on_failure: '{bad}' is not an email address (name@domain.example)" in str(
            e.value
        )


def test_a_ready_marker_is_a_file_name_that_is_not_data(tmp_path):
    """The marker lies beside the partition's data files, and lakecast reads every file there whose
    name does not start with '_' or '.' as Parquet: a marker named otherwise would break every run."""
    job = load_job_file(
        write(tmp_path, VALID.replace("key: customer_id}", "key: customer_id, ready_marker: _SUCCESS}"))
    )
    assert job.input.ready_marker == "_SUCCESS"
    assert job.airflow.wait_for_input_minutes == 0  # no wait unless the file asks for one
    for marker, error in (
        ("DONE", r"input\.ready_marker: 'DONE' would be read as a Parquet file: lakecast skips only names that "
         r"start with '_' or '\.'"),
        ("_flags/_SUCCESS", r"input\.ready_marker: '_flags/_SUCCESS' is not a file name"),
    ):  # fmt: skip
        with pytest.raises(ConfigError, match=error):
            load_job_file(
                write(tmp_path, VALID.replace("key: customer_id}", f"key: customer_id, ready_marker: {marker}}}"))
            )
    with pytest.raises(ConfigError, match=r"airflow\.wait_for_input_minutes: .*greater than or equal to 0"):
        load_job_file(write(tmp_path, VALID + "airflow: {wait_for_input_minutes: -5}\n"))


def test_an_input_partition_is_a_folder_a_day_below_its_table(tmp_path):
    """``input.partition`` names a day's folder as the table's writer laid it out; a pattern that
    would leave the table, or put two days in one folder, is refused before any run reads it."""
    job = load_job_file(write(tmp_path, VALID))
    assert job.input.partition == "ds=%Y-%m-%d" and job.labeled_partition == "ds=%Y-%m-%d"
    theirs = "year=%Y/month=%m/day=%d"
    job = load_job_file(
        write(
            tmp_path,
            VALID.replace("key: customer_id}", f"key: customer_id, partition: '{theirs}'}}")
            + "ab: {labeled_table: labeled/customers, label: churned}\n",
        )
    )
    assert job.input.partition == theirs and job.labeled_partition == theirs  # the labels' as the input's
    job = load_job_file(
        write(
            tmp_path, VALID + "ab: {labeled_table: labeled/customers, label: churned, labeled_partition: 'dt=%Y%m%d'}\n"
        )
    )
    assert job.input.partition == "ds=%Y-%m-%d" and job.labeled_partition == "dt=%Y%m%d"
    for layout, error in (
        ("dt=%Y%m", r" puts 2024-01-01 and 2024-01-02 in one folder, 'dt=202401': a day's folder needs the year, the "
                    r"month and the day"),
        ("day=%m-%d", r" puts 2024-01-01 and 2025-01-01 in one folder, 'day=01-01'"),
        ("../%Y-%m-%d", r" makes the folder '\.\./2026-12-05' for 2026-12-05: .* the day stays below its table"),
        ("/dt=%Y-%m-%d", r" makes the folder '/dt=2026-12-05'"),
        ("date=%Y-%m-%d %H", r": %H is not a directive of a day's folder; use %Y \(the year\)"),
        ("ds=%Y-%m-%d/hr=%H", r": %H is not .*; the folders below a day's \(hr=13/\) are read with it, so name the "
                              r"day's folder alone"),
        ("dt=%F", r": %F is not a directive"),
        ("dt=%Y%m%d%", r" ends with a lone %"),
    ):  # fmt: skip
        text = VALID.replace("key: customer_id}", f"key: customer_id, partition: '{layout}'}}")
        with pytest.raises(ConfigError, match=r"input\.partition: " + re.escape(repr(layout)) + error):
            load_job_file(write(tmp_path, text))


def test_hourly_keys_are_an_hours_pattern_on_a_partition_aware_job(tmp_path, home, capsys):
    """``airflow.hourly_keys``: Airflow reads each hour's key with the pattern and writes the 24
    keys a day waits for with it, so one that cannot do both would hold the day's run forever; and
    only a partition-aware job on its input listens for them, not one on a lakecast job's output,
    whose publish keys a day."""
    from jobs.cli import main

    on_input = VALID.replace('"0 2 * * *"', "on_input")
    hourly = "airflow: {partitioned_assets: true, hourly_keys: '%s'}\n"
    job = load_job_file(write(tmp_path, on_input + hourly % "%Y-%m-%dT%H:%M:%S"))
    assert job.airflow.hourly_keys == "%Y-%m-%dT%H:%M:%S"
    for pattern, error in (
        ("%Y-%m-%d", r"airflow\.hourly_keys: '%Y-%m-%d' lacks %H: an hour's key names its year, month, day and hour"),
        ("%Y-%m-%dT%H:%d", r"writes the hour 2026-12-05 13:00 as '2026-12-05T13:05', which does not read back"),
    ):
        with pytest.raises(ConfigError, match=error):
            load_job_file(write(tmp_path, on_input + hourly % pattern))
    for text in (VALID + hourly % "%Y%m%d%H", on_input + "airflow: {hourly_keys: '%Y%m%d%H'}\n"):
        with pytest.raises(ConfigError, match=r"airflow\.hourly_keys: the keys of the input's hourly partitioned"):
            load_job_file(write(tmp_path, text))

    writer = write(tmp_path, VALID + "airflow: {partitioned_assets: true}\n", name="writer")
    reader = on_input.replace("raw/customers", "predictions/churn_test").replace("churn_test}", "downstream}")
    listener = write(tmp_path, reader + hourly % "%Y%m%d%H", name="listener")
    assert main(["validate", str(writer), str(listener)]) == 1
    assert capsys.readouterr().out.splitlines()[1] == (
        f"invalid {listener}: airflow.hourly_keys listens for an event for each hour of 'predictions/churn_test', "
        f"and {writer}, which writes it, publishes one a day, keyed by the day: Airflow would never start this job; "
        "drop airflow.hourly_keys"
    )


def test_environment_interpolation(tmp_path, monkeypatch):
    monkeypatch.setenv("CHURN_MODEL", "churn-from-env")
    text = VALID.replace("churn-classifier", "'${CHURN_MODEL}'").replace("champion", "'${ALIAS:-best}'")
    path = write(tmp_path, text)
    job = load_job_file(path)
    assert job.model.name == "churn-from-env"
    assert job.model.alias == "best"


def test_unset_variable_is_named(tmp_path, monkeypatch):
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    path = write(tmp_path, VALID.replace("churn-classifier", "'${NOT_SET_ANYWHERE}'"))
    with pytest.raises(ConfigError) as raised:
        load_job_file(path)
    assert str(raised.value).startswith(f"{path}: model.name: environment variable NOT_SET_ANYWHERE is not set")


def test_not_yaml_and_not_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_job_file(write(tmp_path, "input: [unclosed\n"))
    # the line to edit, in one sentence: PyYAML's own text calls the file "<unicode string>"
    path = write(tmp_path, VALID.replace("input: {table: raw/customers, key: customer_id}", "input:\n\ttable: x"))
    with pytest.raises(ConfigError) as raised:
        load_job_file(path)
    assert str(raised.value) == f"{path}, line 4, column 1: not valid YAML: a tab, where YAML indents with spaces only"
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_job_file(write(tmp_path, "- a\n- b\n"))


def test_a_key_written_twice_is_named_not_silently_dropped(tmp_path):
    """PyYAML keeps the last of two equal keys: a setting uncommented below its own example ran
    with the other ignored. Both lines are named; a merge (``<<: *base``) still overrides."""
    twice = "output:\n  table: predictions/churn_test\n  score_column: p\n  score_column: q"
    path = write(tmp_path, VALID.replace("output: {table: predictions/churn_test}", twice))
    with pytest.raises(ConfigError) as raised:
        load_job_file(path)
    assert str(raised.value) == (
        f"{path}, line 8, column 3: not valid YAML: key 'score_column' is also at line 7, "
        "and YAML keeps only one of them"
    )
    with pytest.raises(ConfigError, match=r"line 6, column 1: not valid YAML: key 'schedule' is also at line 2"):
        load_job_file(write(tmp_path, VALID + 'schedule: "0 3 * * *"\n'))
    # both on one line, in a flow mapping
    one_line = VALID.replace("output: {table: predictions/churn_test}", "output: {score_column: p, score_column: q}")
    with pytest.raises(ConfigError, match=r"line 5, column 27: not valid YAML: key 'score_column' is also at line 5"):
        load_job_file(write(tmp_path, one_line))
    merged = VALID.replace("output: {table: predictions/churn_test}", "output:\n  <<: &out {table: predictions/x}\n"
                           "  table: predictions/churn_test")  # fmt: skip
    assert load_job_file(write(tmp_path, merged)).output.table == "predictions/churn_test"


def test_a_name_in_the_file_must_be_the_files_own(tmp_path):
    """A job is named after its file: a ``name:`` that says otherwise is refused, not ignored."""
    path = write(tmp_path, VALID + "name: churn_v2\n")
    with pytest.raises(ConfigError) as e:
        load_job_file(path)
    assert str(e.value) == (
        f"{path}: name: the file says 'churn_v2', but a job is named after its file ('myjob'): drop the key, "
        "or rename the file to rename the job"
    )
    assert load_job_file(write(tmp_path, VALID + "name: myjob\n")).name == "myjob"


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (
            "output: {table: raw/customers}",
            "output.table: 'raw/customers' is both input.table and where the job writes its predictions, "
            "replacing each day's partition whole: the rows it reads there would be lost; use another table",
        ),
        (
            "input: {table: quarantine/myjob, key: customer_id}",
            "input.table: 'quarantine/myjob' is both input.table and where the job writes its quarantine",
        ),
        (
            "output: {table: labeled}\nab: {labeled_table: labeled_shadow, label: churned, shadow: true}",
            "output.table: 'labeled_shadow' is both ab.labeled_table and where the job writes the shadow's scores",
        ),
        (
            "output: {table: predictions/churn_test, score_column: customer_id}",
            "output.score_column: 'customer_id' is already the key (input.key) in the predictions",
        ),
        (
            "output: {table: predictions/churn_test, score_column: scored_at}",
            "output.score_column: 'scored_at' is already a column lakecast adds in the predictions",
        ),
        (
            "output: {table: predictions/churn_test, score_column: 'churn probability (30 days)'}",
            "output.score_column: 'churn probability (30 days)' holds ' ', '(', ')', which Spark refuses in a Parquet "
            "column's name: the predictions' readers could not read it; use letters, digits and _ (churn_probability)",
        ),
        (
            "output: {table: predictions/churn_test, passthrough: [region, customer_id]}",
            "output.passthrough: 'customer_id' is the key (input.key), which every row of the predictions holds "
            "already; drop it from the list",
        ),
        (
            "output: {table: predictions/churn_test, passthrough: [scored_at]}",
            "output.passthrough: 'scored_at' is also a column lakecast adds in the predictions: the two would clash",
        ),
        (
            "output: {table: predictions/churn_test, score_column: churn, passthrough: [churn]}",
            "output.passthrough: 'churn' is also the score column (output.score_column) in the predictions",
        ),
        (
            "output: {table: predictions/churn_test, passthrough: [region, plan, region]}",
            "output.passthrough: 'region' listed more than once",
        ),
        (
            "airflow: {deadline_minutes: 240}",
            "airflow: deadline_minutes: 240, and nobody to mail when a night misses it: list the addresses in "
            "airflow.email_on_failure",
        ),
        (
            "airflow: {deadline_minutes: 0, email_on_failure: [oncall@example.com]}",
            "airflow.deadline_minutes: Input should be greater than 0",
        ),
        (
            "input: {table: raw/customers, key: variant}",
            "input.key: 'variant' is a column lakecast adds to the predictions",
        ),
        (
            "input: {table: raw/customers, key: customer_id, columns: [tenure, plan, tenure]}",
            "input.columns: 'tenure' listed more than once",
        ),
        (
            "model: {name: churn-classifier, alias: champion, version: 3}",
            "model: alias 'champion' and version 3 both choose the model's version: set one of them",
        ),
        (
            "validation: {columns: {tenure: {min: 10, max: 1}}}",
            "validation.columns.tenure: min 10 is above max 1: every row would be invalid",
        ),
        (
            "validation: {columns: {plan: {categories: []}}}",
            "validation.columns.plan.categories: List should have at least 1 item",
        ),
        (
            "ab: {labeled_table: labeled, label: churned, challenger: champion}",
            "ab: champion and challenger are both the alias 'champion': a model against itself",
        ),
        (
            "model: {name: ltv, task: regression}\nab: {labeled_table: labeled, label: spend, task: classification}",
            "ab.task: 'classification' where model.task is 'regression': the comparison measures the model the job "
            "scores; write the task once, under model: (ab.task follows it)",
        ),
        (
            "model: {name: ltv, task: regression}\noutput: {table: predictions/ltv, threshold: 0.5}",
            "output.threshold: a regression model's score is its predicted value, with no threshold to cut it at",
        ),
        (
            "model: {name: ltv, task: regression}\nab: {labeled_table: labeled, label: spend, primary_metric: roc_auc}",
            "ab: unknown regression metric 'roc_auc' (known: mae, r2, rmse)",
        ),
        (
            "model: {name: ltv, task: forecast}",
            "model.task: Input should be 'classification', 'multiclass', 'regression' or 'embedding'",
        ),
        (
            "model: {name: plan, task: multiclass}",
            "model: classes: a multiclass model (task: multiclass) needs its classes' names, at least two, in the "
            "order of the model's output columns",
        ),
        ("model: {name: plan, task: multiclass, classes: [basic]}", "model: classes: a multiclass model"),
        (
            "model: {name: plan, task: multiclass, classes: [basic, plus, basic]}",
            "model: classes: 'basic' listed more than once",
        ),
        (
            "model: {name: plan, task: multiclass, classes: [basic, 5+ seats]}",
            "model: classes: '5+ seats' is not a class name lakecast can keep: the share of the rows predicted in "
            "each class is an MLflow metric named after it (score.share.<class>)",
        ),
        (
            "model: {name: plan, classes: [basic, plus]}",
            "model: classes: only a multiclass model has classes to name (task is 'classification')",
        ),
        (
            "model: {name: plan, task: multiclass, classes: [a, b, c]}\noutput: {table: predictions/p, threshold: 0.5}",
            "output.threshold: a multiclass model's prediction is its most probable class, with no threshold",
        ),
        (
            "model: {name: plan, task: multiclass, classes: [basic, 5 seats]}\n"
            "output: {table: predictions/p, class_scores: true}",
            "output.class_scores: the class's column 'score_5 seats' holds ' ', which Spark refuses in a Parquet "
            "column's name",
        ),
        (
            "model: {name: plan, task: multiclass, classes: [a, b]}\n"
            "output: {table: predictions/p, score_column: p, class_scores: true, passthrough: [p_a]}",
            "output.class_scores: the class's column 'p_a' is also an input column copied (output.passthrough)",
        ),
        (
            "output: {table: predictions/p, class_scores: true}",
            "output.class_scores: only a multiclass model has a probability per class to write (model.task is "
            "'classification')",
        ),
        (
            "model: {name: plan, task: multiclass, classes: [a, b, c]}\n"
            "ab: {labeled_table: labeled, label: plan, guards: {ece: 0.01}}",
            "ab: unknown multiclass metric 'ece' (known: accuracy, brier, log_loss, macro_f1)",
        ),
    ],
)
def test_a_job_that_would_destroy_or_confuse_its_own_data_is_refused(tmp_path, change, error):
    """Each run replaces its output partitions whole, and the predictions hold fixed columns: a job
    file that reads what it writes, or names a column twice, is refused before any run."""
    sections = dict(line.split(":", 1) for line in VALID.splitlines())
    for line in change.splitlines():
        section, value = line.split(":", 1)
        sections[section] = value
    path = write(tmp_path, "".join(f"{k}:{v}\n" for k, v in sections.items()))
    with pytest.raises(ConfigError) as e:
        load_job_file(path)
    assert str(e.value).startswith(f"{path}: {error}")


@pytest.mark.parametrize(
    ("model", "ab", "task", "primary"),
    [
        ("{name: m}", "{labeled_table: labeled, label: churned}", "classification", "roc_auc"),
        ("{name: m, task: regression}", "{labeled_table: labeled, label: spend}", "regression", "rmse"),
        # a file written before model.task: its comparison's task is the model's
        ("{name: m}", "{labeled_table: labeled, label: spend, task: regression}", "regression", "rmse"),
        (
            "{name: m, task: regression}",
            "{labeled_table: labeled, label: spend, primary_metric: mae}",
            "regression",
            "mae",
        ),
        (
            "{name: m, task: multiclass, classes: [0, 1, 2]}",
            "{labeled_table: l, label: plan}",
            "multiclass",
            "log_loss",
        ),
    ],
)
def test_the_task_is_written_once_for_the_model_and_its_comparison(tmp_path, model, ab, task, primary):
    text = VALID.replace("model: {name: churn-classifier, alias: champion}", f"model: {model}") + f"ab: {ab}\n"
    job = load_job_file(write(tmp_path, text))
    assert (job.model.task, job.ab.task, job.ab.primary_metric) == (task, task, primary)
    assert job.classifies == (task == "classification")
    assert job.predicts == (task != "regression")
    # YAML's numbers name classes by their text, as the prediction column holds them
    assert job.classes == (("0", "1", "2") if task == "multiclass" else ())


def test_a_fixed_version_beside_the_default_alias_is_fine(tmp_path):
    job = load_job_file(write(tmp_path, VALID.replace("alias: champion", "version: 3")))
    assert (job.model.alias, job.model.version) == ("champion", 3)


def test_validate_names_both_files_of_a_shared_output_table(home, tmp_path, capsys):
    from jobs.cli import main

    first = write(tmp_path, VALID, name="first")
    second = write(tmp_path, VALID, name="second")
    apart = write(tmp_path, VALID.replace("predictions/churn_test", "predictions/apart"), name="apart")
    assert main(["validate", str(first), str(second), str(apart)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == (
        f"invalid {first}: output.table: 'predictions/churn_test' is where this job writes its predictions, and "
        f"{second} writes its predictions there too: each run replaces the day's partition whole, so the two "
        "would overwrite each other; give each job a table of its own"
    )
    assert out[1].startswith(f"invalid {second}: output.table: 'predictions/churn_test' is where this job")
    assert out[2] == f"ok      {apart} → DAG lakecast__apart"
    assert out[3] == "1 valid, 2 invalid job file(s)"


def test_a_job_on_input_that_its_writer_would_never_start_is_named(home, tmp_path, capsys):
    """A job on ``schedule: on_input`` reads another's predictions, the two apart on
    ``airflow.partitioned_assets``: Airflow keeps partitioned and plain events apart, so its DAG
    would never run. The listening file is named, with the writer's; the writer is fine."""
    from jobs.cli import main

    partitioned = "airflow: {partitioned_assets: true}\n"
    writer = write(tmp_path, VALID + partitioned, name="writer")
    reader = VALID.replace('"0 2 * * *"', "on_input").replace("raw/customers", "predictions/churn_test")
    reader = reader.replace("predictions/churn_test}", "predictions/downstream}")  # a table of its own to write
    listener = write(tmp_path, reader, name="listener")
    assert main(["validate", str(writer), str(listener)]) == 1
    assert capsys.readouterr().out.splitlines() == [
        f"ok      {writer} → DAG lakecast__writer",
        f"invalid {listener}: schedule: on_input listens for plain Asset events of 'predictions/churn_test', and "
        f"{writer}, which writes it, publishes partitioned ones (airflow.partitioned_assets: true there): Airflow "
        "would never start this job; set airflow.partitioned_assets alike in both files",
        "1 valid, 1 invalid job file(s)",
    ]
    write(tmp_path, reader + partitioned, name="listener")
    assert main(["validate", str(writer), str(listener)]) == 0


def test_a_profile_cannot_move_lakecast_home(home, tmp_path, monkeypatch):
    conf = tmp_path / "conf"
    (conf / "profiles").mkdir(parents=True)
    local = (conf_dir() / "profiles" / "local.yaml").read_text()
    (conf / "profiles" / "local.yaml").write_text(local + "home: /srv/elsewhere\n")
    monkeypatch.setenv("LAKECAST_CONF", str(conf))
    with pytest.raises(
        ConfigError, match=r"home: the file says '/srv/elsewhere', but lakecast's home is LAKECAST_HOME"
    ):
        load_settings()
    (conf / "profiles" / "local.yaml").write_text(local + "home: ${LAKECAST_HOME}\n")
    assert load_settings().home == home


def test_local_profile_lives_under_lakecast_home(home):
    settings = load_settings()
    assert settings.profile == "local"
    assert settings.lake_root == f"{home}/lake"
    assert settings.mlflow.tracking_uri == f"sqlite:///{home}/mlflow.db"
    assert settings.mlflow.artifact_root.startswith(str(home))


def test_lake_root_override(home, monkeypatch):
    monkeypatch.setenv("LAKECAST_LAKE_ROOT", "s3://bucket/prefix")
    assert load_settings().lake_root == "s3://bucket/prefix"
    monkeypatch.setenv("LAKECAST_LAKE_ROOT", "file:///data/lake")
    assert load_settings().lake_root == "/data/lake"


@pytest.mark.parametrize(
    ("root", "error"),
    [
        ("s3a://bucket/lake", "'s3a://bucket/lake' is Hadoop's name for S3; lakecast reaches S3 through s3fs, "
                              "which names it s3://: write 's3://bucket/lake'"),
        ("gs://bucket/lake", "'gs://bucket/lake': a lake is a local folder or s3://bucket/prefix, and gs:// is "
                             "neither"),
        ("s3:///lake", "'s3:///lake' names no bucket: write s3://bucket or s3://bucket/prefix"),
    ],
)  # fmt: skip
def test_a_lake_root_of_another_scheme_is_refused_not_taken_for_a_folder(home, monkeypatch, root, error):
    """Before, any URL but s3:// was taken for a relative folder: ``s3a://bucket/lake`` (as Spark
    writes it) put the predictions in ``./s3a:/bucket/lake`` on the local disk."""
    monkeypatch.setenv("LAKECAST_LAKE_ROOT", root)
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert str(raised.value).endswith(f"lake_root: {error}"), raised.value


@pytest.mark.parametrize(
    ("uri", "why"),
    [
        ("localhost:5000", "it reads as a folder of MLflow's file store, which MLflow 3 no longer writes"),
        ("http//localhost:5000", "it reads as a folder of MLflow's file store"),
        ("sqllite:///tmp/mlflow.db", "MLflow has no store of scheme sqllite://"),
    ],
)
def test_a_tracking_uri_mlflow_cannot_use_is_named_before_any_command_runs(home, monkeypatch, uri, why):
    """Before, a mistyped ``MLFLOW_TRACKING_URI`` ended the first command that used MLflow in its
    traceback (an unsupported registry store, or the file store MLflow 3 refuses)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert f"mlflow.tracking_uri: {uri!r}: {why}" in str(raised.value), raised.value
    assert str(raised.value).endswith("write http://host:5000 for a tracking server, or sqlite:///path/mlflow.db "
                                      "(also postgresql://, mysql://, mssql://, databricks)")  # fmt: skip
    for fine in ("http://127.0.0.1:5000", "postgresql+psycopg2://u@db/mlflow", "databricks"):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", fine)
        assert load_settings().mlflow.tracking_uri == fine


def test_unknown_profile(home):
    with pytest.raises(ConfigError, match=r"profile 'prod-eu' not found \(known profiles: .*local"):
        load_settings("prod-eu")


def test_a_conf_folder_without_profiles_says_what_it_lacks(home, tmp_path, monkeypatch):
    """A mistyped LAKECAST_CONF, or a site's folder that copied jobs/ alone: named as such, not as
    a profile missing from an empty list."""
    monkeypatch.setenv("LAKECAST_CONF", str(tmp_path / "typo"))
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert str(raised.value).startswith(f"{tmp_path / 'typo'}: no such folder (LAKECAST_CONF names it)")
    (tmp_path / "site" / "jobs").mkdir(parents=True)
    monkeypatch.setenv("LAKECAST_CONF", str(tmp_path / "site"))
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert str(raised.value).startswith(f"{tmp_path / 'site'}: no profiles/*.yaml in it (LAKECAST_CONF names it)")
    assert str(raised.value).endswith(f"copy {PROJECT_ROOT / 'conf' / 'profiles'} there")


@pytest.mark.parametrize("bad", ["2026-13-01", "yesterday", "2026-11-21/../x", "20261121", ""])
def test_dates_are_calendar_dates(bad):
    with pytest.raises(ConfigError, match="YYYY-MM-DD"):
        parse_date(bad)
    assert parse_date("2026-11-21") == dt.date(2026, 11, 21)


def test_validate_command(home, tmp_path, capsys):
    from jobs.cli import main

    assert main(["validate"]) == 0
    out = capsys.readouterr().out
    jobs = conf_dir() / "jobs"
    assert "lakecast__churn" in out
    assert out.endswith(f"{len(list(jobs.glob('*.yaml')))} valid, 0 invalid job file(s) in {jobs}\n")
    assert main(["validate", "churn"]) == 0  # a job's name, as the other commands take it
    assert (
        capsys.readouterr().out
        == f"ok      {jobs / 'churn.yaml'} → DAG lakecast__churn\n1 valid, 0 invalid job file(s)\n"
    )
    bad = write(tmp_path, VALID + "surprise: 1\nlater: 2\n")
    assert main(["validate", str(bad)]) == 1
    # each problem on a line of its own, each marked; the count names no folder for files named
    assert capsys.readouterr().out.splitlines() == [
        f"invalid {bad}: surprise: unknown key (check the spelling against the documented keys)",
        f"invalid {bad}: later: unknown key (check the spelling against the documented keys)",
        "0 valid, 1 invalid job file(s)",
    ]


@pytest.mark.parametrize(
    ("logging_yaml", "says"),
    [
        ("version: 1\n\troot: {level: INFO}\n", ", line 2, column 1: not valid YAML: a tab"),
        ("root: {level: INFO}\n", ": not a logging configuration (Python's logging.config schema): dictionary doesn't"),
        (
            "version: 1\nhandlers:\n  console: {class: logging.NoSuchHandler}\n",
            ": not a logging configuration (Python's logging.config schema): Unable to configure handler 'console'",
        ),
    ],
)
def test_a_broken_logging_yaml_is_named_before_any_command_runs(home, tmp_path, logging_yaml, says):
    """conf/logging.yaml is the file a user edits to hear more: a slip there is a sentence naming
    it, exit 2, not a traceback from logging.config."""
    import shutil
    import subprocess

    from tests.stack import BIN

    conf = tmp_path / "conf"
    shutil.copytree(conf_dir(), conf)
    (conf / "logging.yaml").write_text(logging_yaml)
    env = {**os.environ, "LAKECAST_CONF": str(conf)}
    proc = subprocess.run([str(BIN / "lakecast"), "validate"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"lakecast: {conf / 'logging.yaml'}{says}"), proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_the_readme_documents_every_key_of_a_job_file():
    """Every key the job file accepts has its line in the README's table of keys, or (for
    ``validation.*`` and ``ab.*``, which the table sends to sections of their own) is named in
    the README: a key added without its documentation fails here."""
    import re
    import typing

    from pydantic import BaseModel

    from jobs.config import JobConfig
    from jobs.settings import PROJECT_ROOT

    readme = (PROJECT_ROOT / "README.md").read_text()
    table = readme.split("\n## Adding a job", 1)[1].split("\n## ", 1)[0]
    documented = set()
    for line in table.splitlines():
        if line.startswith("| `"):
            names = re.findall(r"`([^`]+)`", line.split("|")[1])
            section = names[0].rsplit(".", 1)[0] + "." if "." in names[0] else ""
            documented |= {names[0], *(section + name for name in names[1:])}
    missing = []
    for name, field in JobConfig.model_fields.items():
        if name == "name":  # the file's own name, not a key in it
            continue
        models = [t for t in (field.annotation, *typing.get_args(field.annotation)) if isinstance(t, type)]
        spec = next((t for t in models if issubclass(t, BaseModel)), None)
        if spec is None:
            missing += [name] if name not in documented else []
        elif f"{name}.*" in documented:
            # named in those sections' text, or in their annotated YAML
            named = [key for key in spec.model_fields if f"`{key}" in readme or f"{key}:" in readme]
            missing += [f"{name}.{key}" for key in spec.model_fields if key not in named]
        else:
            missing += [f"{name}.{key}" for key in spec.model_fields if f"{name}.{key}" not in documented]
    assert documented and not missing, f"job-file keys the README does not document: {missing}"


def test_a_relative_lake_root_is_the_same_folder_for_airflow_tasks(home, tmp_path, monkeypatch):
    """`LAKECAST_LAKE_ROOT=lake lakecast airflow standalone`: the tasks run in other folders, and
    the manifests' lineage names the lake; both get the absolute path of where it was typed."""
    from jobs.airflow_env import airflow_env
    from jobs.settings import load_settings

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LAKECAST_LAKE_ROOT", "lake")
    settings = load_settings()
    assert settings.lake_root == str(tmp_path / "lake")
    assert airflow_env(settings)["LAKECAST_LAKE_ROOT"] == str(tmp_path / "lake")
    monkeypatch.setenv("LAKECAST_LAKE_ROOT", "s3://bucket/lake")
    assert load_settings().lake_root == "s3://bucket/lake"


def test_the_embedded_defaults_airflow_runs_a_few_tasks_at_once(home, monkeypatch):
    """Each predict task on the embedded default starts a Ray of its own that takes every core:
    Airflow's 32 tasks at once would be 32 Rays on one machine. Airflow itself, asked as a user
    asks it, says 4; a value the user sets wins, and a production profile's Airflow is its own."""
    from jobs.airflow_env import airflow_env, run_airflow
    from jobs.settings import load_settings

    monkeypatch.delenv("AIRFLOW__CORE__PARALLELISM", raising=False)
    settings = load_settings()
    said = run_airflow(settings, ["config", "get-value", "core", "parallelism"], capture=True)
    assert said.returncode == 0, said.stderr[-2000:]
    assert said.stdout.strip() == "4"
    monkeypatch.setenv("AIRFLOW__CORE__PARALLELISM", "8")
    assert airflow_env(settings)["AIRFLOW__CORE__PARALLELISM"] == "8"
    monkeypatch.delenv("AIRFLOW__CORE__PARALLELISM")
    assert "AIRFLOW__CORE__PARALLELISM" not in airflow_env(settings.model_copy(update={"profile": "production"}))
