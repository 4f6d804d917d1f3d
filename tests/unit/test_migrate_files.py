"""load_migrations: file names, ordering, checksums and the no-transaction header."""

import hashlib
from pathlib import Path

import pytest

from restobot.remote.migrate.lexer import DEFAULT_DIR, RefusedError, load_migrations


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text)
    return path


def test_files_are_ordered_by_numeric_version(tmp_path):
    write(tmp_path, "0010_ten.sql", "SELECT 10;")
    write(tmp_path, "0002_two.sql", "SELECT 2;")
    write(tmp_path, "00001_one.sql", "SELECT 1;")
    assert [m.filename for m in load_migrations(tmp_path)] == ["00001_one.sql", "0002_two.sql", "0010_ten.sql"]


def test_non_sql_files_are_ignored(tmp_path):
    write(tmp_path, "README.md", "notes")
    write(tmp_path, "0001_one.sql", "SELECT 1;")
    assert [m.filename for m in load_migrations(tmp_path)] == ["0001_one.sql"]


def test_checksum_is_sha256_of_the_file_bytes(tmp_path):
    path = write(tmp_path, "0001_one.sql", "SELECT 1;\n")
    assert load_migrations(tmp_path)[0].checksum == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("name", ["1_short.sql", "0001-dash.sql", "0001_Upper.sql", "v0001_x.sql", "0001_.sql"])
def test_badly_named_sql_file_is_refused_naming_it_and_the_rule(tmp_path, name):
    write(tmp_path, name, "SELECT 1;")
    with pytest.raises(RefusedError) as err:
        load_migrations(tmp_path)
    assert name in str(err.value) and "NNNN_description.sql" in str(err.value)


def test_duplicate_version_is_refused_naming_both_files(tmp_path):
    write(tmp_path, "0003_a.sql", "SELECT 1;")
    write(tmp_path, "0003_b.sql", "SELECT 2;")
    with pytest.raises(RefusedError, match=r"0003_a\.sql and 0003_b\.sql share version 0003"):
        load_migrations(tmp_path)


def test_missing_directory_names_it_and_the_flag(tmp_path):
    with pytest.raises(RefusedError, match=r"does not exist; pass --dir or set MIGRATIONS_DIR"):
        load_migrations(tmp_path / "nope")


def test_files_are_transactional_by_default(tmp_path):
    write(tmp_path, "0001_one.sql", "-- a comment\nSELECT 1;")
    assert load_migrations(tmp_path)[0].transactional is True


def test_no_transaction_header_opts_out(tmp_path):
    write(tmp_path, "0001_idx.sql", "-- Build the index without locking writes.\n-- migrate:no-transaction\n\n"
          "CREATE INDEX CONCURRENTLY IF NOT EXISTS i ON t (c);")
    assert load_migrations(tmp_path)[0].transactional is False


def test_no_transaction_marker_below_the_header_is_refused(tmp_path):
    write(tmp_path, "0001_late.sql", "SELECT 1;\n-- migrate:no-transaction\nSELECT 2;")
    with pytest.raises(RefusedError, match=r"0001_late\.sql line 2: .* must be in the file's header"):
        load_migrations(tmp_path)


@pytest.mark.parametrize("statement", ["BEGIN", "COMMIT", "ROLLBACK", "START TRANSACTION", "end"])
def test_transaction_control_in_a_transactional_file_is_refused(tmp_path, statement):
    write(tmp_path, "0001_tx.sql", f"CREATE TABLE a (id int);\n{statement};\n")
    with pytest.raises(RefusedError) as err:
        load_migrations(tmp_path)
    assert "0001_tx.sql statement 2 (line 2)" in str(err.value) and "migrate:no-transaction" in str(err.value)


def test_begin_inside_a_function_body_is_not_transaction_control(tmp_path):
    write(tmp_path, "0001_fn.sql", "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $$ BEGIN RETURN 1; END $$;")
    assert load_migrations(tmp_path)[0].transactional is True


def test_create_index_concurrently_without_the_header_is_refused_with_the_way_out(tmp_path):
    write(tmp_path, "0001_idx.sql", "CREATE INDEX CONCURRENTLY i ON t (c);")
    with pytest.raises(RefusedError, match=r"0001_idx\.sql statement 1 .*cannot run inside a transaction.*"
                                           r"migrate:no-transaction"):
        load_migrations(tmp_path)


def test_empty_file_is_refused(tmp_path):
    write(tmp_path, "0001_empty.sql", "-- nothing yet\n")
    with pytest.raises(RefusedError, match=r"0001_empty\.sql: holds no SQL statement"):
        load_migrations(tmp_path)


def test_unterminated_string_is_refused_with_its_line(tmp_path):
    write(tmp_path, "0001_bad.sql", "SELECT 1;\nSELECT 'oops;\n")
    with pytest.raises(RefusedError, match=r"0001_bad\.sql line 2, column 8: unterminated quoted string"):
        load_migrations(tmp_path)


def test_the_repo_schema_loads_in_order_and_every_file_is_transactional():
    migrations = load_migrations(DEFAULT_DIR)
    assert [m.filename for m in migrations] == [
        "0001_inbound_messages.sql",
        "0002_outbound_messages.sql",
        "0003_security_events.sql",
        "0004_api_clients.sql",
        "0005_alert_state.sql",
        "0006_inbound_redrive.sql",
        "0007_quarantine.sql",
        "0008_outbound_send_started.sql",
        "0009_outbound_lease_setting.sql",
        "0010_instagram_echoes.sql",
    ]
    assert all(m.transactional for m in migrations)
