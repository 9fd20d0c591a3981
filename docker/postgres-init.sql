-- Airflow's database is POSTGRES_DB; MLflow's tracking and registry get one of their own.
CREATE DATABASE mlflow OWNER lakecast;
