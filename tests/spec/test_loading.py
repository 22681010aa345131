"""load_job: every bad job and bad override gives one exact, actionable line per problem."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from setpipe.errors import SpecError
from setpipe.spec import JobSpec, dump_job, job_from_dict, load_job

# Line numbers in the expected messages below refer to this text.
BASE = """\
name: jets
data:
  train: data/train
  validation: data/validation
  elements:
    layout: parallel
    columns: [pt, eta, phi]
  context: [jet_pt]
  label: label
model:
  task: classify
  num_classes: 2
  encoder:
    kind: umbc
    dim: 64
    heads: 4
train:
  epochs: 3
"""
HINT = "(see schemas/job.schema.json)"


def edit(*pairs: tuple[str, str]) -> str:
    """BASE with each (old, new) replaced once; old must be there."""
    text = BASE
    for old, new in pairs:
        assert old in text, old
        text = text.replace(old, new, 1)
    return text


FEATURES = """\
  features:
    - name: log_pt
      source: pt
      ops: [{{op: log}}]
    - name: {second}
      source: {source}
"""

# (id, file text, overrides, expected error text)
BAD: list[tuple[str, str, list[str], str]] = [
    (
        "wrong-type",
        edit(("epochs: 3", "epochs: three")),
        [],
        'jobs/x.yaml:18: train.epochs: got "three"; expected an integer',
    ),
    (
        "unknown-key-top-level",
        BASE + "trian: {}\n",
        [],
        'jobs/x.yaml:19: trian: unknown key; did you mean "train"?',
    ),
    (
        "unknown-key-nested",
        edit(("  num_classes: 2\n", "  num_classes: 2\n  haed: {}\n")),
        [],
        'jobs/x.yaml:13: model.haed: unknown key; did you mean "head"?',
    ),
    (
        "unknown-key-in-variant",
        edit(("    dim: 64", "    slotz: 8\n    dim: 64")),
        [],
        'jobs/x.yaml:15: model.encoder.slotz: unknown key; did you mean "slots"?',
    ),
    (
        "unknown-key-no-near-miss",
        edit(("  epochs: 3", "  epochs: 3\n  zzz: 1")),
        [],
        "jobs/x.yaml:19: train.zzz: unknown key; expected one of epochs, optimizer, "
        "lr_schedule, grad_clip, grad_element_budget, chunk_size, workers, use_gpu, amp, "
        "resources_per_worker, max_failures, checkpoint, early_stopping, seed, freeze, "
        "lr_multipliers, ema, accumulate",
    ),
    (
        "bad-discriminator",
        edit(("kind: umbc", "kind: settransformer")),
        [],
        'jobs/x.yaml:14: model.encoder.kind: "settransformer" is not one of deepsets, umbc, '
        'set_transformer; did you mean "set_transformer"?',
    ),
    (
        "missing-discriminator",
        edit(("    kind: umbc\n", "")),
        [],
        "jobs/x.yaml:13: model.encoder.kind: required field is missing; expected one of "
        "deepsets, umbc, set_transformer",
    ),
    (
        "missing-required",
        edit(("  elements:\n    layout: parallel\n    columns: [pt, eta, phi]\n", "")),
        [],
        f"jobs/x.yaml: data.elements: required field is missing; add it {HINT}",
    ),
    (
        "bad-literal",
        edit(("  label: label", "  label: label\n  on_bad_row: drop")),
        [],
        'jobs/x.yaml:10: data.on_bad_row: "drop" is not one of error, skip',
    ),
    (
        "bad-name-pattern",
        edit(("name: jets", "name: My Jets")),
        [],
        'jobs/x.yaml:1: name: got "My Jets"; expected a string matching ^[a-z0-9][a-z0-9_-]{0,62}$',
    ),
    (
        "number-where-text-expected",
        edit(("  label: label", "  label: 2024")),
        [],
        'jobs/x.yaml:9: data.label: got 2024; expected a string; quote it: "2024"',
    ),
    (
        "string-or-list",
        edit(("train: data/train", "train: 5")),
        [],
        "jobs/x.yaml:3: data.train: got 5; expected a string or a list of strings",
    ),
    (
        "bad-cron",
        BASE + 'schedule:\n  cron: "0 3 * *"\n',
        [],
        'jobs/x.yaml:20: schedule.cron: got "0 3 * *"; expected five fields '
        "'minute hour day-of-month month day-of-week', e.g. '0 3 * * *'",
    ),
    (
        "bad-timezone",
        BASE + 'schedule:\n  cron: "0 3 * * *"\n  timezone: Mars/Olympus\n',
        [],
        'jobs/x.yaml:21: schedule.timezone: got "Mars/Olympus"; not an IANA timezone; '
        "e.g. UTC or Europe/Zurich",
    ),
    (
        "rank-without-element-label",
        edit(("task: classify\n  num_classes: 2", "task: rank"), ("  label: label\n", "")),
        [],
        "jobs/x.yaml: task rank needs data.element_label (a per-element relevance list column)",
    ),
    (
        "rank-with-set-label",
        edit(
            ("task: classify\n  num_classes: 2", "task: rank"),
            ("  label: label", "  label: label\n  element_label: rel"),
        ),
        [],
        "jobs/x.yaml: task rank scores elements: remove data.label (a set-level label) and "
        "keep data.element_label",
    ),
    (
        "classify-without-num-classes",
        edit(("  num_classes: 2\n", "")),
        [],
        "jobs/x.yaml:10: model: task classify needs num_classes (2 or more)",
    ),
    (
        "negative-element-budget",
        edit(("  label: label", "  label: label\n  batch:\n    element_budget: -5")),
        [],
        "jobs/x.yaml:11: data.batch.element_budget: got -5; expected a number greater than 0",
    ),
    (
        "grad-budget-over-chunk",
        edit(("  epochs: 3", "  epochs: 3\n  chunk_size: 256\n  grad_element_budget: 512")),
        [],
        "jobs/x.yaml:17: train: grad_element_budget 512 exceeds chunk_size 256; the gradient "
        "subset must fit in one chunk",
    ),
    (
        "dim-not-multiple-of-heads",
        edit(("dim: 64", "dim: 66")),
        [],
        "jobs/x.yaml:13: model.encoder: dim 66 is not a multiple of heads 4; each head gets "
        "dim / heads channels, so use dim 68 or a heads that divides 66",
    ),
    (
        "grad-budget-with-set-transformer",
        edit(("kind: umbc", "kind: set_transformer"), ("  epochs: 3", "  grad_element_budget: 64")),
        [],
        "jobs/x.yaml: train.grad_element_budget needs a mini-batch consistent encoder "
        "(deepsets, umbc); set_transformer sees whole sets",
    ),
    (
        "split-fractions-sum-to-one",
        edit(("  validation: data/validation", "  split: {key: id, validation: 0.5, test: 0.5}")),
        [],
        "jobs/x.yaml:4: data.split: validation + test = 1 leaves nothing to train on; keep "
        "the sum below 1",
    ),
    (
        "feature-source-not-element-feature",
        edit(("  label: label\n", "  label: label\n" + FEATURES.format(second="m", source="mass"))),
        [],
        "jobs/x.yaml:2: data: feature 'm' has source 'mass', which is not an element feature; "
        "expected one of ['eta', 'phi', 'pt']",
    ),
    (
        "duplicate-feature-names",
        edit(
            (
                "  label: label\n",
                "  label: label\n" + FEATURES.format(second="log_pt", source="eta"),
            )
        ),
        [],
        "jobs/x.yaml:2: data: feature names must be unique; repeated: log_pt",
    ),
    (
        "bad-transform-op",
        edit(
            (
                "  label: label\n",
                "  label: label\n  features:\n    - {name: a, source: pt, ops: [{op: lg}]}\n",
            )
        ),
        [],
        'jobs/x.yaml:11: data.features[0].ops[0].op: "lg" is not one of log, log1p, clip, '
        'standardize, center, fraction, abs, isin; did you mean "log"?',
    ),
    (
        "malformed-yaml",
        edit(("columns: [pt, eta, phi]", "columns: [pt, eta, phi")),
        [],
        "jobs/x.yaml:8:10: invalid YAML: expected ',' or ']', but got ':' (while parsing a "
        "flow sequence at line 7)",
    ),
    (
        "duplicate-yaml-key",
        BASE + "name: again\n",
        [],
        "jobs/x.yaml:19: name: duplicate key (first at line 1); keep one of them",
    ),
    (
        "python-tag",
        edit(("name: jets", "name: !!python/object/apply:os.system ['touch pwned']")),
        [],
        "jobs/x.yaml:1:7: the tag !!python/object/apply:os.system is not allowed; job files "
        "are plain YAML (mappings, lists, strings, numbers), so remove the tag",
    ),
    (
        "alias-bomb",
        BASE
        + "cluster:\n  runtime_env:\n    a: &a [x, x, x, x, x, x, x, x, x, x]\n"
        + "".join(
            f"    {c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
            for p, c in zip("abcde", "bcdef", strict=True)
        ),
        [],
        "jobs/x.yaml: the document expands to more than 100000 values through YAML aliases "
        "(*name); a job is small, so write it out without them",
    ),
    (
        "non-mapping-top-level",
        "- name: jets\n- name: other\n",
        [],
        "jobs/x.yaml: the top level is a list; expected a mapping of job keys with at least "
        "name, data and model",
    ),
    (
        "empty-file",
        "# nothing yet\n",
        [],
        "jobs/x.yaml: the file is empty; expected a mapping of job keys with at least name, "
        "data and model",
    ),
    (
        "unset-env-var",
        edit(("train: data/train", "train: ${SETPIPE_TEST_ROOT}/train")),
        [],
        "jobs/x.yaml:3: data.train: environment variable SETPIPE_TEST_ROOT is not set; "
        "export SETPIPE_TEST_ROOT=... or write ${SETPIPE_TEST_ROOT:-default}",
    ),
    (
        "malformed-env-reference",
        edit(("train: data/train", "train: ${1ROOT}/train")),
        [],
        "jobs/x.yaml:3: data.train: '${1ROOT}/train' has a malformed reference '${1ROOT}'; "
        "write ${VAR} or ${VAR:-default}, or $${ for a literal ${",
    ),
    (
        "several-problems-one-line-each",
        edit(("epochs: 3", "epochs: 0"), ("kind: umbc", "kind: umbcc")),
        [],
        'jobs/x.yaml:14: model.encoder.kind: "umbcc" is not one of deepsets, umbc, '
        'set_transformer; did you mean "umbc"?\n'
        "jobs/x.yaml:18: train.epochs: got 0; expected a number greater than 0",
    ),
    (
        "override-unknown-key",
        BASE,
        ["train.epochz=3"],
        'override "train.epochz=3": train.epochz: unknown key; did you mean "epochs"?',
    ),
    (
        "override-unknown-key-in-variant",
        BASE,
        ["model.encoder.slotz=8"],
        'override "model.encoder.slotz=8": model.encoder.slotz: unknown key; did you mean "slots"?',
    ),
    (
        "override-bad-type",
        BASE,
        ["train.epochs=many"],
        'override "train.epochs=many": train.epochs: got "many"; expected an integer',
    ),
    (
        "override-name-where-list-expected",
        BASE,
        ["data.context=jet_pt"],
        'override "data.context=jet_pt": data.context: got "jet_pt"; expected a list of '
        "strings, e.g. [jet_pt]",
    ),
    (
        "override-without-equals",
        BASE,
        ["train.epochs"],
        'override "train.epochs": expected KEY=VALUE, e.g. train.epochs=3',
    ),
    (
        "override-into-a-value",
        BASE,
        ["train.epochs.max=3"],
        'override "train.epochs.max=3": train.epochs.max: unknown key; train.epochs takes a '
        "value, not keys",
    ),
    (
        "override-list-item-out-of-range",
        BASE,
        ["data.features.2.name=x"],
        'override "data.features.2.name=x": data.features[2]: no such item; data.features '
        "has 0 item(s); set the whole list instead, e.g. data.features=[...]",
    ),
    (
        "override-malformed-value",
        BASE,
        ["data.context=[jet_pt"],
        "override \"data.context=[jet_pt\": data.context: cannot read '[jet_pt' as a YAML value "
        "(expected ',' or ']', but got '<stream end>'); quote it, e.g. data.context='\"[jet_pt\"'",
    ),
    (
        "tracking-metric-not-reported-by-task",
        BASE + "tracking:\n  metric: val_acuracy\n",
        [],
        'jobs/x.yaml:20: tracking.metric: got "val_acuracy"; expected one of val_loss, '
        "val_accuracy, val_auc, val_rej30, val_rej50 (the validation metrics of task classify); "
        'did you mean "val_accuracy"?',
    ),
    (
        "early-stopping-metric-not-reported-by-task",
        edit(("  epochs: 3", "  epochs: 3\n  early_stopping: {metric: val_rmse}")),
        [],
        'jobs/x.yaml:19: train.early_stopping.metric: got "val_rmse"; expected one of val_loss, '
        "val_accuracy, val_auc, val_rej30, val_rej50 (the validation metrics of task classify)",
    ),
    (
        "override-metric-typo",
        BASE,
        ["tracking.metric=auc", "train.early_stopping.metric=val_los"],
        'override "train.early_stopping.metric=val_los": train.early_stopping.metric: got '
        '"val_los"; expected one of val_loss, val_accuracy, val_auc, val_rej30, val_rej50 (the '
        'validation metrics of task classify); did you mean "val_loss"?\n'
        'override "tracking.metric=auc": tracking.metric: got "auc"; expected one of val_loss, '
        "val_accuracy, val_auc, val_rej30, val_rej50 (the validation metrics of task classify); "
        'did you mean "val_auc"?',
    ),
    (
        "lr-infinite",
        edit(("  epochs: 3\n", "  epochs: 3\n  optimizer: {lr: .inf}\n")),
        [],
        "jobs/x.yaml:19: train.optimizer.lr: got inf; expected a finite number",
    ),
    (
        "nan-override",
        BASE,
        ["train.optimizer.weight_decay=.nan"],
        'override "train.optimizer.weight_decay=.nan": train.optimizer.weight_decay: got nan; '
        "expected a finite number",
    ),
    (
        "recursive-alias",
        edit(("name: jets", "name: &r [*r]")),
        [],
        "jobs/x.yaml:1: name[0]: a YAML alias (*name) refers to a node that contains it, "
        "which never ends; write the value out",
    ),
    (
        "nesting-20000-deep",
        BASE + "x: " + "[" * 20_000 + "]" * 20_000 + "\n",
        [],
        "jobs/x.yaml:19: the document nests more than 64 levels deep; a job is a few levels "
        "deep, so flatten it",
    ),
    (
        "integer-of-5000-digits",
        edit(("epochs: 3", "epochs: " + "9" * 5000)),
        [],
        "jobs/x.yaml:18: a number of 5000 characters; numbers in a job have at most 100, so "
        "check this value",
    ),
    (
        "recursive-alias-in-override",
        BASE,
        ["train.epochs=&a [*a]"],
        'override "train.epochs=&a [*a]": train.epochs: [0]: a YAML alias (*name) refers to a '
        "node that contains it, which never ends; write the value out",
    ),
    (
        "yes-is-not-a-number",
        edit(("epochs: 3", "epochs: yes")),
        [],
        "jobs/x.yaml:18: train.epochs: got true; expected an integer",
    ),
    (
        "on-is-not-a-number-in-an-override",
        BASE,
        ["train.grad_clip=on"],
        'override "train.grad_clip=on": train.grad_clip: got true; expected a number',
    ),
    (
        "duplicate-columns",
        edit(("columns: [pt, eta, phi]", "columns: [pt, eta, pt, phi]")),
        [],
        'jobs/x.yaml:7: data.elements.columns: got ["pt", "eta", "pt", "phi"]; each column may '
        "appear once; duplicated: pt (2 times); remove the repeats",
    ),
    (
        "unset-variable-in-override",
        BASE,
        ["train.epochs=${SETPIPE_TEST_ROOT}"],
        'override "train.epochs=${SETPIPE_TEST_ROOT}": train.epochs: environment variable '
        "SETPIPE_TEST_ROOT is not set; export SETPIPE_TEST_ROOT=... or write "
        "${SETPIPE_TEST_ROOT:-default}",
    ),
    (
        "overrides-all-reported",
        BASE,
        ["train.epochz=3", "modle.task=rank"],
        'override "train.epochz=3": train.epochz: unknown key; did you mean "epochs"?\n'
        'override "modle.task=rank": modle: unknown key; did you mean "model"?',
    ),
]


@pytest.fixture()
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SETPIPE_TEST_ROOT", raising=False)
    (tmp_path / "jobs").mkdir()
    return tmp_path


def write(text: str) -> str:
    Path("jobs/x.yaml").write_text(text, encoding="utf-8")
    return "jobs/x.yaml"


@pytest.mark.parametrize(
    ("text", "overrides", "expected"), [c[1:] for c in BAD], ids=[c[0] for c in BAD]
)
def test_bad_job_message(in_tmp: Path, text: str, overrides: list[str], expected: str) -> None:
    with pytest.raises(SpecError) as caught:
        load_job(write(text), overrides)
    assert str(caught.value) == expected


def test_bad_job_cases_cover_the_brief() -> None:
    assert len(BAD) >= 24
    assert len({c[0] for c in BAD}) == len(BAD)


def test_python_tag_runs_nothing(in_tmp: Path) -> None:
    with pytest.raises(SpecError):
        load_job(
            write(edit(("name: jets", "name: !!python/object/apply:os.system ['touch pwned']")))
        )
    assert not (in_tmp / "pwned").exists()


def test_missing_file(in_tmp: Path) -> None:
    with pytest.raises(
        SpecError, match=r"^jobs/none\.yaml: no such file; give the path of a job YAML$"
    ):
        load_job("jobs/none.yaml")


# ---------------------------------------------------------------------- good paths


def test_interpolation_reads_the_environment(in_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SETPIPE_TEST_ROOT", "/srv/sets")
    text = edit(
        ("train: data/train", "train: ${SETPIPE_TEST_ROOT}/train"),
        ("validation: data/validation", "validation: ${SETPIPE_TEST_MISSING:-/tmp/v}/validation"),
        ("label: label", "label: $${not_a_var}"),
    )
    job = load_job(write(text))
    assert job.data.train == "/srv/sets/train"
    assert job.data.validation == "/tmp/v/validation"
    assert job.data.label == "${not_a_var}"


def test_env_default_used_when_unset_or_empty(
    in_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = edit(("train: data/train", "train: ${SETPIPE_TEST_ROOT:-.setpipe/data}/train"))
    assert load_job(write(text)).data.train == ".setpipe/data/train"
    monkeypatch.setenv("SETPIPE_TEST_ROOT", "")  # like the shell's ":-", empty takes the default
    assert load_job(write(text)).data.train == ".setpipe/data/train"


def test_interpolated_number_is_typed_by_the_model(
    in_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SETPIPE_TEST_ROOT", "7")
    job = load_job(write(edit(("epochs: 3", "epochs: ${SETPIPE_TEST_ROOT}"))))
    assert job.train.epochs == 7


def test_override_values_are_interpolated(in_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SETPIPE_TEST_ROOT", "5")
    job = load_job(write(BASE), ["train.epochs=${SETPIPE_TEST_ROOT}", "data.train=$${HOME}/x"])
    assert job.train.epochs == 5
    assert job.data.train == "${HOME}/x"


def test_a_file_that_never_ends_or_is_huge_is_refused_quickly(in_tmp: Path) -> None:
    with pytest.raises(SpecError) as caught:
        load_job("/dev/zero")
    assert str(caught.value) == (
        "/dev/zero: larger than 256 KiB; a job file is a few KB of YAML (data goes in Parquet "
        "files the job names), so check the path"
    )
    # 120,001 list items in 240 KB: refused while parsing, not after minutes of it.
    with pytest.raises(SpecError) as caught:
        load_job(write(BASE + "x: [" + "1," * 120_000 + "1]\n"))
    assert str(caught.value) == (
        "jobs/x.yaml:19: more than 20000 values; a job names its data and settings, not the "
        "data itself, so check what this file is"
    )


def test_overrides_are_typed(in_tmp: Path) -> None:
    job = load_job(
        write(BASE),
        [
            "train.epochs=5",
            "train.optimizer.lr=3e-4",
            "train.grad_clip=null",
            "data.context=[jet_pt, jet_mass]",
            "train.resources_per_worker={CPU: 2}",
            "schedule.cron=*/15 * * * *",
        ],
    )
    assert job.train.epochs == 5
    assert job.train.optimizer.lr == 3e-4
    assert job.train.grad_clip is None
    assert job.data.context == ["jet_pt", "jet_mass"]
    assert job.train.resources_per_worker == {"CPU": 2.0}
    # "*/15 ..." is not valid YAML (a "*" starts an alias); the text is taken as it is.
    assert job.schedule is not None and job.schedule.cron == "*/15 * * * *"
    assert job.schedule.timezone == "UTC"


def test_override_switching_encoder_drops_foreign_keys(in_tmp: Path) -> None:
    # dim and heads belong to umbc; set_transformer has both, deepsets neither.
    job = load_job(write(BASE), ["model.encoder.kind=set_transformer"])
    assert (job.model.encoder.kind, job.model.encoder.dim, job.model.encoder.heads) == (
        "set_transformer",
        64,
        4,
    )
    job = load_job(write(BASE), ["model.encoder.kind=deepsets", "model.encoder.phi=[16]"])
    assert job.model.encoder.kind == "deepsets"
    assert job.model.encoder.phi == [16]


def test_override_list_item_by_index(in_tmp: Path) -> None:
    text = edit(
        ("  label: label\n", "  label: label\n" + FEATURES.format(second="e", source="eta"))
    )
    job = load_job(write(text), ["data.features.1.source=phi", "data.features[0].ops[0].eps=0.5"])
    assert job.data.features is not None
    assert [(f.name, f.source) for f in job.data.features] == [("log_pt", "pt"), ("e", "phi")]
    assert job.data.features[0].ops[0].eps == 0.5  # type: ignore[union-attr]


def test_dict_errors_name_the_source() -> None:
    data = yaml.safe_load(BASE)
    data["train"]["epochs"] = -1
    with pytest.raises(SpecError) as caught:
        job_from_dict(data, source="runs/abc/job.yaml")
    assert str(caught.value) == (
        "runs/abc/job.yaml: train.epochs: got -1; expected a number greater than 0"
    )


@pytest.mark.parametrize("name", ["quickstart", "qg_jets", "digits", "passages"])
def test_dump_round_trips(name: str, tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[2]
    job = load_job(repo / "jobs" / f"{name}.yaml")
    dumped = tmp_path / "resolved.yaml"
    dumped.write_text(dump_job(job), encoding="utf-8")
    again = load_job(dumped)
    assert again == job
    assert dump_job(again) == dump_job(job)


def test_dump_writes_defaults_and_escapes_dollars(in_tmp: Path) -> None:
    job = load_job(write(edit(("label: label", "label: $${x}"))))
    text = dump_job(job)
    assert "label: $${x}\n" in text
    assert "  grad_clip: 1.0\n" in text  # defaults are written out: the file pins the run
    assert "    columns: [pt, eta, phi]\n" in text
    again = load_job(write(text))
    assert again == job
    assert isinstance(again, JobSpec)
