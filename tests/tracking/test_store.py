"""setpipe.tracking.store: the tracking URI rule, registered-model URIs, alias resolution."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_job
from mlflow.tracking import MlflowClient

from setpipe.errors import RegistryError
from setpipe.tracking import store as tracking_store


def test_tracking_uri_given_then_environment_then_work_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    default = f"sqlite:///{tmp_path.resolve()}/.setpipe/mlflow.db"
    assert tracking_store.tracking_uri(None, ".setpipe") == default
    assert tracking_store.default_tracking_uri(".setpipe") == default
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert tracking_store.tracking_uri(None, ".setpipe") == "http://mlflow:5000"
    assert tracking_store.tracking_uri("sqlite:////data/m.db", ".setpipe") == "sqlite:////data/m.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")  # set but empty: the default again
    assert tracking_store.tracking_uri(None, ".setpipe") == default


def test_tracking_uri_for_a_job_creates_its_work_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    job = make_job(tmp_path / "new" / "work", "classify")
    assert not (tmp_path / "new" / "work").exists()
    uri = tracking_store.tracking_uri_for(job)
    assert uri == f"sqlite:///{(tmp_path / 'new' / 'work').resolve()}/mlflow.db"
    assert (tmp_path / "new" / "work").is_dir()
    explicit = make_job(tmp_path / "other", "classify", tracking_uri="http://mlflow:5000")
    assert tracking_store.tracking_uri_for(explicit) == "http://mlflow:5000"


def test_the_cli_and_a_job_agree_on_the_default_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`setpipe run` writes where `setpipe serve/predict --workdir` then look."""
    from setpipe.cli import build_parser
    from setpipe.commands._model_args import tracking_uri

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    argv = ["predict", "models:/m@champion", "--input", "x", "--output", "y", "--workdir", "work"]
    args = build_parser().parse_args(argv)
    assert tracking_uri(args) == tracking_store.tracking_uri_for(make_job(Path("work"), "classify"))


def test_artifacts_go_beside_a_sqlite_store(tmp_path: Path) -> None:
    location = tracking_store.artifact_location(f"sqlite:///{tmp_path}/mlflow.db")
    assert location == (tmp_path / "mlartifacts").as_uri()
    assert tracking_store.artifact_location("http://mlflow:5000") is None


@pytest.mark.parametrize(
    ("uri", "parsed"),
    [
        ("models:/jets@champion", ("jets", "champion", None)),
        ("models:/jets/3", ("jets", None, "3")),
        ("models:/jets/latest", ("jets", None, "latest")),
        ("models:/m-0123abcd", None),
        ("models:/jets@a/3", None),
        ("runs:/abc/model", None),
        ("/tmp/model", None),
        ("models:/", None),
    ],
)
def test_parse_registry_uri(uri: str, parsed: tuple | None) -> None:
    assert tracking_store.parse_registry_uri(uri) == parsed


def test_the_model_uri_wording_is_written_once() -> None:
    assert tracking_store.not_a_registered_uri("runs:/abc") == (
        "'runs:/abc' is not a registered model URI; expected models:/NAME@ALIAS "
        "(e.g. models:/jets@champion) or models:/NAME/VERSION (e.g. models:/jets/3)"
    )
    package = Path(tracking_store.__file__).parents[1]
    copies = [
        str(path.relative_to(package.parent))
        for path in package.rglob("*.py")
        if "(e.g. models:/" in path.read_text()
    ]
    assert copies == ["setpipe/tracking/store.py"]


def test_store_is_cheap_to_import() -> None:
    """The CLI builds its parser from it: neither MLflow nor torch may load with it."""
    code = (
        "import sys, setpipe.tracking.store, setpipe.commands._model_args; "
        "print(sorted(m for m in ('mlflow', 'torch', 'ray') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.fixture()
def registry(store: str, tmp_path: Path) -> str:
    """``jets`` with versions 1..3, @champion -> 2, @challenger -> 3; ``qg`` with none."""
    client = MlflowClient(store, registry_uri=store)
    source = tmp_path / "artifacts"
    source.mkdir()
    client.create_registered_model("jets")
    for _ in range(3):
        client.create_model_version("jets", source=str(source))
    client.set_registered_model_alias("jets", "champion", "2")
    client.set_registered_model_alias("jets", "challenger", "3")
    client.create_registered_model("qg")
    return store


def test_resolve_an_alias_and_a_version(registry: str) -> None:
    assert tracking_store.resolve("models:/jets@champion", registry) == ("jets", "2")
    assert tracking_store.resolve("models:/jets@challenger", registry) == ("jets", "3")
    assert tracking_store.resolve("models:/jets/1", registry) == ("jets", "1")


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        (
            "runs:/abc/model",
            "'runs:/abc/model' is not a registered model URI; expected models:/NAME@ALIAS (e.g. "
            "models:/jets@champion) or models:/NAME/VERSION (e.g. models:/jets/3)",
        ),
        (
            "models:/taus@champion",
            "models:/taus@champion: no registered model 'taus' at {store}; registered models "
            "are jets, qg. Train the job first (setpipe run) or fix the name",
        ),
        (
            "models:/jets@best",
            "models:/jets@best: model 'jets' has no alias @best; its aliases are "
            "@challenger -> 3, @champion -> 2. Use one of them or models:/jets/VERSION",
        ),
        (
            "models:/qg@champion",
            "models:/qg@champion: model 'qg' has no alias @champion; it has no aliases. "
            "Use one of them or models:/qg/VERSION",
        ),
        (
            "models:/jets/latest",
            "models:/jets/latest: version 'latest' is not a number; its versions are 1, 2, 3",
        ),
        (
            "models:/jets/7",
            "models:/jets/7: model 'jets' has no version 7; its versions are 1, 2, 3",
        ),
        ("models:/qg/1", "models:/qg/1: model 'qg' has no version 1; it has no versions"),
    ],
)
def test_resolve_errors_say_what_exists(registry: str, uri: str, message: str) -> None:
    with pytest.raises(RegistryError) as err:
        tracking_store.resolve(uri, registry)
    assert str(err.value) == message.format(store=registry)


def test_resolve_in_an_empty_store(store: str) -> None:
    with pytest.raises(RegistryError, match=re.escape("no model is registered. Train the job")):
        tracking_store.resolve("models:/jets@champion", store)
