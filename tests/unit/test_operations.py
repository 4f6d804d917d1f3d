"""Every operation of restobot/operations tested the way pyinfra tests its own (tests/test_operations.py there):
given facts, the operation yields these commands, or nothing and says why (noop), or fails.

Each case is one JSON file, ``tests/unit/operations/<operation>/<state it ensures>.json``::

    {
        "kwargs": {"layout": {"$type": "HostLayout", "base_dir": "/opt/resto"}, ...},
        "facts": {"deploy.DeployState": {"base_dir=/opt/resto": {"$type": "HostState", ...}}},
        "commands": ["rm -rf /opt/resto/releases/v1-aaaaaaaa"]
    }

with exactly one of ``commands`` (a non-empty list), ``noop_description`` (nothing yielded, and
``host.noop`` said this) or ``exception`` (``{"name": ..., "message": ...}``).

+ ``args``/``kwargs``: what the operation is called with.
+ ``facts``: pyinfra's fixture shape: ``"<fact module>.<FactClass>"`` (the module's last part, as
  pyinfra names them: ``files.File``, ``deploy.DeployState``), then for a fact asked with arguments
  one entry per call, keyed ``name=value`` (sorted by name, joined by ``", "``; a value that is not
  a string is written as JSON), for a fact asked without arguments the value itself.
+ ``local_files``: files on the operator's machine (``{"name": "content"}``), written to a
  temporary directory; ``"local:name"`` is that file's path (in arguments, uploads and messages).
+ values: a JSON array is a tuple, ``["set:", ...]`` a set, ``"path:..."`` a ``Path``, and
  ``{"$type": "HostState", ...}`` one of the value types in ``TYPES`` built with those fields.
+ ``commands``: a ``StringCommand`` as pyinfra renders it (``get_raw_value``), an upload as
  ``["upload", src, dest]``, a ``FunctionCommand`` as ``[function name, args, kwargs]``.

The operation's own generator (``op._inner``, the undecorated function, as pyinfra's tests run theirs) runs under pyinfra's
context with a fake state and a fake host whose ``get_fact`` answers from the fixture only. A case
fails when its directory names no operation, when the operation asks a fact (or fact arguments)
the fixture does not give, and when the fixture gives a fact the operation never asked for: the
fixtures cannot rot silently. The clock of restobot/operations/lock.py is fixed (as pyinfra's
tests fix ``files.get_timestamp``).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import pkgutil
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import import_module
from pathlib import Path
from unittest.mock import patch

import pytest
from pyinfra.api import (
    Config,
    FileUploadCommand,
    FunctionCommand,
    Inventory,
    StringCommand,
)
from pyinfra.context import ctx_host, ctx_state

import restobot.operations
from restobot.commands import HostLayout
from restobot.facts.deploy import (
    ApiClientRow,
    Container,
    DatabaseUnreadable,
    HostState,
    LedgerRow,
    PreDeployDump,
    SmokeCheck,
)
from restobot.facts.offsite import OffsiteRepository
from restobot.facts.provision import Firewall, Platform, Swap
from restobot.release_archive import MigrationInfo, ReleaseManifest
from restobot.settings import ImageSettings

CASES_DIR = Path(__file__).parent / "operations"
CASE_KEYS = {"args", "kwargs", "facts", "local_files", "commands", "noop_description", "exception"}
OUTCOME_KEYS = ("commands", "noop_description", "exception")
FIXED_NOW = "2025-01-02T03:04:05Z"
FIXED_MONOTONIC = 1000.0


def value_types() -> dict[str, type]:
    from restobot.operations.lock import Actor

    return {cls.__name__: cls for cls in (
        HostLayout, ImageSettings, MigrationInfo, HostState, Container, LedgerRow, ApiClientRow, DatabaseUnreadable,
        SmokeCheck, Firewall, Platform, Swap, Actor, PreDeployDump, OffsiteRepository, ReleaseManifest,
    )}


TYPES = value_types()


class FixtureError(AssertionError):
    """The fixture and the operation disagree about facts, or the fixture is malformed."""


# --- which operations there are ------------------------------------------------------


def operation_modules() -> list[types.ModuleType]:
    return [import_module(f"restobot.operations.{info.name}")
            for info in pkgutil.iter_modules(restobot.operations.__path__)]


def is_operation(obj) -> bool:
    return callable(obj) and hasattr(getattr(obj, "_inner", None), "is_idempotent")


def is_deploy(obj) -> bool:
    return callable(obj) and hasattr(getattr(obj, "_inner", None), "deploy_name")


def all_operations() -> dict[str, Callable]:
    """Every ``@operation`` defined in restobot/operations, by name."""
    found: dict[str, Callable] = {}
    for module in operation_modules():
        for name, obj in vars(module).items():
            if is_operation(obj) and obj.__module__ == module.__name__:
                assert name not in found, f"two operations named {name}: fixture directories would be ambiguous"
                found[name] = obj
    return found


OPERATIONS = all_operations()


def reached_operations(func, seen: set | None = None) -> set[str]:
    """The restobot operations a deploy calls, through its nested deploys and helper functions."""
    seen = set() if seen is None else seen
    inner = getattr(func, "_inner", func)
    if inner in seen or not isinstance(inner, types.FunctionType):
        return set()
    seen.add(inner)
    names: set[str] = set()
    codes = [inner.__code__]
    while codes:
        code = codes.pop()
        names.update(code.co_names)
        codes.extend(const for const in code.co_consts if isinstance(const, types.CodeType))
    reached = set()
    for name in names:
        target = inner.__globals__.get(name)
        if is_operation(target) and target.__module__.startswith("restobot."):
            reached.add(target.__name__)
        elif (is_deploy(target) or isinstance(target, types.FunctionType)) and getattr(
                target, "__module__", "").startswith("restobot.operations"):
            reached |= reached_operations(target, seen)
    return reached


# --- fixture values ------------------------------------------------------------------


def parse_value(value, local_dir: Path):
    if isinstance(value, str):
        if value.startswith("path:"):
            return Path(parse_value(value[len("path:"):], local_dir))
        if value.startswith("local:"):
            return str(local_dir / value[len("local:"):])
        return value
    if isinstance(value, list):
        if value and value[0] == "set:":
            return {parse_value(item, local_dir) for item in value[1:]}
        return tuple(parse_value(item, local_dir) for item in value)
    if isinstance(value, dict):
        fields = {key: parse_value(item, local_dir) for key, item in value.items() if key != "$type"}
        if "$type" not in value:
            return fields
        cls = TYPES.get(value["$type"])
        if cls is None:
            raise FixtureError(f"unknown $type {value['$type']!r} (known: {', '.join(sorted(TYPES))})")
        return cls(**fields)
    return value


def encode_value(value, local_dir: Path):
    """The fixture spelling of a value an operation put in a command (the inverse of ``parse_value``)."""
    if isinstance(value, Path):
        return "path:" + encode_value(str(value), local_dir)
    if isinstance(value, str):
        prefix = f"{local_dir}/"
        return "local:" + value[len(prefix):] if value.startswith(prefix) else value
    if isinstance(value, (list, tuple)):
        return [encode_value(item, local_dir) for item in value]
    if isinstance(value, dict):
        return {key: encode_value(item, local_dir) for key, item in value.items()}
    if type(value).__name__ in TYPES and dataclasses.is_dataclass(value):
        return {"$type": type(value).__name__,
                **{f.name: encode_value(getattr(value, f.name), local_dir) for f in dataclasses.fields(value)}}
    if value is None or isinstance(value, (bool, int, float)):
        return value
    raise FixtureError(f"no fixture spelling for {value!r} ({type(value).__name__}): add its type to TYPES")


def fact_key(fact_cls) -> str:
    return f"{fact_cls.__module__.split('.')[-1]}.{fact_cls.__name__}"


def fact_arguments(kwargs: dict) -> str:
    return ", ".join(f"{name}={value if isinstance(value, str) else json.dumps(value)}"
                     for name, value in sorted(kwargs.items()))


# --- the fake state and host (pyinfra's tests/util.py FakeState and FakeHost) --------


class FakeState:
    cwd = None
    is_executing = False
    in_op = True

    def __init__(self):
        self.inventory = Inventory(([], {}))
        self.config = Config()


class FakeHost:
    """Answers facts from a fixture and remembers which it was asked."""

    name = "vps"
    in_op = True
    current_op_hash = None
    current_op_global_arguments = None

    def __init__(self, facts: dict, local_dir: Path):
        self.facts = facts
        self.local_dir = local_dir
        self.asked: set[tuple[str, str | None]] = set()
        self.noop_description: str | None = None

    def noop(self, description: str) -> None:
        self.noop_description = description

    def get_temp_filename(self, *args, **kwargs) -> str:
        return "_tempfile_"

    def get_fact(self, fact_cls, *args, **kwargs):
        key = fact_key(fact_cls)
        if args:
            raise FixtureError(f"{key} asked with positional arguments {args}: name them")
        unknown = set(kwargs) - set(inspect.signature(fact_cls.command).parameters)
        if unknown:
            raise FixtureError(f"{key} asked with {sorted(unknown)}, which {fact_cls.__name__}.command does not take")
        if key not in self.facts:
            wanted = f"{{{json.dumps(fact_arguments(kwargs))}: ...}}" if kwargs else "its value"
            raise FixtureError(f"the operation asked for fact {key} ({fact_arguments(kwargs) or 'no arguments'}), "
                               f"which the fixture does not give: add \"{key}\": {wanted}")
        if not kwargs:
            self.asked.add((key, None))
            return parse_value(self.facts[key], self.local_dir)
        entries = self.facts[key]
        arguments = fact_arguments(kwargs)
        if not isinstance(entries, dict) or arguments not in entries:
            given = ", ".join(map(repr, entries)) if isinstance(entries, dict) else "a value without arguments"
            raise FixtureError(f"the operation asked for fact {key} with {arguments!r}; the fixture gives {given}")
        self.asked.add((key, arguments))
        return parse_value(entries[arguments], self.local_dir)

    def never_asked(self) -> list[str]:
        unused = []
        for key, entries in self.facts.items():
            if (key, None) in self.asked:
                continue
            if isinstance(entries, dict) and any((key, arguments) in self.asked for arguments in entries):
                unused += [f"{key} [{arguments}]" for arguments in entries if (key, arguments) not in self.asked]
            else:
                unused.append(key)
        return unused


# --- running a case ------------------------------------------------------------------


@dataclasses.dataclass
class Outcome:
    commands: list
    noop_description: str | None
    exception: BaseException | None


def render_command(command, local_dir: Path):
    if isinstance(command, str):  # as pyinfra/api/operation.py does
        command = StringCommand(command.strip())
    if isinstance(command, StringCommand):
        raw, masked = command.get_raw_value(), command.get_masked_value()
        rendered = raw if raw == masked else [raw, masked]
    elif isinstance(command, FileUploadCommand):
        src = command.src.getvalue() if hasattr(command.src, "getvalue") else str(command.src)
        rendered = ["upload", encode_value(src, local_dir), str(command.dest)]
    elif isinstance(command, FunctionCommand):
        rendered = [command.function.__name__, encode_value(list(command.args), local_dir),
                    encode_value(dict(command.kwargs), local_dir)]
    else:
        raise FixtureError(f"{command!r} is not a command pyinfra runs")
    if command.connector_arguments:
        rendered = {**command.connector_arguments, "command": rendered}
    return rendered


@contextmanager
def fixed_clock() -> Iterator[None]:
    lock = import_module("restobot.operations.lock")
    with patch.object(lock, "now", lambda: FIXED_NOW), \
            patch.object(lock, "time", types.SimpleNamespace(monotonic=lambda: FIXED_MONOTONIC)):
        yield


def check_case_shape(data: dict) -> None:
    unknown = set(data) - CASE_KEYS
    if unknown:
        raise FixtureError(f"unknown keys {sorted(unknown)} (known: {', '.join(sorted(CASE_KEYS))})")
    outcomes = [key for key in OUTCOME_KEYS if key in data]
    if len(outcomes) != 1:
        raise FixtureError(f"a case claims exactly one of {', '.join(OUTCOME_KEYS)}; this one has {outcomes or 'none'}")
    if "commands" in data and not data["commands"]:
        raise FixtureError("\"commands\": [] claims nothing: give \"noop_description\" for a state already reached")


def run_case(op_name: str, data: dict, local_dir: Path) -> Outcome:
    """Run the operation's generator with the fixture's facts; check the facts asked match those given."""
    check_case_shape(data)
    if op_name not in OPERATIONS:
        raise FixtureError(f"no operation {op_name!r} in restobot/operations (there are: {', '.join(sorted(OPERATIONS))})")
    op = OPERATIONS[op_name]
    for name, content in data.get("local_files", {}).items():
        (local_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (local_dir / name).write_text(content)
    args = parse_value(data.get("args", []), local_dir)
    kwargs = parse_value(data.get("kwargs", {}), local_dir)
    try:
        inspect.signature(op._inner).bind(*args, **kwargs)
    except TypeError as error:
        raise FixtureError(f"{op_name} cannot take these arguments: {error}") from None
    host = FakeHost(data.get("facts", {}), local_dir)
    commands, exception = [], None
    with ctx_state.use(FakeState()), ctx_host.use(host), fixed_clock():
        try:
            for command in op._inner(*args, **kwargs):
                commands.append(render_command(command, local_dir))
        except FixtureError:
            raise
        except Exception as error:  # noqa: BLE001 (the claim may be that the operation refuses)
            exception = error
    unused = host.never_asked()
    if unused and not (exception and "exception" not in data):
        raise FixtureError(f"the fixture gives facts {op_name} never asked for: {', '.join(unused)}")
    return Outcome(commands, host.noop_description, exception)


def assert_outcome(outcome: Outcome, data: dict, local_dir: Path) -> None:
    if outcome.exception is not None and "exception" not in data:
        raise outcome.exception
    if "exception" in data:
        wanted = data["exception"]
        assert outcome.exception is not None, f"expected {wanted['name']}, got commands {outcome.commands}"
        message = str(outcome.exception).replace(f"{local_dir}/", "local:")
        assert (type(outcome.exception).__name__, message) == (wanted["name"], wanted["message"])
        return
    if "noop_description" in data:
        assert outcome.commands == [], "expected no command (the state is reached), got:\n" + json.dumps(
            outcome.commands, indent=4)
        assert outcome.noop_description == data["noop_description"]
        return
    assert outcome.commands == data["commands"], "commands yielded:\n" + json.dumps(outcome.commands, indent=4)


def case_files() -> list[Path]:
    return sorted(CASES_DIR.glob("*/*.json"))


@pytest.mark.parametrize("case", case_files(), ids=lambda path: f"{path.parent.name}/{path.stem}")
def test_operation_case(case: Path, tmp_path: Path):
    data = json.loads(case.read_text())
    assert_outcome(run_case(case.parent.name, data, tmp_path), data, tmp_path)


# --- the fixtures cover every operation, and cannot rot ------------------------------


def cases_by_operation() -> dict[str, list[dict]]:
    cases: dict[str, list[dict]] = {}
    for path in case_files():
        cases.setdefault(path.parent.name, []).append(json.loads(path.read_text()))
    return cases


def test_every_case_directory_names_an_operation():
    directories = sorted(path.name for path in CASES_DIR.iterdir() if path.is_dir())
    unknown = [name for name in directories if name not in OPERATIONS]
    assert not unknown, f"case directories naming no operation of restobot/operations: {unknown}"
    stray = sorted(str(path.relative_to(CASES_DIR)) for path in CASES_DIR.rglob("*")
                   if path.is_file() and (path.suffix != ".json" or path.parent.parent != CASES_DIR))
    assert not stray, f"files the runner would not read (cases are operations/<operation>/<case>.json): {stray}"


def exported() -> dict[str, Callable]:
    return {name: getattr(restobot.operations, name) for name in restobot.operations.__all__}


def test_every_exported_name_is_an_operation_or_a_deploy():
    assert [name for name, obj in exported().items() if not (is_operation(obj) or is_deploy(obj))] == []


def test_every_operation_has_a_case_for_each_outcome():
    """Idempotent operations: a state already reached (noop) and one not (commands); the others: commands."""
    cases = cases_by_operation()
    missing = []
    for name, op in sorted(OPERATIONS.items()):
        claims = {key for case in cases.get(name, []) for key in OUTCOME_KEYS if key in case}
        wanted = {"commands", "noop_description"} if op._inner.is_idempotent else {"commands"}
        missing += [f"{name}: no {claim} case" for claim in sorted(wanted - claims)]
        if not op._inner.is_idempotent and "noop_description" in claims:
            missing.append(f"{name}: is_idempotent=False yet a case claims a noop")
    assert not missing, "\n".join(missing)


def test_every_exported_deploy_reaches_only_covered_operations():
    cases = cases_by_operation()
    for name, deploy in exported().items():
        if is_deploy(deploy):
            uncovered = sorted(op for op in reached_operations(deploy) if op not in cases)
            assert not uncovered, f"deploy {name} calls operations without cases: {uncovered}"


def test_host_provisioned_is_covered_through_its_operations():
    """The walk above finds operations called through nested deploys (firewall_closed, swap_enabled...)."""
    assert reached_operations(restobot.operations.host_provisioned) >= {
        "compose_plugin_uploaded", "firewall_default_deny", "swap_file_active",
    }


# --- the runner's own guards ----------------------------------------------------------

RELEASES_PRUNED = {
    "kwargs": {"layout": {"$type": "HostLayout", "base_dir": "/opt/resto"}, "keep": 5, "protected": []},
    "facts": {"deploy.DeployState": {"base_dir=/opt/resto": {"$type": "HostState"}},
              "deploy.PreDeployDumps": {"backups_dir=/opt/resto/backups": []},
              "deploy.ConfigDirs": {"configs_dir=/opt/resto/configs": ["set:"]}},
    "noop_description": "0 release(s) on the host, keeping up to 5",
}


def test_the_guard_case_passes_as_written(tmp_path):
    assert_outcome(run_case("releases_pruned", RELEASES_PRUNED, tmp_path), RELEASES_PRUNED, tmp_path)


def test_a_case_naming_no_operation_fails(tmp_path):
    with pytest.raises(FixtureError, match="no operation 'releases_purged'"):
        run_case("releases_purged", RELEASES_PRUNED, tmp_path)


def test_a_fact_never_asked_for_fails(tmp_path):
    data = {**RELEASES_PRUNED, "facts": {**RELEASES_PRUNED["facts"], "files.File": {"path=/opt/resto": None}}}
    with pytest.raises(FixtureError, match=r"never asked for: files\.File"):
        run_case("releases_pruned", data, tmp_path)


def test_fact_arguments_never_asked_for_fail(tmp_path):
    facts = {**RELEASES_PRUNED["facts"],
             "deploy.DeployState": {"base_dir=/opt/resto": {"$type": "HostState"}, "base_dir=/srv": None}}
    with pytest.raises(FixtureError, match=r"never asked for: deploy\.DeployState \[base_dir=/srv\]"):
        run_case("releases_pruned", {**RELEASES_PRUNED, "facts": facts}, tmp_path)


def test_a_fact_the_fixture_does_not_give_fails(tmp_path):
    with pytest.raises(FixtureError, match=r"asked for fact deploy\.DeployState \(base_dir=/opt/resto\)"):
        run_case("releases_pruned", {**RELEASES_PRUNED, "facts": {}}, tmp_path)


def test_fact_arguments_the_fixture_does_not_give_fail(tmp_path):
    facts = {"deploy.DeployState": {"base_dir=/srv": {"$type": "HostState"}}}
    with pytest.raises(FixtureError, match="with 'base_dir=/opt/resto'; the fixture gives 'base_dir=/srv'"):
        run_case("releases_pruned", {**RELEASES_PRUNED, "facts": facts}, tmp_path)


def test_a_case_claiming_two_outcomes_fails(tmp_path):
    with pytest.raises(FixtureError, match="exactly one of"):
        run_case("releases_pruned", {**RELEASES_PRUNED, "commands": ["true"]}, tmp_path)


def test_a_misspelt_key_fails(tmp_path):
    with pytest.raises(FixtureError, match=r"unknown keys \['fact'\]"):
        run_case("releases_pruned", {**RELEASES_PRUNED, "fact": {}}, tmp_path)
