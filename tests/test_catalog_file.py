"""Loading the item catalogue (事项目录) from YAML / JSON: `xhub catalog load|list`.

The demo file loads once the demo region's departments are registered; every bad file
names the path and the line:column of each problem, all of them at once, and loads
nothing, so the catalogue loaded before stays as it was.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hubkit import HubKit, MemberDef

from xhub.cli.main import main
from xhub.hub.catalog import store as catalog
from xhub.hub.catalog.file import CatalogFileError, Problem, read_catalog
from xhub.protocol.errors import NotFoundError

DEMO_FILE = Path(__file__).resolve().parent.parent / "catalog" / "demo-items.yaml"
LICENCE = "11100000000013338W001"
ID_CARD = "11100000000013338W002"
MARKET = MemberDef(
    "lw_market", "荔湾区市场监督管理局", "440103", ("department", "issuer"), "30000005", "approval"
)
HEALTH = MemberDef(
    "lw_health", "荔湾区卫生健康局", "440103", ("department", "issuer"), "30000006", "approval"
)

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture(autouse=True)
def _no_xhub_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("XHUB_") and name != "XHUB_PG_BIN":
            monkeypatch.delenv(name)


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Run:
    def invoke(*args: Any) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return invoke


def good_catalogue(department: str) -> str:
    return f"""\
items:
  - code: TEST-ITEM
    name: 测试事项
    departments: [{department}]
    time_limit_days: 5
    materials:
      - code: LICENCE
        name: 营业执照
        certificate_types: [{LICENCE}]
      - code: REP_ID
        name: 法定代表人身份证
        certificate_types: [{ID_CARD}]
        holder: legal_representative
      - code: PLAN
        name: 平面图
        material_types: [FLOOR_PLAN]
"""


def marked_line(text: str) -> int:
    """The 1-based line carrying the `#<` marker: where the problem must be reported."""
    return next(i for i, line in enumerate(text.splitlines(), start=1) if "#<" in line)


# -- the demo file ---------------------------------------------------------------------------


def test_demo_file_loads_and_lists(hub_kit: HubKit, run: Run) -> None:
    data_dir = hub_kit.config.data_dir
    code, _out, err = run("catalog", "load", DEMO_FILE, "--data-dir", data_dir)
    assert code == 2
    assert "荔湾区市场监督管理局" in err and "unknown department" in err

    market = hub_kit.add_member(MARKET).member_id
    health = hub_kit.add_member(HEALTH).member_id
    code, out, err = run("catalog", "load", DEMO_FILE, "--data-dir", data_dir)
    assert code == 0, err
    assert "loaded 3 items" in out

    with hub_kit.session() as session:
        food = catalog.get_item(session, "FOOD-BIZ-NEW")
        hygiene = catalog.get_item(session, "PUBLIC-HYGIENE")
    assert list(food.departments) == [market]
    assert food.time_limit_days == 10
    assert [m.code for m in food.materials] == [
        "BIZ_LICENCE",
        "LEGAL_REP_ID",
        "PREMISES_PROOF",
        "FOOD_SAFETY_RULES",
        "FLOOR_PLAN",
    ]
    premises = food.materials[2]
    assert list(premises.certificate_types) == ["11100000000013338W003"]
    assert list(premises.material_types) == ["LEASE_CONTRACT"]
    assert food.materials[1].holder == 1  # legal representative
    assert list(hygiene.departments) == [health]
    assert hygiene.time_limit_days == 20
    assert [m.code for m in hygiene.materials][-1] == "HYGIENE_REPORT"

    # The platform sees the loaded item through the hub (查询事项).
    with hub_kit.client("platform") as platform:
        assert platform.get_item("PUBLIC-HYGIENE").item == hygiene

    code, out, _err = run("catalog", "list", "--data-dir", data_dir)
    assert code == 0
    assert "FOOD-BIZ-NEW  食品经营许可(新办)  10 working days" in out
    assert "荔湾区卫生健康局" in out and "3 item(s)" in out


def test_department_by_member_id(hub_kit: HubKit, run: Run, tmp_path: Path) -> None:
    path = tmp_path / "items.yaml"
    path.write_text(good_catalogue(hub_kit.member_id("department")), "utf-8")
    code, out, err = run("catalog", "load", path, "--data-dir", hub_kit.config.data_dir)
    assert code == 0, err
    assert "loaded 1 items" in out
    with hub_kit.session() as session:
        item = catalog.get_item(session, "TEST-ITEM")
    assert list(item.departments) == [hub_kit.member_id("department")]


# -- bad files -------------------------------------------------------------------------------

# (id, file text with {dept}/{issuer} placeholders and a `#<` marker, path, message fragment)
BAD_FILES: list[tuple[str, str, str, str]] = [
    (
        "unknown-department-id",
        """\
items:
  - code: A
    name: 事项
    departments:
      - CN.440103.NOSUCHMEMBER  #<
    time_limit_days: 5
    materials:
      - {code: M, name: 材料, material_types: [X]}
""",
        "items[0].departments[0]",
        "unknown department",
    ),
    (
        "unknown-department-name",
        """\
items:
  - code: A
    name: 事项
    departments:
      - name: 荔湾区不存在局  #<
    time_limit_days: 5
    materials:
      - {code: M, name: 材料, material_types: [X]}
""",
        "items[0].departments[0].name",
        "no active department named",
    ),
    (
        "member-without-department-role",
        """\
items:
  - code: A
    name: 事项
    departments: [{issuer}]  #<
    time_limit_days: 5
    materials:
      - {code: M, name: 材料, material_types: [X]}
""",
        "items[0].departments[0]",
        "is not an active department",
    ),
    (
        "malformed-certificate-type-length",
        """\
items:
  - code: A
    name: 事项
    departments: [{dept}]
    time_limit_days: 5
    materials:
      - code: M
        name: 材料
        certificate_types:
          - 11100000000013338W001
          - 11100000000013338W01  #<
""",
        "items[0].materials[0].certificate_types[1]",
        "malformed certificate type code",
    ),
    (
        "malformed-certificate-type-charset",
        """\
items:
  - code: A
    name: 事项
    departments: [{dept}]
    time_limit_days: 5
    materials:
      - code: M
        name: 材料
        certificate_types: [11100000000013338I001]  #<
""",
        "items[0].materials[0].certificate_types[0]",
        "malformed certificate type code",
    ),
    (
        "duplicate-item-code",
        """\
items:
  - code: A
    name: 事项一
    departments: [{dept}]
    time_limit_days: 5
    materials: [{code: M, name: 材料, material_types: [X]}]
  - code: A  #<
    name: 事项二
    departments: [{dept}]
    time_limit_days: 5
    materials: [{code: M, name: 材料, material_types: [X]}]
""",
        "items[1].code",
        "duplicate item code 'A' (first at items[0])",
    ),
    (
        "duplicate-material-code",
        """\
items:
  - code: A
    name: 事项
    departments: [{dept}]
    time_limit_days: 5
    materials:
      - {code: M, name: 材料, material_types: [X]}
      - {code: M, name: 材料二, material_types: [Y]}  #<
""",
        "items[0].materials[1].code",
        "duplicate material code",
    ),
    (
        "material-with-no-way-to-satisfy-it",
        """\
items:
  - code: A
    name: 事项
    departments: [{dept}]
    time_limit_days: 5
    materials:
      - {code: M, name: 材料, material_types: [X]}
      - code: N  #<
        name: 无从满足
        certificate_types: []
""",
        "items[0].materials[1]",
        "no way to satisfy",
    ),
    (
        "missing-field",
        """\
items:
  - code: A  #<
    departments: [{dept}]
    time_limit_days: 5
    materials: [{code: M, name: 材料, material_types: [X]}]
""",
        "items[0].name",
        "required field is missing",
    ),
    (
        "wrong-type-time-limit",
        """\
items:
  - code: A
    name: 事项
    departments: [{dept}]
    time_limit_days: ten  #<
    materials: [{code: M, name: 材料, material_types: [X]}]
""",
        "items[0].time_limit_days",
        "must be an integer, got a string",
    ),
    (
        "time-limit-not-positive",
        """\
items:
  - code: A
    name: 事项
    departments: [{dept}]
    time_limit_days: 0  #<
    materials: [{code: M, name: 材料, material_types: [X]}]
""",
        "items[0].time_limit_days",
        "must be 1..3650",
    ),
    (
        "wrong-type-departments",
        """\
items:
  - code: A
    name: 事项
    departments: {dept}  #<
    time_limit_days: 5
    materials: [{code: M, name: 材料, material_types: [X]}]
""",
        "items[0].departments",
        "must be a list, got a string",
    ),
    (
        "wrong-type-name",
        """\
items:
  - code: A
    name: [一, 二]  #<
    departments: [{dept}]
    time_limit_days: 5
    materials: [{code: M, name: 材料, material_types: [X]}]
""",
        "items[0].name",
        "must be a non-empty string, got a list",
    ),
    (
        "misspelt-key",
        """\
items:
  - code: A
    name: 事项
    departments: [{dept}]
    time_limit_days: 5
    materials:
      - code: M
        name: 材料
        certificate_type: [11100000000013338W001]  #<
""",
        "items[0].materials[0].certificate_type",
        "unknown key",
    ),
    (
        "bad-holder",
        """\
items:
  - code: A
    name: 事项
    departments: [{dept}]
    time_limit_days: 5
    materials:
      - code: M
        name: 材料
        certificate_types: [11100000000013338W002]
        holder: spouse  #<
""",
        "items[0].materials[0].holder",
        "must be applicant or legal_representative",
    ),
    (
        "no-items",
        """\
item:  #<
  - code: A
""",
        "item",
        "unknown key",
    ),
    (
        "yaml-syntax",
        """\
items:
  - code: A
    name: 事项
    departments: [{dept}
    time_limit_days: 5  #<
""",
        "",
        "not valid YAML",
    ),
]


def _fill(text: str, kit: HubKit) -> str:
    return text.replace("{dept}", kit.member_id("department")).replace(
        "{issuer}", kit.member_id("issuer")
    )


def _problems(kit: HubKit, path: Path, **kwargs: Any) -> list[Problem]:
    with kit.session() as session, pytest.raises(CatalogFileError) as caught:
        read_catalog(session, path, **kwargs)
    return caught.value.problems


@pytest.mark.parametrize(
    ("text", "path", "message"),
    [pytest.param(text, path, message, id=name) for name, text, path, message in BAD_FILES],
)
def test_bad_file_names_path_and_line(
    shared_hub_kit: HubKit, tmp_path: Path, text: str, path: str, message: str
) -> None:
    filled = _fill(text, shared_hub_kit)
    source = tmp_path / "bad.yaml"
    source.write_text(filled, "utf-8")
    problems = _problems(shared_hub_kit, source)
    matching = [p for p in problems if p.path == path and message in p.message]
    assert matching, problems
    assert matching[0].line == marked_line(filled), problems
    assert matching[0].column >= 1


def test_unknown_certificate_type_against_known_list(
    shared_hub_kit: HubKit, tmp_path: Path, run: Run
) -> None:
    text = good_catalogue(shared_hub_kit.member_id("department")).replace(
        f"certificate_types: [{ID_CARD}]", "certificate_types: [11100000000013338W099]  #<"
    )
    source = tmp_path / "items.yaml"
    source.write_text(text, "utf-8")
    known = tmp_path / "known-types.txt"
    known.write_text(f"# 证照类型目录\n{LICENCE} 营业执照\n{ID_CARD} 居民身份证\n", "utf-8")

    problems = _problems(shared_hub_kit, source, known_types={LICENCE, ID_CARD})
    assert [(p.path, p.line) for p in problems] == [
        ("items[0].materials[1].certificate_types[0]", marked_line(text))
    ]
    assert "unknown certificate type" in problems[0].message

    # Through the CLI: the compiler-style line, exit 2.
    code, _out, err = run(
        "catalog",
        "load",
        source,
        "--data-dir",
        shared_hub_kit.config.data_dir,
        "--known-types",
        known,
    )
    assert code == 2
    line = marked_line(text)
    where = re.escape(f"{source}:{line}:")
    what = re.escape("items[0].materials[1].certificate_types[0]: unknown certificate type")
    assert re.search(rf"{where}\d+: {what}", err), err
    # Without the list, any well-formed code is accepted.
    assert read_catalog_ok(shared_hub_kit, source)


def read_catalog_ok(kit: HubKit, path: Path) -> bool:
    with kit.session() as session:
        return len(read_catalog(session, path)) == 1


def test_all_problems_reported_together(shared_hub_kit: HubKit, tmp_path: Path) -> None:
    text = f"""\
items:
  - code: A
    name: 事项
    departments: [CN.440103.NOBODY]
    time_limit_days: -1
    materials:
      - {{code: M, name: 材料, certificate_types: [BAD]}}
  - code: A
    name: 事项二
    departments: [{shared_hub_kit.member_id("department")}]
    time_limit_days: 5
    materials: [{{code: M, name: 材料, material_types: [X]}}]
"""
    source = tmp_path / "many.yaml"
    source.write_text(text, "utf-8")
    problems = _problems(shared_hub_kit, source)
    assert [(p.path, p.line) for p in problems] == [
        ("items[0].departments[0]", 4),
        ("items[0].time_limit_days", 5),
        ("items[0].materials[0].certificate_types[0]", 7),
    ]
    # The first item is invalid as a whole, so the second A is not a duplicate of anything.


def test_bad_file_leaves_catalogue_untouched(hub_kit: HubKit, run: Run, tmp_path: Path) -> None:
    department = hub_kit.member_id("department")
    good = tmp_path / "good.yaml"
    good.write_text(good_catalogue(department), "utf-8")
    assert run("catalog", "load", good, "--data-dir", hub_kit.config.data_dir)[0] == 0

    # Renames the loaded item, adds a new valid one, and has one error further down.
    bad_text = (
        good_catalogue(department).replace("name: 测试事项", "name: 改过的名字")
        + f"""\
  - code: NEW-ITEM
    name: 新事项
    departments: [{department}]
    time_limit_days: 3
    materials: [{{code: M, name: 材料, material_types: [X]}}]
  - code: BROKEN
    name: 坏事项
    departments: [{department}]
    time_limit_days: 3
    materials: [{{code: M, name: 材料}}]
"""
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text(bad_text, "utf-8")
    code, out, err = run("catalog", "load", bad, "--data-dir", hub_kit.config.data_dir)
    assert code == 2
    assert "nothing was loaded" in err and "items[2].materials[0]" in err
    assert "loaded" not in out

    with hub_kit.session() as session:
        assert catalog.get_item(session, "TEST-ITEM").name == "测试事项"
        with pytest.raises(NotFoundError):
            catalog.get_item(session, "NEW-ITEM")


# -- JSON ------------------------------------------------------------------------------------


def _json_catalogue(department: str) -> dict[str, Any]:
    document = yaml.safe_load(good_catalogue(department))
    assert isinstance(document, dict)
    return document


def test_json_catalogue_loads(hub_kit: HubKit, run: Run, tmp_path: Path) -> None:
    source = tmp_path / "items.json"
    document = _json_catalogue(hub_kit.member_id("department"))
    document["items"][0]["departments"] = [{"name": "广州市荔湾区行政审批局"}]
    source.write_text(json.dumps(document, ensure_ascii=False, indent=2), "utf-8")
    code, out, err = run("catalog", "load", source, "--data-dir", hub_kit.config.data_dir)
    assert code == 0, err
    assert "loaded 1 items" in out
    with hub_kit.session() as session:
        item = catalog.get_item(session, "TEST-ITEM")
    assert list(item.departments) == [hub_kit.member_id("department")]
    assert item.materials[1].holder == 1


def test_json_errors_name_path_and_line(shared_hub_kit: HubKit, tmp_path: Path) -> None:
    document = _json_catalogue(shared_hub_kit.member_id("department"))
    document["items"][0]["materials"][1]["certificate_types"] = ["NOT-A-TYPE"]
    document["items"][0]["time_limit_days"] = "5"
    text = json.dumps(document, ensure_ascii=False, indent=2)
    source = tmp_path / "items.json"
    source.write_text(text, "utf-8")
    lines = text.splitlines()
    type_line = next(i for i, line in enumerate(lines, 1) if "NOT-A-TYPE" in line)
    days_line = next(i for i, line in enumerate(lines, 1) if '"time_limit_days"' in line)

    problems = _problems(shared_hub_kit, source)
    assert sorted((p.path, p.line) for p in problems) == sorted(
        [
            ("items[0].time_limit_days", days_line),
            ("items[0].materials[1].certificate_types[0]", type_line),
        ]
    )
    assert all(p.column > 0 for p in problems)


def test_json_syntax_error_has_position(shared_hub_kit: HubKit, tmp_path: Path) -> None:
    source = tmp_path / "items.json"
    source.write_text('{"items": [\n  {"code": "A",}\n]}\n', "utf-8")
    problems = _problems(shared_hub_kit, source)
    assert len(problems) == 1
    assert problems[0].line == 2 and "not valid JSON" in problems[0].message


def test_json_duplicate_keys_refused(shared_hub_kit: HubKit, tmp_path: Path) -> None:
    source = tmp_path / "items.json"
    source.write_text('{"items": [], "items": []}\n', "utf-8")
    problems = _problems(shared_hub_kit, source)
    assert [p.message for p in problems] == ["duplicate key(s) in an object: items"]


def test_yaml_duplicate_keys_refused(shared_hub_kit: HubKit, tmp_path: Path) -> None:
    text = good_catalogue(shared_hub_kit.member_id("department")).replace(
        "    time_limit_days: 5\n", "    time_limit_days: 5\n    time_limit_days: 6  #<\n"
    )
    source = tmp_path / "items.yaml"
    source.write_text(text, "utf-8")
    problems = _problems(shared_hub_kit, source)
    assert [(p.path, p.line) for p in problems] == [("items[0].time_limit_days", marked_line(text))]
    assert "duplicate key" in problems[0].message
