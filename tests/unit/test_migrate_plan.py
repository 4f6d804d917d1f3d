"""make_plan / Plan.problems: what a run applies and what it refuses (no database)."""

from datetime import datetime, timezone
from pathlib import Path

from restobot.remote.migrate.lexer import Migration
from restobot.remote.migrate.plan import Applied, make_plan

WHEN = datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)


def migration(filename: str, checksum: str = "a" * 64) -> Migration:
    return Migration(int(filename.split("_")[0]), filename, Path(filename), checksum, True, "SELECT 1;", ())


def applied(filename: str, checksum: str = "a" * 64) -> Applied:
    return Applied(filename, checksum, WHEN, 5)


FILES = [migration("0001_a.sql"), migration("0002_b.sql"), migration("0003_c.sql")]


def test_empty_database_has_every_file_pending():
    plan = make_plan(FILES, {})
    assert [m.filename for m in plan.pending] == ["0001_a.sql", "0002_b.sql", "0003_c.sql"]
    assert plan.problems() == []


def test_up_to_date_database_has_nothing_pending():
    plan = make_plan(FILES, {m.filename: applied(m.filename) for m in FILES})
    assert plan.pending == () and plan.problems() == []


def test_upgrade_has_only_the_new_files_pending():
    plan = make_plan(FILES, {"0001_a.sql": applied("0001_a.sql")})
    assert [m.filename for m in plan.pending] == ["0002_b.sql", "0003_c.sql"]


def test_edited_applied_file_is_a_problem_naming_it():
    plan = make_plan(FILES, {"0001_a.sql": applied("0001_a.sql", checksum="b" * 64)})
    (problem,) = plan.problems()
    assert problem.startswith("0001_a.sql was applied on 2026-11-01 12:00:00 UTC")
    assert "must not be edited" in problem and "new migration file" in problem


def test_unknown_applied_file_is_a_rollback_problem():
    plan = make_plan(FILES[:2], {m.filename: applied(m.filename) for m in FILES})
    (problem,) = plan.problems()
    assert "this release does not know: 0003_c.sql" in problem
    assert "rollback to an older release" in problem and "nothing was touched" in problem


def test_out_of_order_file_names_both_versions():
    plan = make_plan(FILES, {"0001_a.sql": applied("0001_a.sql"), "0003_c.sql": applied("0003_c.sql")})
    (problem,) = plan.problems()
    assert "0002_b.sql (version 0002) is pending but 0003_c.sql (version 0003) is already applied" in problem
    assert "--allow-out-of-order" in problem


def test_out_of_order_file_is_pending_when_allowed():
    plan = make_plan(FILES, {"0001_a.sql": applied("0001_a.sql"), "0003_c.sql": applied("0003_c.sql")})
    assert plan.problems(allow_out_of_order=True) == []
    assert [m.filename for m in plan.pending] == ["0002_b.sql"]


def test_every_problem_is_reported_at_once():
    files = [migration("0001_a.sql"), migration("0002_b.sql"), migration("0004_d.sql")]
    ledger = {
        "0001_a.sql": applied("0001_a.sql", checksum="c" * 64),
        "0003_c.sql": applied("0003_c.sql"),
        "0004_d.sql": applied("0004_d.sql"),
    }
    problems = make_plan(files, ledger).problems()
    assert len(problems) == 3
    assert any("0003_c.sql" in p and "does not know" in p for p in problems)
    assert any(p.startswith("0001_a.sql was applied") for p in problems)
    assert any(p.startswith("0002_b.sql (version 0002) is pending") for p in problems)
