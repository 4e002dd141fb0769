"""Audit entries carry only their declared fields (common/audit_events.py ``FIELDS``):
every writer in the product names declared keys, ``AuditLog.append`` refuses any other
before writing, and the readers read declared keys.

The writers and readers are read from the source with ``ast``; keys a writer spreads in
from elsewhere (``**owner.describe()``) are listed and checked where they are built.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from fedshield.audit.verify import verify_log
from fedshield.common.audit_events import FIELDS, Event, Field
from fedshield.common.audit_log import AuditLog
from fedshield.common.errors import AuditLogError, ForeignAppRefused
from tests.support.paths import ROOT

PRODUCT = ("client", "server", "common", "audit", "simulation", "cli", "inference")
DECLARED = frozenset().union(*FIELDS.values())
EVENTS = {name: value for name, value in vars(Event).items() if name.isupper()}
FIELD_NAMES = {name: value for name, value in vars(Field).items() if name.isupper()}
# Data a writer spreads into an entry from a value built elsewhere: each is checked below.
SPREADS = {"owner.describe()", "refusal.identity", "stop.details", "per_class"}


def product_modules() -> list[Path]:
    return [path for package in PRODUCT for path in sorted((ROOT / package).glob("*.py"))]


def where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(ROOT)}:{node.lineno}"


def named(node: ast.AST, owner: str, names: dict[str, str]) -> str | None:
    """The value of ``Event.X`` / ``Field.X`` (``owner`` names which), else None."""
    if (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == owner
    ):
        return names[node.attr]  # a KeyError here is a misspelt constant
    return None


def event_types(node: ast.AST) -> list[str] | None:
    """``Event.X``, or ``Event.A if ... else Event.B``: the types it may name."""
    if isinstance(node, ast.IfExp):
        body, orelse = event_types(node.body), event_types(node.orelse)
        return body + orelse if body is not None and orelse is not None else None
    value = named(node, "Event", EVENTS)
    return None if value is None else [value]


def key(node: ast.AST) -> str | None:
    """A data key written as a literal or as ``Field.X``; None for anything computed."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return named(node, "Field", FIELD_NAMES)


def spread_keys(node: ast.AST, keys: list[str], spreads: list[str]) -> None:
    """The keys of a ``**{...}`` argument (nested ``**{...}`` and ``**(a if c else b)``
    included); anything else spread in goes to ``spreads``."""
    if isinstance(node, ast.IfExp):
        spread_keys(node.body, keys, spreads)
        spread_keys(node.orelse, keys, spreads)
    elif isinstance(node, ast.Dict):
        for k, v in zip(node.keys, node.values, strict=True):
            if k is None:
                spread_keys(v, keys, spreads)
            elif key(k) is None:
                spreads.append(ast.unparse(k))
            else:
                keys.append(key(k))
    else:
        spreads.append(ast.unparse(node))


def writer_calls() -> list[tuple[str, list[str], list[str], list[str]]]:
    """(where, entry types, literal keys, spread expressions) of each ``append(Event.X, ...)``."""
    calls = []
    for path in product_modules():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "append"
                and node.args
            ):
                continue
            types = event_types(node.args[0])
            if types is None:
                continue
            keys: list[str] = []
            spreads: list[str] = []
            for keyword in node.keywords:
                if keyword.arg is None:
                    spread_keys(keyword.value, keys, spreads)
                else:
                    keys.append(keyword.arg)
            calls.append((where(path, node), types, keys, spreads))
    return calls


def test_every_writer_names_only_keys_declared_for_its_entry_type():
    calls = writer_calls()
    undeclared = [
        f"{at}: {entry_type} carries {k!r}"
        for at, types, keys, _ in calls
        for entry_type in types
        for k in keys
        if k not in FIELDS[entry_type]
    ]
    assert undeclared == [], "declare them in common/audit_events.py FIELDS"
    written = {entry_type for _, types, _, _ in calls for entry_type in types}
    # log-start and checkpoint are written by common/audit_log.py itself (test below)
    assert written == set(FIELDS) - {Event.LOG_START, Event.CHECKPOINT}
    assert set(FIELDS) == set(EVENTS.values())
    assert sum(len(keys) for _, _, keys, _ in calls) > 120  # the scan reads the keys
    spreads = {s for _, _, _, found in calls for s in found}
    assert spreads == SPREADS, "a new spread into an entry: check its keys in this file"


def test_the_spread_in_owner_identity_is_declared_where_it_is_spread():
    from fedshield.server.identity import OwnerIdentity

    described = set(OwnerIdentity(4, "SHA256:k", "SHA256:k", "owner-4", 100).describe())
    for entry_type in (
        Event.CLIENT_REFUSED,
        Event.UPDATE_REJECTED,
        Event.UPDATE_RECEIVED,
        Event.EVALUATE_RECEIVED,
    ):
        assert described <= FIELDS[entry_type], entry_type


def test_the_per_class_metrics_of_a_round_are_declared_for_its_evaluation_entry():
    import numpy as np

    from fedshield.common.class_metrics import round_metrics

    metrics = round_metrics(np.array([0, 1]), np.array([0, 0]), ("a", "b"))
    assert set(metrics) <= FIELDS[Event.ROUND_EVALUATED]


def test_a_foreign_apps_identity_is_declared_for_its_refusal():
    from fedshield.client.executor import check_fab_is_fedshield

    with pytest.raises(ForeignAppRefused) as refused:
        check_fab_is_fedshield(b"not a zip archive")
    assert set(refused.value.identity) <= FIELDS[Event.FOREIGN_APP_REFUSED]


def test_every_node_stop_detail_is_declared():
    source = ROOT / "client" / "supernode.py"
    details = [
        k
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8")))
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "NodeStop"
        if len(node.args) == 4 and isinstance(node.args[3], ast.Dict)
        for k in map(key, node.args[3].keys)
    ]
    assert len(details) >= 3 and None not in details
    assert set(details) <= FIELDS[Event.NODE_STOP]


def test_the_logs_own_entries_carry_their_declared_fields(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl", actor="owner-a", checkpoint_every=2)
    log.append(Event.ROUND_NOT_AGGREGATED, **{Field.SERVER_ROUND: 1})
    log.checkpoint("run-end")
    result = verify_log(tmp_path / "audit.jsonl")
    assert result.ok, result.problem
    types = [e["type"] for e in result.entries]
    # a periodic checkpoint after two entries, then the one asked for
    assert types == [
        Event.LOG_START,
        Event.ROUND_NOT_AGGREGATED,
        Event.CHECKPOINT,
        Event.CHECKPOINT,
    ]
    for entry in result.entries:
        assert set(entry["data"]) <= FIELDS[entry["type"]], entry


@pytest.mark.parametrize("fresh", [True, False], ids=["new-log", "existing-log"])
def test_append_refuses_an_undeclared_key_and_writes_nothing(tmp_path, fresh):
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, actor="owner-a")
    if not fresh:
        log.append(Event.ROUND_ERROR, **{Field.SERVER_ROUND: 1, Field.ERROR: "x"})
    before = path.read_bytes() if path.exists() else b""
    with pytest.raises(AuditLogError) as refused:
        log.append(Event.ROUND_ERROR, **{Field.SERVER_ROUND: 2, "raw-text": "a record's text"})
    message = str(refused.value)
    assert "'round-error'" in message and "'raw-text'" in message
    assert "nothing was written" in message and "common/audit_events.py" in message
    assert (path.read_bytes() if path.exists() else b"") == before
    if not fresh:
        log.checkpoint("test")
        assert verify_log(path).ok


def test_append_refuses_an_undeclared_entry_type_and_writes_nothing(tmp_path):
    path = tmp_path / "audit.jsonl"
    with pytest.raises(AuditLogError, match="'note' is not declared.*common/audit_events.py"):
        AuditLog(path, actor="owner-a").append("note", blob="z")
    assert not path.exists() or path.read_bytes() == b""


# --- the readers --------------------------------------------------------------------


def is_entry_data(node: ast.AST) -> bool:
    """``x["data"]``, ``x.get("data")`` or ``x.get("data") or {}``: an entry's data."""
    if isinstance(node, ast.BoolOp) and isinstance(node.op, ast.Or):
        return is_entry_data(node.values[0])
    if isinstance(node, ast.Subscript):
        return key(node.slice) == "data"
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "get"
        and bool(node.args)
        and key(node.args[0]) == "data"
    )


def data_names(function: ast.FunctionDef, reader: bool) -> set[str]:
    """Names a function binds to an entry's data (in a module that reads entries, a
    parameter named ``data`` too)."""
    names = {a.arg for a in function.args.args if reader and a.arg == "data"}
    for node in ast.walk(function):
        if not isinstance(node, ast.Assign):
            continue
        for target in node.targets:
            pairs = (
                zip(target.elts, node.value.elts, strict=False)
                if isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple)
                else [(target, node.value)]
            )
            names.update(t.id for t, v in pairs if isinstance(t, ast.Name) and is_entry_data(v))
    return names


# common/audit_log.py's names for the types it writes itself
ALIASES = {"CHECKPOINT": Event.CHECKPOINT, "LOG_START": Event.LOG_START}


def type_named(node: ast.AST) -> list[str] | None:
    if isinstance(node, ast.Name) and node.id in ALIASES:
        return [ALIASES[node.id]]
    return event_types(node)


def guard(test: ast.AST, tuples: dict[str, list[str]], negated: bool = False) -> list[str] | None:
    """The entry types a condition limits to: ``x == Event.X``, ``x in (Event.A, ...)``
    or a module tuple of them, or the first such operand of an ``and``; ``negated``:
    the types ``x != Event.X`` / ``x not in (...)`` leave after an early exit."""
    if isinstance(test, ast.BoolOp) and isinstance(test.op, ast.And) and not negated:
        return next((g for g in (guard(v, tuples) for v in test.values) if g), None)
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1):
        return None
    right = test.comparators[0]
    equal, member = (ast.NotEq, ast.NotIn) if negated else (ast.Eq, ast.In)
    if isinstance(test.ops[0], equal):
        return type_named(right) or type_named(test.left)
    if isinstance(test.ops[0], member):
        if isinstance(right, ast.Name):
            return tuples.get(right.id)
        if isinstance(right, ast.Tuple) and all(event_types(e) for e in right.elts):
            return [t for e in right.elts for t in event_types(e)]
    return None


class DataReads(ast.NodeVisitor):
    """Keys read from an entry's data, each with the entry types its branch allows."""

    def __init__(self, names: set[str], tuples: dict[str, list[str]]) -> None:
        self.names, self.tuples = names, tuples
        self.types: list[str] | None = None
        self.reads: list[tuple[int, str, list[str] | None]] = []

    def _is_data(self, node: ast.AST) -> bool:
        return (isinstance(node, ast.Name) and node.id in self.names) or is_entry_data(node)

    def _read(self, node: ast.AST, key_node: ast.AST) -> None:
        k = key(key_node)
        if k is not None:
            self.reads.append((node.lineno, k, self.types))

    def _guarded(self, types: list[str] | None, nodes: list[ast.AST]) -> None:
        """Visit ``nodes`` as one block under ``types``; ``if x != Event.X: continue``
        (or return) narrows the statements after it to X."""
        outer = self.types
        self.types = types or outer
        for node in nodes:
            self.visit(node)
            if (
                isinstance(node, ast.If)
                and not node.orelse
                and len(node.body) == 1
                and isinstance(node.body[0], ast.Continue | ast.Return)
            ):
                self.types = guard(node.test, self.tuples, negated=True) or self.types
        self.types = outer

    def visit_For(self, node: ast.For) -> None:
        self.visit(node.target)
        self.visit(node.iter)
        self._guarded(None, node.body)
        self._guarded(None, node.orelse)

    def visit_Subscript(self, node: ast.Subscript) -> None:
        if self._is_data(node.value):
            self._read(node, node.slice)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr == "get" and self._is_data(func.value):
            self._read(node, node.args[0])
        self.generic_visit(node)

    def visit_Compare(self, node: ast.Compare) -> None:
        if (
            len(node.ops) == 1
            and isinstance(node.ops[0], ast.In | ast.NotIn)
            and self._is_data(node.comparators[0])
        ):
            self._read(node, node.left)
        self.generic_visit(node)

    def visit_If(self, node: ast.If) -> None:
        self.visit(node.test)
        self._guarded(guard(node.test, self.tuples), node.body)
        self._guarded(None, node.orelse)

    def visit_IfExp(self, node: ast.IfExp) -> None:
        self.visit(node.test)
        self._guarded(guard(node.test, self.tuples), [node.body])
        self._guarded(None, [node.orelse])

    def visit_BoolOp(self, node: ast.BoolOp) -> None:
        types = None
        outer = self.types
        for value in node.values:
            self.types = types or outer
            self.visit(value)
            if isinstance(node.op, ast.And):
                types = types or guard(value, self.tuples)
        self.types = outer

    def _comprehension(self, node: ast.AST, elements: list[ast.AST]) -> None:
        for generator in node.generators:
            self.visit(generator)
        conditions = [c for g in node.generators for c in g.ifs]
        types = next((g for g in (guard(c, self.tuples) for c in conditions) if g), None)
        self._guarded(types, elements)

    def visit_ListComp(self, node: ast.ListComp) -> None:
        self._comprehension(node, [node.elt])

    visit_SetComp = visit_GeneratorExp = visit_ListComp

    def visit_DictComp(self, node: ast.DictComp) -> None:
        self._comprehension(node, [node.key, node.value])


def reader_reads() -> list[tuple[str, str, list[str] | None]]:
    """(where, key, entry types or None) for every key read from an entry's data."""
    found = []
    for path in product_modules():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        tuples = {
            t.id: types
            for node in tree.body
            if isinstance(node, ast.Assign)
            for t in node.targets
            if isinstance(t, ast.Name) and (types := guard_tuple(node.value))
        }
        reader = any(is_entry_data(node) for node in ast.walk(tree))
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef):
                continue
            reads = DataReads(data_names(function, reader), tuples)
            reads._guarded(None, function.body)
            at = path.relative_to(ROOT)
            found.extend((f"{at}:{line}", k, types) for line, k, types in reads.reads)
    return found


def guard_tuple(node: ast.AST) -> list[str] | None:
    if isinstance(node, ast.Tuple) and node.elts and all(event_types(e) for e in node.elts):
        return [t for e in node.elts for t in event_types(e)]
    return None


def test_readers_read_only_declared_fields_and_those_of_the_type_they_checked():
    reads = reader_reads()
    modules = {at.split(":")[0] for at, _, _ in reads}
    assert {"audit/owners.py", "audit/runs.py", "audit/report.py", "audit/verify.py"} <= modules
    assert "server/status.py" in modules
    never_written = [f"{at}: {k!r}" for at, k, _ in reads if k not in DECLARED]
    assert never_written == [], "no entry type declares these keys"
    guarded = [(at, k, types) for at, k, types in reads if types]
    wrong_type = [
        f"{at}: {k!r} is not a field of {' / '.join(types)}"
        for at, k, types in guarded
        if not any(k in FIELDS[t] for t in types)
    ]
    assert wrong_type == []
    assert len(reads) > 60 and len(guarded) > 25  # the scan sees the readers
