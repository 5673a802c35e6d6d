"""Load the item catalogue (事项目录) from a YAML or JSON file.

Operators keep the catalogue in a reviewed file; this module checks the whole
file against the member registry and loads it in one transaction, so a bad
file never leaves a half-loaded catalogue behind. Every problem is reported
with its line:column and its path, all at once.

File format (YAML shown; JSON is the same structure)::

    items:
      - code: FOOD-BIZ-NEW                  # item code 事项编码, unique in the file
        name: 食品经营许可(新办)              # item name 事项名称
        departments:                        # handling departments 办理部门, at least one
          - CN.440103.111...                #   a member id, or
          - {name: 荔湾区市场监督管理局}      #   the registered name of a member
        time_limit_days: 10                 # 承诺时限 in working days, 1..3650
        materials:                          # required materials 申请材料
          - code: BIZ_LICENCE               # material code 材料编码, unique in the item
            name: 营业执照                    # material name 材料名称
            certificate_types: [11100000000013338W001]  # e-certificate type codes 证照类型
            material_types: [LEASE_CONTRACT]           # material type codes 材料类型
            holder: applicant               # applicant (default) | legal_representative

Rules: a department must be an active member with the department role (a
``name`` must match exactly one such member); a certificate type code is 21
characters (the defining ministry's USCC + 3 digits) and, when a list of
known types is given, must be on it; a material needs at least one
certificate type or material type; codes are unique; unknown keys are errors
(a misspelt key would otherwise vanish silently). Loading inserts or replaces
the file's items; items not in the file stay as they are.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import select
from sqlalchemy.orm import Session

from xhub.certificates_store.identifier import IdentifierError, make_identifier
from xhub.hub.catalog.store import CODE_RE, put_items
from xhub.hub.core.db import ItemRow, MemberRow
from xhub.hub.registry.store import ACTIVE
from xhub.v1 import intake_pb2, registry_pb2

ITEM_CODE_RE = CODE_RE
MATERIAL_CODE_RE = ITEM_CODE_RE
MAX_TIME_LIMIT_DAYS = 3650
HOLDERS = {
    "applicant": intake_pb2.HOLDER_ROLE_UNSPECIFIED,
    "legal_representative": intake_pb2.HOLDER_ROLE_LEGAL_REPRESENTATIVE,
}
ITEM_KEYS = ("code", "name", "departments", "time_limit_days", "materials")
MATERIAL_KEYS = ("code", "name", "certificate_types", "material_types", "holder")


@dataclass(frozen=True)
class Problem:
    """One thing wrong in the file, where it is and what it is."""

    path: str
    message: str
    line: int = 0  # 1-based; 0 when unknown
    column: int = 0

    def render(self, source: str) -> str:
        where = f"{source}:{self.line}:{self.column}" if self.line else source
        return f"{where}: {self.path or '(file)'}: {self.message}"


class CatalogFileError(ValueError):
    """The file is not a valid catalogue; ``problems`` lists every error found."""

    def __init__(self, source: str, problems: Sequence[Problem]) -> None:
        self.source = source
        self.problems = list(problems)
        super().__init__("\n".join(p.render(source) for p in self.problems))


# -- a value tree that remembers where each value came from -----------------------------------


@dataclass
class Located:
    """A parsed value (scalar, list of Located, or dict of str → Located) and its position."""

    value: Any
    line: int = 0
    column: int = 0
    key_lines: dict[str, tuple[int, int]] = field(default_factory=dict)
    raw: str | None = None  # a YAML scalar's source text: codes like 0123 stay as written

    def code_text(self) -> str | None:
        """The value as a code string; a YAML number keeps its written form."""
        if isinstance(self.value, str):
            return self.value
        if isinstance(self.value, int | float) and not isinstance(self.value, bool):
            return self.raw
        return None


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _mark(node: yaml.Node | None) -> tuple[int, int]:
    if node is None:
        return 0, 0
    return node.start_mark.line + 1, node.start_mark.column + 1


def _from_yaml(
    node: yaml.Node, loader: yaml.SafeLoader, problems: list[Problem], path: str
) -> Located:
    line, column = _mark(node)
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)  # apply YAML merge keys (<<) as the loader would
        mapping: dict[str, Located] = {}
        keys: dict[str, tuple[int, int]] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            name = str(key)
            child = _join(path, name)
            if name in mapping:
                first = keys[name]
                problems.append(
                    Problem(child, f"duplicate key (first at line {first[0]})", *_mark(key_node))
                )
                continue
            keys[name] = _mark(key_node)
            mapping[name] = _from_yaml(value_node, loader, problems, child)
        return Located(mapping, line, column, keys)
    if isinstance(node, yaml.SequenceNode):
        return Located(
            [
                _from_yaml(child, loader, problems, f"{path}[{i}]")
                for i, child in enumerate(node.value)
            ],
            line,
            column,
        )
    return Located(loader.construct_object(node, deep=True), line, column, raw=str(node.value))


def _from_json(value: Any, node: yaml.Node | None) -> Located:
    """JSON values are authoritative; positions come from the same text composed as YAML."""
    line, column = _mark(node)
    if isinstance(value, dict):
        nodes: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if isinstance(key_node, yaml.ScalarNode):
                    nodes.setdefault(str(key_node.value), (key_node, value_node))
        mapping = {}
        keys = {}
        for key, child in value.items():
            key_node, value_node = nodes.get(key, (None, None))
            keys[key] = _mark(key_node)
            mapping[key] = _from_json(child, value_node)
        return Located(mapping, line, column, keys)
    if isinstance(value, list):
        children: list[yaml.Node | None] = [None] * len(value)
        if isinstance(node, yaml.SequenceNode) and len(node.value) == len(value):
            children = list(node.value)
        return Located(
            [_from_json(v, n) for v, n in zip(value, children, strict=True)], line, column
        )
    return Located(value, line, column)


def parse_document(text: str, *, source: str = "<catalogue>", is_json: bool = False) -> Located:
    """Parse YAML or JSON into a Located tree; syntax errors carry their position."""
    if is_json:
        duplicates: list[str] = []

        def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
            seen: dict[str, Any] = {}
            for key, child in items:
                if key in seen:
                    duplicates.append(key)
                seen[key] = child
            return seen

        try:
            value = json.loads(text, object_pairs_hook=pairs)
        except json.JSONDecodeError as exc:
            raise CatalogFileError(
                source, [Problem("", f"not valid JSON: {exc.msg}", exc.lineno, exc.colno)]
            ) from exc
        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError:
            node = None  # a JSON corner PyYAML does not read: report paths without lines
        if duplicates:
            names = ", ".join(sorted(set(duplicates)))
            raise CatalogFileError(source, [Problem("", f"duplicate key(s) in an object: {names}")])
        return _from_json(value, node)
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        problems: list[Problem] = []
        tree = Located(None) if node is None else _from_yaml(node, loader, problems, "")
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        raise CatalogFileError(
            source, [Problem("", f"not valid YAML: {exc.problem or exc}", line, column)]
        ) from exc
    except yaml.YAMLError as exc:
        raise CatalogFileError(source, [Problem("", f"not valid YAML: {exc}")]) from exc
    finally:
        loader.dispose()
    if problems:
        raise CatalogFileError(source, problems)
    return tree


# -- validation ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Departments:
    """Active department members, by id and by name, for resolving references."""

    by_id: Mapping[str, MemberRow]
    by_name: Mapping[str, list[MemberRow]]
    known_ids: Collection[str]  # every member id, to tell "not a department" from "unknown"

    @classmethod
    def from_session(cls, session: Session) -> Departments:
        rows = list(session.scalars(select(MemberRow).where(MemberRow.uscc != "")))
        departments = [
            row
            for row in rows
            if row.status == ACTIVE
            and any(r.role == registry_pb2.ROLE_DEPARTMENT for r in row.roles)
        ]
        by_name: dict[str, list[MemberRow]] = {}
        for row in departments:
            by_name.setdefault(row.name, []).append(row)
        return cls({r.member_id: r for r in departments}, by_name, {r.member_id for r in rows})


def is_type_code(code: str) -> bool:
    """Well formed per GB/T 36904: the defining ministry's USCC charset (18) + 3 digits."""
    try:
        # The identifier module owns the type-code rule; other parts here are placeholders.
        make_identifier(code, "0", "0", 1)
    except IdentifierError:
        return False
    return True


class _Checker:
    def __init__(self, departments: Departments, known_types: Collection[str] | None) -> None:
        self.departments = departments
        self.known_types = known_types
        self.problems: list[Problem] = []

    def fail(self, path: str, at: Located | tuple[int, int], message: str) -> None:
        line, column = (at.line, at.column) if isinstance(at, Located) else at
        self.problems.append(Problem(path, message, line, column))

    def mapping(
        self, node: Located, path: str, allowed: Sequence[str]
    ) -> dict[str, Located] | None:
        if not isinstance(node.value, dict):
            self.fail(path, node, f"must be a mapping, got {_kind(node.value)}")
            return None
        for key in node.value:
            if key not in allowed:
                self.fail(
                    _join(path, key),
                    node.key_lines.get(key, (node.line, node.column)),
                    f"unknown key; expected one of {', '.join(allowed)}",
                )
        return node.value

    def required(
        self, fields: dict[str, Located], parent: Located, path: str, key: str
    ) -> Located | None:
        if key not in fields:
            self.fail(_join(path, key), parent, "required field is missing")
            return None
        return fields[key]

    def text(
        self, node: Located | None, path: str, *, pattern: re.Pattern[str] | None = None
    ) -> str | None:
        if node is None:
            return None
        value = node.code_text() if pattern is not None else node.value
        if not isinstance(value, str) or not value.strip():
            self.fail(path, node, f"must be a non-empty string, got {_kind(node.value)}")
            return None
        value = value.strip()
        if len(value) > 200:
            self.fail(path, node, "must be at most 200 characters")
            return None
        if pattern is not None and not pattern.match(value):
            self.fail(path, node, f"{value!r} is not a valid code (letters, digits, _ . -; ≤64)")
            return None
        return value

    def sequence(self, node: Located | None, path: str) -> list[Located]:
        if node is None:
            return []
        if not isinstance(node.value, list):
            self.fail(path, node, f"must be a list, got {_kind(node.value)}")
            return []
        return node.value

    def document(self, root: Located) -> list[intake_pb2.Item]:
        top = self.mapping(root, "", ("items",))
        if top is None:
            return []
        if self.required(top, root, "", "items") is None:
            return []
        items: list[intake_pb2.Item] = []
        seen: dict[str, int] = {}
        for index, node in enumerate(self.sequence(top["items"], "items")):
            path = f"items[{index}]"
            item = self.item(node, path)
            if item is None:
                continue
            if item.code in seen:
                self.fail(
                    f"{path}.code",
                    node.value["code"],
                    f"duplicate item code {item.code!r} (first at items[{seen[item.code]}])",
                )
                continue
            seen[item.code] = index
            items.append(item)
        return items

    def item(self, node: Located, path: str) -> intake_pb2.Item | None:
        fields = self.mapping(node, path, ITEM_KEYS)
        if fields is None:
            return None
        before = len(self.problems)
        code = self.text(
            self.required(fields, node, path, "code"), f"{path}.code", pattern=ITEM_CODE_RE
        )
        name = self.text(self.required(fields, node, path, "name"), f"{path}.name")
        departments = self.department_list(self.required(fields, node, path, "departments"), path)
        days = self.time_limit(self.required(fields, node, path, "time_limit_days"), path)
        materials: list[intake_pb2.RequiredMaterial] = []
        seen: dict[str, int] = {}
        for index, child in enumerate(
            self.sequence(self.required(fields, node, path, "materials"), f"{path}.materials")
        ):
            child_path = f"{path}.materials[{index}]"
            material = self.material(child, child_path)
            if material is None:
                continue
            if material.code in seen:
                self.fail(
                    f"{child_path}.code",
                    child.value["code"],
                    f"duplicate material code {material.code!r} (first at "
                    f"{path}.materials[{seen[material.code]}])",
                )
                continue
            seen[material.code] = index
            materials.append(material)
        if len(self.problems) > before or code is None or name is None or days is None:
            return None
        return intake_pb2.Item(
            code=code, name=name, departments=departments, time_limit_days=days, materials=materials
        )

    def time_limit(self, node: Located | None, path: str) -> int | None:
        if node is None:
            return None
        value = node.value
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(f"{path}.time_limit_days", node, f"must be an integer, got {_kind(value)}")
            return None
        if not 0 < value <= MAX_TIME_LIMIT_DAYS:
            self.fail(
                f"{path}.time_limit_days",
                node,
                f"must be 1..{MAX_TIME_LIMIT_DAYS} working days (工作日), got {value}",
            )
            return None
        return value

    def department_list(self, node: Located | None, item_path: str) -> list[str]:
        path = f"{item_path}.departments"
        entries = self.sequence(node, path)
        if node is not None and isinstance(node.value, list) and not entries:
            self.fail(path, node, "an item needs at least one handling department (办理部门)")
        resolved: list[str] = []
        for index, entry in enumerate(entries):
            member_id = self.department(entry, f"{path}[{index}]")
            if member_id is None:
                continue
            if member_id in resolved:
                self.fail(f"{path}[{index}]", entry, f"department {member_id} is listed twice")
                continue
            resolved.append(member_id)
        return resolved

    def department(self, entry: Located, path: str) -> str | None:
        if isinstance(entry.value, dict):
            fields = self.mapping(entry, path, ("id", "name"))
            if fields is None:
                return None
            given = [(k, v) for k, v in fields.items() if k in ("id", "name")]
            if len(given) != 1:
                if len(given) > 1 or len(fields) == 0:
                    self.fail(path, entry, "give exactly one of id or name")
                return None
            key, value = given[0]
            text = self.text(value, f"{path}.{key}")
            if text is None:
                return None
            if key == "name":
                return self.department_by_name(text, value, f"{path}.name")
            return self.department_by_id(text, value, f"{path}.id")
        text = self.text(entry, path)
        return None if text is None else self.department_by_id(text, entry, path)

    def department_by_id(self, member_id: str, at: Located, path: str) -> str | None:
        if member_id in self.departments.by_id:
            return member_id
        if member_id in self.departments.known_ids:
            self.fail(path, at, f"member {member_id} is not an active department (办理部门)")
        else:
            self.fail(path, at, f"unknown department: no member {member_id} (未注册的接入单位)")
        return None

    def department_by_name(self, name: str, at: Located, path: str) -> str | None:
        found = self.departments.by_name.get(name, [])
        if len(found) == 1:
            return found[0].member_id
        if found:
            ids = ", ".join(sorted(r.member_id for r in found))
            self.fail(path, at, f"department name {name!r} is ambiguous ({ids}); use the id")
        else:
            self.fail(path, at, f"unknown department: no active department named {name!r}")
        return None

    def material(self, node: Located, path: str) -> intake_pb2.RequiredMaterial | None:
        fields = self.mapping(node, path, MATERIAL_KEYS)
        if fields is None:
            return None
        before = len(self.problems)
        code = self.text(
            self.required(fields, node, path, "code"), f"{path}.code", pattern=MATERIAL_CODE_RE
        )
        name = self.text(self.required(fields, node, path, "name"), f"{path}.name")
        certificate_types = self.codes(
            fields.get("certificate_types"), f"{path}.certificate_types", certificate=True
        )
        material_types = self.codes(
            fields.get("material_types"), f"{path}.material_types", certificate=False
        )
        if not any(
            isinstance(given.value, list) and given.value
            for given in (fields.get("certificate_types"), fields.get("material_types"))
            if given is not None
        ):
            self.fail(
                path,
                node,
                "no way to satisfy this material: give certificate_types or material_types",
            )
        holder = intake_pb2.HOLDER_ROLE_UNSPECIFIED
        if "holder" in fields:
            holder_node = fields["holder"]
            if holder_node.value not in HOLDERS:
                self.fail(
                    f"{path}.holder",
                    holder_node,
                    f"must be applicant or legal_representative, got {holder_node.value!r}",
                )
            else:
                holder = HOLDERS[holder_node.value]
        if len(self.problems) > before or code is None or name is None:
            return None
        return intake_pb2.RequiredMaterial(
            code=code,
            name=name,
            certificate_types=certificate_types,
            material_types=material_types,
            holder=holder,
        )

    def codes(self, node: Located | None, path: str, *, certificate: bool) -> list[str]:
        result: list[str] = []
        for index, entry in enumerate(self.sequence(node, path)):
            at = f"{path}[{index}]"
            value = entry.code_text()
            if value is None:
                self.fail(at, entry, f"must be a string code, got {_kind(entry.value)}")
                continue
            if certificate:
                if not is_type_code(value):
                    self.fail(
                        at,
                        entry,
                        f"malformed certificate type code {value!r}: 21 characters, the "
                        "defining authority's USCC + 3 digits (证照类型代码)",
                    )
                    continue
                if self.known_types is not None and value not in self.known_types:
                    self.fail(at, entry, f"unknown certificate type {value!r} (未登记的证照类型)")
                    continue
            elif not MATERIAL_CODE_RE.match(value):
                self.fail(at, entry, f"{value!r} is not a valid material type code")
                continue
            if value in result:
                self.fail(at, entry, f"{value!r} is listed twice")
                continue
            result.append(value)
        return result


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), f"a {type(value).__name__}"
    )


# -- entry points --------------------------------------------------------------------------


def check_catalog(
    tree: Located,
    departments: Departments,
    *,
    source: str = "<catalogue>",
    known_types: Collection[str] | None = None,
) -> list[intake_pb2.Item]:
    """Validate a parsed file; returns the items or raises with every problem found."""
    checker = _Checker(departments, known_types)
    items = checker.document(tree)
    if checker.problems:
        raise CatalogFileError(source, checker.problems)
    return items


def read_catalog(
    session: Session, path: Path, *, known_types: Collection[str] | None = None
) -> list[intake_pb2.Item]:
    """Parse and validate a catalogue file against the registry; writes nothing."""
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CatalogFileError(str(path), [Problem("", f"cannot read the file: {exc}")]) from exc
    tree = parse_document(text, source=str(path), is_json=path.suffix.lower() == ".json")
    return check_catalog(
        tree, Departments.from_session(session), source=str(path), known_types=known_types
    )


def load_catalog(
    session: Session, path: Path, *, known_types: Collection[str] | None = None
) -> list[intake_pb2.Item]:
    """Validate the whole file, then put its items (the caller's transaction commits)."""
    items = read_catalog(session, path, known_types=known_types)
    put_items(session, items)
    return items


def read_known_types(path: Path) -> set[str]:
    """Known certificate type codes: one per line, anything after the code is a comment."""
    known: set[str] = set()
    for line in path.read_text("utf-8").splitlines():
        word = line.split("#", 1)[0].strip().split(maxsplit=1)
        if word:
            known.add(word[0])
    return known


def stored_items(session: Session) -> Iterator[intake_pb2.Item]:
    """Every catalogue item, by code (for listing)."""
    for row in session.scalars(select(ItemRow).order_by(ItemRow.code)):
        item = intake_pb2.Item()
        item.ParseFromString(row.item)
        yield item
