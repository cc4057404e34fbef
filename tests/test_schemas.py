"""The checked-in JSON Schemas: current with the models, and agreeing with them on real specs."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from jsonschema import Draft202012Validator
from ruamel.yaml import YAML

from mlp.cli.schemas import schemas as schemas_command
from mlp.specs.models import KINDS
from mlp.specs.schema import exported

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[1]
SCHEMAS = ROOT / "schemas"
SPEC_ROOTS = [ROOT, ROOT / "tests" / "broken" / "base"]
REGENERATE = "mlp schemas export --out schemas"


def spec_documents() -> list[tuple[str, int, dict[str, Any]]]:
    yaml = YAML(typ="safe", pure=False)
    found = []
    for root in SPEC_ROOTS:
        for top in ("specs", "environments"):
            for path in sorted((root / top).rglob("*.y*ml")):
                for index, doc in enumerate(yaml.load_all(path.read_text(encoding="utf-8"))):
                    if doc is not None:
                        found.append((path.relative_to(ROOT).as_posix(), index, doc))
    return found


def validator(kind: str) -> Draft202012Validator:
    schema = json.loads((SCHEMAS / f"{kind.lower()}.json").read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def test_checked_in_schemas_are_current() -> None:
    expected = exported()
    on_disk = {p.name: p.read_text(encoding="utf-8") for p in SCHEMAS.glob("*.json")}
    stale = sorted(name for name, text in expected.items() if on_disk.get(name) != text)
    extra = sorted(set(on_disk) - set(expected))
    assert not stale and not extra, (
        f"schemas/ is out of date with mlp/specs/models.py (stale: {stale}, no longer a kind: {extra}); "
        f"regenerate with `{REGENERATE}` and commit the result"
    )


def test_export_check_agrees(tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(schemas_command, ["export", "--out", str(SCHEMAS), "--check"]).exit_code == 0
    result = runner.invoke(schemas_command, ["export", "--out", str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == sorted(f"{k.lower()}.json" for k in KINDS)
    (tmp_path / "s" / "model.json").write_text("{}\n")
    stale = runner.invoke(schemas_command, ["export", "--out", str(tmp_path / "s"), "--check"])
    assert stale.exit_code == 1
    assert "model.json" in stale.output and "mlp schemas export" in stale.output


def test_every_example_spec_validates_against_its_schema() -> None:
    docs = spec_documents()
    kinds = {doc["kind"] for _, _, doc in docs}
    assert kinds == set(KINDS), f"examples should cover every kind; missing {set(KINDS) - kinds}"
    for path, index, doc in docs:
        errors = [e.message for e in validator(doc["kind"]).iter_errors(doc)]
        assert not errors, f"{path} document {index}: {errors}"


def test_schema_rejects_a_typo_field_and_a_wrong_type() -> None:
    model = next(doc for _, _, doc in spec_documents() if doc["kind"] == "Model")
    typo = copy.deepcopy(model)
    typo["spec"]["framwork"] = typo["spec"].pop("framework")
    messages = [e.message for e in validator("Model").iter_errors(typo)]
    assert any("framwork" in m and "Additional properties" in m for m in messages), messages
    assert any("'framework' is a required property" in m for m in messages), messages

    nested = copy.deepcopy(model)
    nested["spec"]["versions"][0]["digestt"] = nested["spec"]["versions"][0]["digest"]
    assert any("digestt" in e.message for e in validator("Model").iter_errors(nested))

    wrong = copy.deepcopy(model)
    wrong["spec"]["versions"][0]["version"] = "one"
    assert any("is not of type 'integer'" in e.message for e in validator("Model").iter_errors(wrong))

    env = next(doc for _, _, doc in spec_documents() if doc["kind"] == "Environment")
    env = copy.deepcopy(env)
    env["spec"]["target"]["kind"] = "nomad"
    assert list(validator("Environment").iter_errors(env))


def test_editor_schema_comments_point_at_the_right_schema() -> None:
    pattern = re.compile(
        r"^# yaml-language-server: \$schema=(\S+)\n(?:#.*\n)*apiVersion: .*\nkind: (\w+)", re.MULTILINE
    )
    seen = 0
    for top in ("specs", "environments"):
        for path in (ROOT / top).rglob("*.y*ml"):
            for target, kind in pattern.findall(path.read_text(encoding="utf-8")):
                resolved = (path.parent / target).resolve()
                assert resolved == (SCHEMAS / f"{kind.lower()}.json").resolve(), f"{path}: {target} for {kind}"
                seen += 1
    assert seen >= 5


@pytest.mark.parametrize(
    ("kind", "path", "value", "valid"),
    [
        ("Environment", ("spec", "deployments", "iris", "version"), "1", False),  # a string is not an int
        ("Environment", ("spec", "deployments", "iris", "batching"), "yes", False),  # nor a boolean
        ("Environment", ("spec", "approvals", "required"), 1.5, False),
        ("Model", ("spec", "versions", 0, "metrics", "accuracy"), "0.9", False),
        ("Model", ("spec", "versions", 0, "metrics", "accuracy"), 1, True),  # an int is a fine float
        ("Model", ("spec", "framework"), "sklearn", True),
        ("Model", ("spec", "framework"), "scikit", False),
    ],
)
def test_mlp_and_the_schema_agree(kind: str, path: tuple[str | int, ...], value: Any, valid: bool) -> None:
    """A spec mlp accepts is one the exported schema accepts, and the other way round (no lax coercion)."""
    from mlp.specs.models import KINDS as models

    base = Path(__file__).resolve().parent / "broken" / "base"
    yaml = YAML(typ="safe", pure=False)
    docs = [d for p in sorted(base.rglob("*.yaml")) for d in yaml.load_all(p.read_text(encoding="utf-8"))]
    doc = copy.deepcopy(
        next(d for d in docs if d["kind"] == kind and (kind != "Environment" or d["metadata"]["name"] == "prod"))
    )
    node = doc
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    schema_ok = not list(validator(kind).iter_errors(doc))
    try:
        models[kind].model_validate(doc)
        mlp_ok = True
    except ValueError:
        mlp_ok = False
    assert (mlp_ok, schema_ok) == (valid, valid)
