"""The MLflow model registry: resolve an alias to a version, register versions, move aliases.

A job never scores "the champion": it resolves the alias to a version number once, at the start
of a run, and stamps that number on every prediction.
"""

from __future__ import annotations

import logging
import platform
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # mlflow takes 2 s to import: jobs import it where they use it, off Ray's start
    from mlflow import MlflowClient
    from packaging.requirements import Requirement

log = logging.getLogger(__name__)


class RegistryError(LookupError):
    """A registered model, alias or version does not exist."""


class ModelLoadError(RuntimeError):
    """A model version's files are there, but this Python environment cannot load them: a package
    or a module of the trainer's own that the model's pickle refers to is missing, or differs.
    Running again gives the same error: the environment, or the logged model, must change."""


# MLflow's error codes for a name the registry does not hold (an unknown alias is the second)
NOT_THERE = frozenset({"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"})


@dataclass(frozen=True)
class ModelRef:
    """One resolved model version."""

    name: str
    version: int
    run_id: str | None
    alias: str | None = None

    @property
    def uri(self) -> str:
        """The version's URI, never the alias: a rerun scores with the same version."""
        return f"models:/{self.name}/{self.version}"


def resolve(client: MlflowClient, name: str, *, alias: str | None = None, version: int | None = None) -> ModelRef:
    """Find the version that ``alias`` (or the fixed ``version``) names right now.

    Raises:
        RegistryError: naming the model, the alias or version asked for, and what exists.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(name)
    except MlflowException as e:
        if e.error_code not in NOT_THERE:  # the server out of reach or refusing: not the user's typo
            raise
        names = sorted(m.name for m in client.search_registered_models(max_results=21))
        known = ", ".join(names[:20]) + (", …" if len(names) > 20 else "") if names else "none"
        raise RegistryError(
            f"registered model {name!r} not found in the MLflow registry at {mlflow.get_registry_uri()}"
            f" (registered models: {known})"
        ) from e
    try:
        if version is not None:
            mv = client.get_model_version(name, str(version))
        elif alias is not None:
            mv = client.get_model_version_by_alias(name, alias)
        else:
            raise RegistryError(f"say which version of {name!r} to use: an alias or a version number")
    except MlflowException as e:
        if e.error_code not in NOT_THERE:
            raise
        asked = f"alias {alias!r}" if version is None else f"version {version}"
        aliases = ", ".join(f"{a}→v{v}" for a, v in sorted(model.aliases.items())) or "none"
        raise RegistryError(f"registered model {name!r} has no {asked} (aliases: {aliases})") from e
    return ModelRef(name=name, version=int(mv.version), run_id=mv.run_id, alias=alias)


def register_pyfunc(
    *,
    name: str,
    python_model: object | Path,
    artifact_dir: Path,
    signature: object,
    input_example: object,
    tags: dict[str, str] | None = None,
) -> ModelRef:
    """Log a pyfunc model in the active run and register it as a new version of ``name``:
    ``python_model`` a file that calls ``mlflow.models.set_model`` (models from code), or an
    object MLflow pickles."""
    import mlflow
    from mlflow import MlflowClient

    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=python_model,
        artifacts={"model": str(artifact_dir)},
        signature=signature,
        input_example=input_example,
        registered_model_name=name,
        # listed, not inferred: inference loads the model in a subprocess and takes seconds
        pip_requirements=["torch==2.13.0", "pyarrow", "pandas", "numpy", "mlflow"],
    )
    client = MlflowClient()
    version = int(info.registered_model_version)
    for key, value in (tags or {}).items():
        client.set_model_version_tag(name, str(version), key, value)
    return ModelRef(name=name, version=version, run_id=info.run_id)


def set_alias(client: MlflowClient, ref: ModelRef, alias: str) -> None:
    client.set_registered_model_alias(ref.name, alias, str(ref.version))
    log.info("alias %s@%s → version %d", ref.name, alias, ref.version)


@contextmanager
def model_files(uri: str) -> Iterator[None]:
    """Name a model version whose files are gone from the artifact store, where MLflow's
    traceback says ``No such artifact: 'MLmodel'``: the registry still lists the version, but a
    lifecycle rule on its bucket, a deleted folder or a store that moved took what it points at.
    Only registering the model again, or an alias on another version, fixes that.

    Raises:
        RegistryError: naming the version and where its files should be.
    """
    try:
        yield
    except Exception as e:  # boto's ClientError for S3 is neither an MlflowException nor an OSError
        if not _missing(e):
            raise
        raise RegistryError(
            f"{uri}: its files are not in the artifact store{_where(uri)} ({' '.join(str(e).split())}); "
            "log and register the model again, or point the alias at a version whose files are there"
        ) from e


def _missing(e: BaseException) -> bool:
    """A file not found, in the words of MLflow's local and proxied stores or of S3 (boto's 404,
    which MLflow's download of a model's files quotes in an ``INTERNAL_ERROR``)."""
    if isinstance(e, FileNotFoundError) or getattr(e, "error_code", None) == "RESOURCE_DOES_NOT_EXIST":
        return True
    if "An error occurred (404)" in str(e) or "NoSuchKey" in str(e):
        return True
    response = getattr(e, "response", None)  # botocore's: a dict; requests' is a Response
    code = response.get("Error", {}).get("Code") if isinstance(response, dict) else None
    return code in {"404", "NoSuchKey", "NotFound"}


def _where(uri: str) -> str:
    """`` at <location>`` of a ``models:/name/version`` URI's files, or nothing where the
    registry cannot say."""
    from mlflow import MlflowClient

    try:
        name, version = uri.removeprefix("models:/").rsplit("/", 1)
        client = MlflowClient()
        mv = client.get_model_version(name, version)
        source = mv.source or ""  # MLflow 3: models:/<logged model id>, whose record has the location
        model_id = mv.model_id or (source.removeprefix("models:/") if source.startswith("models:/m-") else None)
        location = client.get_logged_model(model_id).artifact_location if model_id else source
        return f" at {location}" if location else ""
    except Exception:  # a better message only: the error stays the missing files
        return ""


def load_pyfunc(uri: str, *, where: str = "in this Python environment") -> object:
    """``mlflow.pyfunc.load_model(uri)``, with a cheaper check of the model's requirements.

    MLflow's own check maps every installed distribution to the modules it provides before it
    compares: 1.1 s, on the critical path of every job's start. The model pins few packages
    (its ``requirements.txt``), and looking up just those by name tells the same mismatches.

    Raises:
        ModelLoadError: the files are there but cannot be loaded ``where`` this runs, naming
            the error and the requirements this environment does not meet, which usually
            explain it; MLflow's traceback says neither which model nor what to install.
    """
    import warnings

    import mlflow

    with model_files(uri):
        # from S3, a version whose files are gone downloads as an empty folder, and the load says so
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
        problems = environment_mismatches(local)
        for problem in problems:
            log.warning("%s was logged with %s", uri, problem)
        try:
            with warnings.catch_warnings():  # pyfunc nags about type hints that our Arrow path does not use
                warnings.simplefilter("ignore", UserWarning)
                return mlflow.pyfunc.load_model(str(local), suppress_warnings=True)
        except (OSError, MemoryError):  # a file missing (model_files names it) or the machine's
            raise
        except Exception as e:  # the model's own code, unpickled: anything it raises is the model's
            raise ModelLoadError(_unloadable(uri, e, problems, where, local)) from e


def _unloadable(uri: str, e: Exception, problems: list[str], where: str, model_folder: Path) -> str:
    """The sentence for a model that cannot be loaded: what failed, what differs, what to do."""
    from packaging.utils import canonicalize_name

    error = " ".join(f"{type(e).__name__}: {e}".split())
    logged = f"; it was logged with {' and with '.join(problems)}" if problems else ""
    advice = "install what the model needs where the jobs run (lakecast's virtualenv; on a Ray cluster, its image)"
    if isinstance(e, ModuleNotFoundError) and e.name:
        top = e.name.split(".")[0]
        if canonicalize_name(top) not in _declared(model_folder / "requirements.txt"):
            advice += (
                f", or, if {top!r} is a module of the trainer's own, log the model again with it "
                "(mlflow.pyfunc.log_model's code_paths=[...]) so that its code travels with the model"
            )
    return f"{uri} cannot be loaded {where} ({error}){logged}: {advice}"


def _declared(requirements: Path) -> set[str]:
    """The distributions a model's ``requirements.txt`` names, by their canonical names."""
    from packaging.utils import canonicalize_name

    return {canonicalize_name(req.name) for req in _requirements(requirements)}


def environment_mismatches(model_folder: Path) -> list[str]:
    """What a model was logged with that this environment lacks, each as a phrase: its pinned
    requirements (``requirements.txt``) and its Python's minor version (``python_env.yaml``),
    which a pickled model may need."""
    problems = requirement_mismatches(model_folder / "requirements.txt")
    python = _logged_python(model_folder / "python_env.yaml")
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if python and ".".join(python.split(".")[:2]) != here:
        problems.append(f"Python {python}, where this environment runs Python {platform.python_version()}")
    return problems


def _logged_python(python_env: Path) -> str | None:
    """The Python version MLflow recorded (``python: 3.11.7``), read as text: YAML would read a
    ``3.10`` as the number 3.1."""
    try:
        text = python_env.read_text()
    except OSError:
        return None
    found = re.search(r"^python:\s*[\"']?(\d+\.\d+[\w.]*)", text, re.MULTILINE)
    return found.group(1) if found else None


def requirement_mismatches(requirements: Path) -> list[str]:
    """Each pinned requirement of a model that this environment does not satisfy, as a phrase."""
    from importlib.metadata import PackageNotFoundError, version

    problems = []
    for req in _requirements(requirements):
        try:
            have = version(req.name)
        except PackageNotFoundError:
            problems.append(f"{req}, which is not installed here")
            continue
        if req.specifier and not req.specifier.contains(have, prereleases=True):
            problems.append(f"{req}, but this environment has {req.name} {have}")
    return problems


def _requirements(requirements: Path) -> list[Requirement]:
    """The requirements of a ``requirements.txt`` that apply to this Python, without options
    (``-r``, ``--index-url``) or lines pip would not read either."""
    from packaging.requirements import InvalidRequirement, Requirement

    if not requirements.is_file():
        return []
    found = []
    for line in requirements.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        if req.marker is None or req.marker.evaluate():
            found.append(req)
    return found
