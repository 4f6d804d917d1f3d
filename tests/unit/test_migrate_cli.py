"""The CLI surface that needs no database: URL redaction, flags, env mirrors, usage errors."""

import io

import pytest

from restobot.remote.migrate.runner import EXIT_USAGE, _parser, main, redact_url


@pytest.mark.parametrize(
    "url, expected",
    [
        ("postgresql://n8n:s3cret-pass@postgres:5432/n8n", "postgresql://n8n:***@postgres:5432/n8n"),
        ("postgres://u:p%40ss@h/db?sslmode=require", "postgres://u:***@h/db?sslmode=require"),
        ("postgresql://u@h/db?password=s3cret&sslmode=disable", "postgresql://u@h/db?password=***&sslmode=disable"),
        ("host=h user=u password=s3cret dbname=d", "host=h user=u password=*** dbname=d"),
        ("host=h password='a b c' dbname=d", "host=h password=*** dbname=d"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
    ],
)
def test_redact_url_hides_the_password(url, expected):
    assert redact_url(url) == expected


def test_missing_database_url_is_a_usage_error_naming_flag_and_env():
    err = io.StringIO()
    code = main(["status"], stdout=io.StringIO(), stderr=err, environ={})
    assert code == EXIT_USAGE
    assert "pass --database-url or set DATABASE_URL" in err.getvalue()
    assert "Traceback" not in err.getvalue()


def test_negative_lock_timeout_is_a_usage_error():
    err = io.StringIO()
    code = main(["apply", "--lock-timeout", "-1"], stdout=io.StringIO(), stderr=err,
                environ={"DATABASE_URL": "postgresql://u:p@127.0.0.1:1/d"})
    assert code == EXIT_USAGE and "--lock-timeout must be 0 or more" in err.getvalue()


def test_bad_lock_timeout_env_is_a_usage_error_naming_it():
    err = io.StringIO()
    code = main(["apply"], stdout=io.StringIO(), stderr=err,
                environ={"DATABASE_URL": "postgresql://u:p@127.0.0.1:1/d", "MIGRATE_LOCK_TIMEOUT": "soon"})
    assert code == EXIT_USAGE and "MIGRATE_LOCK_TIMEOUT='soon'" in err.getvalue()


@pytest.mark.parametrize(
    "argv",
    [
        ["--database-url", "U", "--dir", "D", "apply", "--dry-run", "--lock-timeout", "5", "--allow-out-of-order"],
        ["apply", "--database-url", "U", "--dir", "D", "--dry-run", "--lock-timeout", "5", "--allow-out-of-order"],
    ],
)
def test_common_flags_work_before_or_after_the_command(argv):
    args = _parser().parse_args(argv)
    assert (args.command, args.database_url, args.dir, args.dry_run, args.lock_timeout, args.allow_out_of_order) == (
        "apply", "U", "D", True, 5.0, True)


def test_a_command_is_required():
    with pytest.raises(SystemExit) as exit_info:
        _parser().parse_args([])
    assert exit_info.value.code == 2
