"""Finding the MLflow store and a registered model in it: the one copy of each rule.

- the tracking URI: given, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<workdir>/mlflow.db``
  (a database because the model registry needs one: mlflow 3.17 refuses the plain file
  store), with artifacts beside the database;
- a registered model URI: ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``, parsed, and
  resolved to the version it names now, with errors that say what exists.

A leaf of ``setpipe.tracking``: it imports nothing else from tracking, and MLflow only inside
the functions that talk to a store, so the CLI can use it without paying for MLflow.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from setpipe.errors import RegistryError

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from setpipe.spec.models import JobSpec

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
DEFAULT_DB = "mlflow.db"
"""The default store's file in the work dir."""
REGISTERED_URI_FORMS = (
    "models:/NAME@ALIAS (e.g. models:/jets@champion) or models:/NAME/VERSION (e.g. models:/jets/3)"
)
"""How a registered model is named, as every error and help text says it."""

_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>[^/@]+))$")


# --------------------------------------------------------------------------- the store


def default_tracking_uri(workdir: str | Path) -> str:
    """``sqlite:///<workdir>/mlflow.db``, the work dir made absolute (``~`` expanded)."""
    return f"sqlite:///{(Path(workdir).expanduser().resolve() / DEFAULT_DB).as_posix()}"


def tracking_uri(given: str | None, workdir: str | Path) -> str:
    """``given``, else $MLFLOW_TRACKING_URI, else the work dir's sqlite store."""
    return given or os.environ.get(TRACKING_URI_ENV) or default_tracking_uri(workdir)


def tracking_uri_for(job: JobSpec) -> str:
    """The job's store: ``tracking.tracking_uri``, else $MLFLOW_TRACKING_URI, else sqlite in
    the work dir. Creates the work dir (the sqlite file goes there)."""
    Path(job.workdir).expanduser().resolve().mkdir(parents=True, exist_ok=True)
    return tracking_uri(job.tracking.tracking_uri, job.workdir)


def artifact_location(tracking_uri: str) -> str | None:
    """Artifacts beside a local sqlite store (mlflow's default is ./mlruns in the cwd)."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri.removeprefix("sqlite:///"))
        return (db.parent / "mlartifacts").resolve().as_uri()
    return None


# --------------------------------------------------------------------------- registered models


def not_a_registered_uri(model_uri: str) -> str:
    """The message for a model URI that names no registered model (prefix it with where)."""
    return f"{model_uri!r} is not a registered model URI; expected {REGISTERED_URI_FORMS}"


def parse_registry_uri(model_uri: str) -> tuple[str, str | None, str | None] | None:
    """``models:/NAME@ALIAS`` -> (NAME, ALIAS, None); ``models:/NAME/VERSION`` -> (NAME, None,
    VERSION); anything else (``models:/m-<id>``, runs:/, paths) -> None."""
    match = _URI.match(model_uri)
    if match is None:
        return None
    return match["name"], match["alias"], match["version"]


def _aliases_text(client: MlflowClient, name: str) -> str:
    model = client.get_registered_model(name)
    if not model.aliases:
        return "it has no aliases"
    pairs = ", ".join(f"@{a} -> {v}" for a, v in sorted(model.aliases.items()))
    return f"its aliases are {pairs}"


def _versions_text(client: MlflowClient, name: str) -> str:
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
    return f"its versions are {', '.join(map(str, versions))}" if versions else "it has no versions"


def resolve(model_uri: str, tracking_uri: str | None = None) -> tuple[str, str]:
    """(name, version) that ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` points at now.

    Raises RegistryError naming the URI, what exists, and the fix.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    parsed = parse_registry_uri(model_uri)
    if parsed is None:
        raise RegistryError(not_a_registered_uri(model_uri))
    name, alias, version = parsed
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    try:
        client.get_registered_model(name)
    except MlflowException:
        names = sorted(m.name for m in client.search_registered_models())
        known = f"registered models are {', '.join(names)}" if names else "no model is registered"
        raise RegistryError(
            f"{model_uri}: no registered model {name!r} at {client.tracking_uri}; {known}. "
            "Train the job first (setpipe run) or fix the name"
        ) from None
    if alias is not None:
        try:
            mv = client.get_model_version_by_alias(name, alias)
        except MlflowException:
            raise RegistryError(
                f"{model_uri}: model {name!r} has no alias @{alias}; "
                f"{_aliases_text(client, name)}. Use one of them or models:/{name}/VERSION"
            ) from None
        return name, str(mv.version)
    if not (version or "").isdigit():
        raise RegistryError(
            f"{model_uri}: version {version!r} is not a number; {_versions_text(client, name)}"
        )
    try:
        client.get_model_version(name, version)
    except MlflowException:
        raise RegistryError(
            f"{model_uri}: model {name!r} has no version {version}; {_versions_text(client, name)}"
        ) from None
    return name, str(version)


__all__ = [
    "REGISTERED_URI_FORMS",
    "artifact_location",
    "default_tracking_uri",
    "not_a_registered_uri",
    "parse_registry_uri",
    "resolve",
    "tracking_uri",
    "tracking_uri_for",
]
