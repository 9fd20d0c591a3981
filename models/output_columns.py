"""The columns a predictions table holds beside the key and the score.

Kept apart from :mod:`models.predictor` (numpy, pyarrow) because a job file's validation names
them, and Airflow validates every job file each time it parses the dags folder.
"""

PREDICTION = "prediction"  # score >= threshold, as 0 or 1
# who scored the row: the model version, the variant (an alias, or "v<N>"), the MLflow run, when
LINEAGE_COLUMNS = ("model_name", "model_version", "variant", "scoring_run_id", "scored_at")
FIXED_COLUMNS = (PREDICTION, *LINEAGE_COLUMNS)
