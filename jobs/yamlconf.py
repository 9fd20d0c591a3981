"""Load YAML files into frozen pydantic models, with ``${VAR}`` interpolation and readable errors.

Both the platform profiles (``conf/profiles/*.yaml``) and the job files (``conf/jobs/*.yaml``) go
through here, so every configuration error reads the same way: the file, the key, the bad value.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

M = TypeVar("M", bound=BaseModel)

# ${NAME} or ${NAME:-default}; the default may not itself contain braces, so nested references
# such as ${A:-${B}/lake} resolve from the inside out over repeated passes.
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^${}]*))?\}")


class ConfigError(ValueError):
    """A configuration file is missing or wrong; the message names the file and the key."""


class Frozen(BaseModel):
    """Base for every settings model: immutable, and unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def interpolate(value: Any, *, env: Mapping[str, str], where: str) -> Any:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in every string of a parsed YAML document.

    Secrets never live in ``conf/``: a file names the variable, the environment supplies the value.
    """
    if isinstance(value, dict):
        return {k: interpolate(v, env=env, where=f"{where}.{k}" if where else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env=env, where=f"{where}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env and env[name] != "":
            return env[name]
        if default is not None:
            return default
        raise ConfigError(f"{where}: environment variable {name} is not set (write ${{{name}:-default}} for a default)")

    previous = None
    while previous != value:
        previous, value = value, _VAR.sub(substitute, value)
    return value


class _UniqueKeys(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key written twice in one mapping.

    YAML says keys are unique, but PyYAML keeps the last of two silently: a job file that sets
    ``batch_size`` in two places, or a key uncommented below its own example, would run with one of
    them ignored and nothing said."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *defaults`: keys written beside a merge override it, as YAML means
            key = self.construct_object(key_node, deep=True)
            try:
                seen = first.get(key)
            except TypeError:
                continue  # an unhashable key: the mapping's own construction names it
            if seen is not None:  # also on the same line: `{batch_size: 1, batch_size: 2}`
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is also at line {seen + 1}, and YAML keeps only one of them",
                    key_node.start_mark,
                )  # fmt: skip
            first[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


# A date written plainly (2026-11-01) stays text, for the key's own check to read: PyYAML would
# make it a date, and one that is not (2026-11-31) a bare "day is out of range for month".
_UniqueKeys.add_constructor("tag:yaml.org,2002:timestamp", yaml.SafeLoader.construct_yaml_str)


def read_yaml(path: Path) -> dict[str, Any]:
    """Parse one YAML file into a mapping, or raise a ConfigError that names the file."""
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeys)  # a SafeLoader: no Python objects
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}{_yaml_problem(e)}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level, got {type(data).__name__}")
    return data


def _yaml_problem(error: yaml.YAMLError) -> str:
    """``, line 5, column 1: not valid YAML: …``: PyYAML's own text names the file as
    ``"<unicode string>"`` and spreads over lines, where the user needs the line to edit."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None)
    if mark is None or problem is None:
        return f": not valid YAML: {error}"
    context = getattr(error, "context", None)
    if "'\\t'" in problem:
        said = "a tab, where YAML indents with spaces only"
    else:
        said = f"{problem} ({context})" if context else problem
    return f", line {mark.line + 1}, column {mark.column + 1}: not valid YAML: {said}"


def format_validation_error(path: Path | str, error: ValidationError) -> str:
    """One line per problem: ``file: key.sub: message (got 'value')``."""
    lines = []
    for problem in error.errors():
        # a validator's own ValueError is a sentence already, often quoting the text it refused
        sentence = problem["msg"].removeprefix("Value error, ")
        key = ".".join(str(p) for p in problem["loc"])
        if not key:  # a check across sections begins its sentence with the key it is about
            named = re.fullmatch(r"([a-z_]+(?:\.[a-z_]+)*): (.*)", sentence, re.S)
            key, sentence = (named.group(1), named.group(2)) if named else ("(top level)", sentence)
        if problem["type"] == "extra_forbidden":
            message = "unknown key (check the spelling against the documented keys)"
        elif problem["type"] == "missing":
            message = "required key is missing"
        else:
            message = sentence
            value = problem.get("input")
            quoted = problem["type"] == "value_error" and isinstance(value, str) and repr(value) in message
            if "input" in problem and not isinstance(value, dict | list) and not quoted:
                message += f" (got {value!r})"
        lines.append(f"{path}: {key}: {message}")
    return "\n".join(lines)


def load_model(
    model: type[M],
    path: Path,
    *,
    env: Mapping[str, str] | None = None,
    given: Mapping[str, tuple[Any, str]] | None = None,
) -> M:
    """Read ``path``, interpolate the environment, and validate it as ``model``.

    Args:
        model: the pydantic model the file must satisfy.
        path: the YAML file.
        env: variables for interpolation (default: ``os.environ``).
        given: values lakecast sets, not the file: ``{key: (value, why, as the end of a sentence
            that begins "but")}``. A file that sets such a key to another value is an error, not
            silently overridden: a ``name:`` in a job file that differs from the file's name
            would otherwise be ignored.

    Raises:
        ConfigError: naming the file and every bad key at once.
    """
    try:
        data = interpolate(read_yaml(path), env=os.environ if env is None else env, where="")
    except ConfigError as e:
        raise ConfigError(e if str(e).startswith((f"{path}: ", f"{path}, line ")) else f"{path}: {e}") from None
    given = given or {}
    clashes = [
        f"{path}: {key}: the file says {data[key]!r}, but {why}"
        for key, (value, why) in given.items()
        if key in data and str(data[key]) != str(value)
    ]
    if clashes:
        raise ConfigError("\n".join(clashes))
    try:
        return model.model_validate({**data, **{key: value for key, (value, _) in given.items()}})
    except ValidationError as e:
        raise ConfigError(format_validation_error(path, e)) from None
