"""Platform settings: where the lake, MLflow and Ray are, for one profile of ``conf/profiles/``.

``local`` (the default) is the embedded mode: everything lives under ``LAKECAST_HOME``.
Select another with ``LAKECAST_PROFILE``. Values can come from the environment through
``${VAR:-default}`` in the YAML; credentials always do.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, field_validator

from jobs.yamlconf import ConfigError, Frozen, load_model

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# the project's own configuration folder, which LAKECAST_CONF replaces
PROJECT_CONF = (PROJECT_ROOT / "conf").resolve()
DEFAULT_PROFILE = "local"
# the stores MLflow 3 tracks to and keeps a model registry in (its file store aside)
MLFLOW_STORES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "databricks", "databricks-uc", "uc")
# On a cluster, the submitting machine's LAKECAST_CONF: the job files came from there (jobs.submit)
CONF_SHOWN = "LAKECAST_CONF_SHOWN"


def conf_dir() -> Path:
    """The configuration folder: ``LAKECAST_CONF``, else the project's ``conf/``."""
    return Path(os.environ.get("LAKECAST_CONF") or PROJECT_CONF).resolve()


def _not_a_conf_folder(conf: Path) -> str:
    """Why a configuration folder has no profile: a ``LAKECAST_CONF`` mistyped, or a site's own
    folder that copied ``jobs/`` but not ``profiles/``."""
    where = "LAKECAST_CONF names it" if os.environ.get("LAKECAST_CONF") else "lakecast's own conf/"
    if not conf.is_dir():
        return f"no such folder ({where}); it should hold profiles/ and jobs/, as lakecast's conf/ does"
    return (
        f"no profiles/*.yaml in it ({where}); a configuration folder holds profiles/ beside jobs/: "
        f"copy {PROJECT_ROOT / 'conf' / 'profiles'} there"
    )


def lakecast_home() -> Path:
    """All local state (lake, MLflow store, Airflow home); deleting it resets everything."""
    return Path(os.environ.get("LAKECAST_HOME") or ".lakecast").resolve()


class MlflowSettings(Frozen):
    tracking_uri: str = Field(description="MLflow tracking store: sqlite:///... or http://host:5000")
    registry_uri: str | None = Field(None, description="model registry; defaults to the tracking URI")
    artifact_root: str | None = Field(
        None, description="where new experiments keep their artifacts; empty: the tracking server's default"
    )
    ui_url: str | None = Field(None, description="MLflow UI for links (default: the tracking server)")

    @field_validator("tracking_uri", "registry_uri")
    @classmethod
    def _a_store(cls, v: str | None) -> str | None:
        """A URI MLflow tracks to. Any other failed in MLflow's first call with its traceback, and
        one without a scheme (``localhost:5000``, ``http//host``) reads as a folder of MLflow's file
        store, which MLflow 3 refuses."""
        if v is None:
            return v
        scheme = v.partition("://")[0] if "://" in v else v.partition(":")[0]
        if scheme.split("+", 1)[0] in MLFLOW_STORES:  # postgresql+psycopg2://
            return v
        if scheme == "file" or "://" not in v:
            why = "it reads as a folder of MLflow's file store, which MLflow 3 no longer writes"
        else:
            why = f"MLflow has no store of scheme {scheme}://"
        raise ValueError(
            f"{v!r}: {why}; write http://host:5000 for a tracking server, or sqlite:///path/mlflow.db "
            "(also postgresql://, mysql://, mssql://, databricks)"
        )


class RaySettings(Frozen):
    address: str | None = Field(
        None, description="empty: start a local Ray; http://head:8265: submit through the Jobs API; host:port: join"
    )
    dashboard_url: str | None = Field(None, description="Ray dashboard for links (default: the Jobs API address)")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of the local Ray (default: all cores)")


class Settings(Frozen):
    profile: str
    home: Path
    lake_root: str = Field(description="a local directory or s3://bucket/prefix")
    mlflow: MlflowSettings
    ray: RaySettings = RaySettings()

    @field_validator("lake_root")
    @classmethod
    def _a_lake(cls, v: str) -> str:
        """A local folder, made absolute once, here (the manifests' lineage names it, and the
        Airflow tasks, which run elsewhere, must find the same folder), or an S3 bucket.

        A URL of another scheme would otherwise be taken for a relative folder: Spark's
        ``s3a://bucket/lake`` wrote the predictions to a local folder named ``s3a:``."""
        scheme, sep, rest = v.partition("://")
        if not sep:
            return str(Path(v).expanduser().resolve())
        if scheme == "file":  # file:///data/lake
            return str(Path(rest).resolve())
        if scheme in ("s3a", "s3n"):
            raise ValueError(
                f"{v!r} is Hadoop's name for S3; lakecast reaches S3 through s3fs, which names it s3://: "
                f"write 's3://{rest}'"
            )
        if scheme != "s3":
            raise ValueError(f"{v!r}: a lake is a local folder or s3://bucket/prefix, and {scheme}:// is neither")
        if not rest.split("/", 1)[0]:
            raise ValueError(f"{v!r} names no bucket: write s3://bucket or s3://bucket/prefix")
        return v

    @property
    def airflow_home(self) -> Path:
        return self.home / "airflow"


def load_settings(profile: str | None = None) -> Settings:
    """Load ``conf/profiles/<profile>.yaml`` with ``LAKECAST_HOME`` resolved to an absolute path."""
    profile = profile or os.environ.get("LAKECAST_PROFILE") or DEFAULT_PROFILE
    conf = conf_dir()
    path = conf / "profiles" / f"{profile}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (conf / "profiles").glob("*.yaml"))
        if known:
            raise ConfigError(f"{path}: profile {profile!r} not found (known profiles: {', '.join(known)})")
        raise ConfigError(f"{conf}: {_not_a_conf_folder(conf)}")
    home = lakecast_home()
    env = {**os.environ, "LAKECAST_HOME": str(home)}
    given = {
        "profile": (profile, f"a profile is named after its file ({profile!r}): drop the key"),
        "home": (home, f"lakecast's home is LAKECAST_HOME ({str(home)!r}): drop the key, and set LAKECAST_HOME"),
    }
    return load_model(Settings, path, env=env, given=given)
