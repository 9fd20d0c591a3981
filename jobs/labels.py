"""Ray's label selectors, as a job file's ``compute.label_selector`` gives them: which nodes the
job's actors may run on, by the labels Ray gives each node (``ray.io/accelerator-type: H100``,
``ray.io/market-type: spot``, ``ray.io/node-group``, …) and those ``ray start --labels`` adds.

Ray checks a selector's syntax only when an actor is created, after the run's checks, its MLflow
run and its Ray have started; and it waits for a node that matches, where none will come on a
private Ray. So lakecast checks the syntax when it loads the job file, and matches the selector
against the nodes before any actor starts (:func:`jobs.ray_runtime.actor_gpus`). The syntax is
Ray 2.60's (``ray._private.label_utils``), written out here because the job files are loaded
where Ray is not imported (Airflow's parsing of the dags folder).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# a label's name or value, as Kubernetes and Ray spell them
_NAME = r"[a-zA-Z0-9](?:[a-zA-Z0-9_.-]{0,61}[a-zA-Z0-9])?"
_PREFIX = re.compile(rf"{_NAME}(?:\.{_NAME})*")
_SELECTOR = re.compile(rf"(?P<not>!)?(?:in\((?P<values>{_NAME}(?:, ?{_NAME})*)\)|(?P<value>{_NAME}))")
# the label Ray gives a node with GPUs: their model, as ray.util.accelerators names it (H100, A10G)
ACCELERATOR = "ray.io/accelerator-type"


@dataclass(frozen=True)
class Requirement:
    """One key of a selector: the node's label ``key`` is one of ``values``, or (``negated``) is
    none of them. A node without the label matches only a negated requirement, as Ray has it."""

    key: str
    values: frozenset[str]
    negated: bool

    def matches(self, labels: Mapping[str, str]) -> bool:
        return (labels.get(self.key) in self.values) != self.negated


def syntax_error(key: str, selector: str) -> str | None:
    """Why Ray would refuse ``key: selector``, in a sentence; None where it takes it."""
    prefix, _, name = key.rpartition("/")
    if "/" in key and (len(prefix) > 253 or not _PREFIX.fullmatch(prefix)):
        return f"the label key {key!r} has a prefix that is not a series of DNS labels separated by dots"
    if not re.fullmatch(_NAME, name):
        return (
            f"the label key {key!r} is not a label's name: at most 63 letters, digits, '-', '_' or '.', "
            "beginning and ending with a letter or digit"
        )
    if not _SELECTOR.fullmatch(selector):
        return (
            f"{selector!r} is not a label selector: a value (spot), a value not to match (!spot), any of "
            "several (in(A100, H100)) or none of them (!in(A100, H100)), each value at most 63 letters, "
            "digits, '-', '_' or '.', beginning and ending with a letter or digit"
        )
    return None


def for_ray(selector: str) -> str:
    """``selector`` as Ray's scheduler reads it: ``in(A100,H100)`` for ``in(A100, H100)``.

    Ray 2.60's check takes a space after the comma, and its scheduler then keeps the space in the
    value (src/ray/common/scheduling/label_selector.cc splits at the commas and trims nothing): it
    waits for a node labelled " H100", which never comes, while an H100 node stands idle."""
    return selector.replace(", ", ",")


def requirements(selector: Mapping[str, str]) -> list[Requirement]:
    """``selector``'s keys as requirements, each checked by :func:`syntax_error` first."""
    out = []
    for key, text in selector.items():
        m = _SELECTOR.fullmatch(text)
        if m is None:
            raise ValueError(syntax_error(key, text))
        values = m["values"].split(",") if m["values"] else [m["value"]]
        out.append(Requirement(key, frozenset(v.strip() for v in values), negated=bool(m["not"])))
    return out


def matches(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """Whether a node with ``labels`` may hold an actor with ``selector``."""
    return all(r.matches(labels) for r in requirements(selector))


def placed_by(selectors: Mapping[str, Mapping[str, str]], nodes: list[Mapping[str, str]]) -> dict[str, int]:
    """How many of ``nodes`` (their labels) each of ``selectors`` placed, tried in their order as
    Ray tries a selector and then its fallbacks; a node none matches (its labels changed since)
    under "none"."""
    placed: dict[str, int] = {}
    for labels in nodes:
        which = next((key for key, selector in selectors.items() if matches(selector, labels)), "none")
        placed[which] = placed.get(which, 0) + 1
    return placed


def asks_for_accelerator(selector: Mapping[str, str]) -> bool:
    """Whether ``selector`` picks nodes by their GPUs' model: then its actors want a GPU."""
    return any(r.key == ACCELERATOR and not r.negated for r in requirements(selector))


def shown(selector: Mapping[str, str]) -> str:
    """``selector`` as the job file writes it."""
    return ", ".join(f"{key}: {value}" for key, value in selector.items())


def held(keys: Iterable[str], nodes: list[Mapping[str, str]]) -> str:
    """What ``nodes`` (their labels) hold under each of ``keys``: its values, or none."""
    return "; ".join(f"{key}: {', '.join(sorted({n[key] for n in nodes if key in n})) or 'none'}" for key in keys)
