"""Rotating a secret (restobot/rotation.py and ``resto STAGE secrets rotate``): which secrets, where the
value comes from, the secrets file rewritten in place, the role's password as a SCRAM verifier, and the
command's order against a scripted host: the lock, the database, the audit, then the deploy.

The real database accepting the verifier is tests/integration/test_rotation.py; the rotation on the
deployed stack (the next deploy and the stack working) is tests/e2e/test_secrets.py.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import stat
import sys
from datetime import datetime, timezone

import pytest

import restobot.settings
from restobot import cli, commands, rotation
from restobot.commands import HostLayout
from restobot.operations.release import release_id
from restobot.release_archive import build_release
from restobot.rotation import (
    NOT_ROTATABLE,
    ROTATIONS,
    RotationRefused,
    role_password_sql,
    scram_sha256_verifier,
    secrets_file_written,
    with_value,
    with_values,
)
from restobot.settings import SECRET_ENV, SettingsError, load_inventory, load_settings, read_env_file
from tests.unit.test_cli import connections_refused, run, scripted_host

LAYOUT = HostLayout()
PREVIOUS = "3f9c1a7e5b2d4068a1c3e5f7092b4d6f"  # pragma: allowlist secret (a throwaway app secret)


def test_every_secret_is_rotatable_or_says_why_not():
    assert set(ROTATIONS) | set(NOT_ROTATABLE) == set(SECRET_ENV)
    assert not set(ROTATIONS) & set(NOT_ROTATABLE)


@pytest.mark.parametrize(("name", "named"), [
    ("N8N_ENCRYPTION_KEY", "n8n's stored credentials are encrypted with it"),
    ("OFFSITE_BACKUP_PASSPHRASE", "the off-site repository is encrypted with it"),
    ("WA_PHONE_NUMBER_ID", "not a secret"),
    ("POSTGRES_PASSWORT", "unknown secret 'POSTGRES_PASSWORT'; the rotatable secrets are ADMIN_API_TOKEN"),  # pragma: allowlist secret
])
def test_a_secret_that_is_not_rotated_says_why(name, named):
    with pytest.raises(RotationRefused, match="NAME: ") as refused:
        rotation.rotation_for(name)
    assert named in str(refused.value)


def test_only_the_named_line_is_rewritten_and_quoted():
    text = "# comment\nPOSTGRES_PASSWORD=old\nexport REDIS_PASSWORD = 'r'\nPOSTGRES_PASSWORD_X=keep\n"
    assert with_value(text, "REDIS_PASSWORD", "new-value") == (
        "# comment\nPOSTGRES_PASSWORD=old\nexport REDIS_PASSWORD='new-value'\nPOSTGRES_PASSWORD_X=keep\n")  # pragma: allowlist secret
    assert with_value(text, "POSTGRES_PASSWORD", "p") == text.replace("POSTGRES_PASSWORD=old", "POSTGRES_PASSWORD='p'")


@pytest.mark.parametrize("value", ["it's", "two\nlines"])
def test_a_value_the_file_cannot_keep_is_refused(value):
    with pytest.raises(RotationRefused, match="quote or a line break"):
        with_value("A=1\n", "A", value)


def test_the_rewritten_file_reads_back_the_new_value_and_is_private(tmp_path):
    path = tmp_path / "production.env"
    path.write_text("A=1\nB='2'\n")
    path.chmod(0o644)
    secrets_file_written(path, with_value(path.read_text(), "B", "x-y_z"))
    assert read_env_file(path) == {"A": "1", "B": "x-y_z"}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["production.env"]  # no temporary file left


def test_the_scram_verifier_is_rfc_5802s_for_the_salt_and_iterations():
    salt = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
    verifier = scram_sha256_verifier("pencil", salt=salt, iterations=4096)
    header, keys = verifier.split("$", 1)[1].split("$")
    assert header == "4096:W22ZaJ0SNY7soEsUEjb6gQ=="
    salted = hashlib.pbkdf2_hmac("sha256", b"pencil", salt, 4096)
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    assert keys.split(":")[1] == base64.b64encode(server_key).decode()
    assert scram_sha256_verifier("pencil") != scram_sha256_verifier("pencil")  # a fresh salt each time
    assert "pencil" not in verifier


def test_the_role_statement_refuses_anything_it_would_have_to_quote():
    verifier = scram_sha256_verifier("p")
    assert role_password_sql("n8n", verifier) == f"ALTER ROLE \"n8n\" PASSWORD '{verifier}';\n"
    with pytest.raises(ValueError, match="not a plain PostgreSQL role name"):
        role_password_sql('n8n"; drop', verifier)
    with pytest.raises(ValueError, match="not a SCRAM-SHA-256 verifier"):
        role_password_sql("n8n", "clear-text'; --")


# --- the command against a scripted host --------------------------------------------------------


@pytest.fixture
def kept_in_file(monkeypatch, secret_env, tmp_path):
    """The production secrets in their file (none in the environment); the host runs the release this
    checkout renders as v7; the deploy is a command that succeeds (``deploys`` records its argv)."""
    host = scripted_host(monkeypatch)
    path = tmp_path / "production.env"
    path.write_text("".join(f"{name}={value}\n" for name, value in secret_env.items()))
    path.chmod(0o600)
    for name in SECRET_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(restobot.settings, "secrets_file", lambda stage, root=None: path)
    monkeypatch.setattr(cli, "secrets_file", lambda stage: path)
    settings = load_settings(cli.load_target("production", cli.check_stage("production", None)).data["resto"])
    current = release_id("v7", build_release(settings, "v7").sha256)
    host.on(lambda argv: argv[:2] == ["sh", "-c"] and argv[2].startswith("readlink"), out=f"releases/{current}\n")
    host.deploys = []
    host.deploy_exit = 0

    def deploy_argv(inventory, name):
        host.deploys.append(name)
        return [sys.executable, "-c", f"import sys; sys.exit({host.deploy_exit})"]

    monkeypatch.setattr(cli, "deploy_argv", deploy_argv)
    host.path, host.current, host.old = path, current, dict(secret_env)
    return host


def named_steps(host) -> list[str]:
    named = {tuple(commands.make_directory(LAYOUT.lock_dir)): "lock", tuple(commands.remove_tree(LAYOUT.lock_dir)): "unlock",
             tuple(commands.role_password_set()): "alter role"}
    return [named.get(argv, "audit" if LAYOUT.audit_log in argv else None) for argv in host.remote.calls
            if argv in named or LAYOUT.audit_log in argv]


def test_postgres_password_changes_the_role_then_the_file_then_deploys_the_same_release(capsys, kept_in_file):
    host = kept_in_file
    status, out, err = run(capsys, "production", "secrets", "rotate", "POSTGRES_PASSWORD", "--yes", "--json")
    assert status == cli.EXIT_OK, err
    new = read_env_file(host.path)["POSTGRES_PASSWORD"]
    assert new != host.old["POSTGRES_PASSWORD"] and len(new) >= 32
    assert {k: v for k, v in read_env_file(host.path).items() if k != "POSTGRES_PASSWORD"} == \
        {k: v for k, v in host.old.items() if k != "POSTGRES_PASSWORD"}
    assert named_steps(host) == ["lock", "alter role", "audit", "unlock"]
    assert host.deploys == ["v7"]
    statement = host.remote.stdins[tuple(commands.role_password_set())]
    assert statement.startswith('ALTER ROLE "n8n" PASSWORD \'SCRAM-SHA-256$4096:')
    assert new not in statement
    [audit] = [argv for argv in host.remote.calls if LAYOUT.audit_log in argv]
    assert "secrets rotate POSTGRES_PASSWORD" in " ".join(audit) and new not in " ".join(audit)
    data = json.loads(out)
    assert (data["secret"], data["previous_release"], data["database_role_changed"]) == \
        ("POSTGRES_PASSWORD", host.current, True)
    assert new not in out + err


def test_a_generated_secret_other_than_the_database_password_leaves_the_database_alone(capsys, kept_in_file):
    status, out, err = run(capsys, "production", "secrets", "rotate", "ADMIN_API_TOKEN", "--yes")
    assert status == cli.EXIT_OK, err
    assert named_steps(kept_in_file) == ["lock", "audit", "unlock"]
    assert read_env_file(kept_in_file.path)["ADMIN_API_TOKEN"] != kept_in_file.old["ADMIN_API_TOKEN"]
    assert "still to do: give the new token to whoever calls the admin API" in out


def test_an_issued_secret_is_read_from_stdin(capsys, kept_in_file, monkeypatch):
    issued = "0123456789abcdef0123456789abcdef"  # pragma: allowlist secret (a throwaway app secret)
    monkeypatch.setattr(sys, "stdin", __import__("io").StringIO(issued + "\n"))
    status, _, err = run(capsys, "production", "secrets", "rotate", "META_APP_SECRET", "--from-stdin", "--yes")
    assert status == cli.EXIT_OK, err
    assert read_env_file(kept_in_file.path)["META_APP_SECRET"] == issued


def test_a_failed_role_change_puts_the_file_back_and_does_not_deploy(capsys, kept_in_file):
    host = kept_in_file
    before = host.path.read_text()
    host.on(lambda argv: list(argv) == commands.role_password_set(), status=2, err="psql: connection refused")
    status, _, err = run(capsys, "production", "secrets", "rotate", "POSTGRES_PASSWORD", "--yes")
    assert status == cli.EXIT_FAILED
    assert "changing the database role's password failed on the host" in err
    assert host.path.read_text() == before
    assert host.deploys == []
    assert named_steps(host)[-2:] == ["audit", "unlock"]


def test_a_failed_deploy_says_what_is_changed_and_how_to_finish(capsys, kept_in_file):
    kept_in_file.deploy_exit = 1
    status, _, err = run(capsys, "production", "secrets", "rotate", "REDIS_PASSWORD", "--yes")
    assert status == cli.EXIT_FAILED
    assert "the deploy failed (exit 1" in err
    assert "REDIS_PASSWORD is already changed in" in err
    assert "deploy.py --data release=v7" in err


def test_a_checkout_that_renders_another_release_changes_nothing(capsys, kept_in_file):
    host = kept_in_file
    host.on(lambda argv: argv[:2] == ["sh", "-c"] and argv[2].startswith("readlink"), out="releases/v7-0badc0de\n")
    status, _, err = run(capsys, "production", "secrets", "rotate", "REDIS_PASSWORD", "--yes")
    assert status == cli.EXIT_FAILED
    assert "runs v7-0badc0de, but this checkout" in err and f"renders {host.current}" in err
    assert "git checkout v7" in err and "nothing changed" in err
    assert read_env_file(host.path) == host.old
    assert named_steps(host) == [] and host.deploys == []


@pytest.mark.parametrize(("argv", "stdin", "named"), [
    (["N8N_ENCRYPTION_KEY", "--yes"], "", "n8n's stored credentials are encrypted with it"),
    (["NOPE", "--yes"], "", "NAME: unknown secret 'NOPE'"),
    (["META_APP_SECRET", "--yes"], "", "META_APP_SECRET is issued by its provider, not generated"),
    (["META_APP_SECRET", "--from-stdin"], "0123456789abcdef0123456789abcdef", "--from-stdin: stdin holds the value"),  # pragma: allowlist secret
    (["WA_API_TOKEN", "--from-stdin", "--yes"], "  \n", "paste the new value on stdin, on one line (it was empty)"),
    (["WA_API_TOKEN", "--from-stdin", "--yes"], "a\nb\n", "(it was several lines)"),
    (["META_APP_SECRET", "--from-stdin", "--yes"], "not-hex", "META_APP_SECRET: the new value is refused by the "
                                                              "settings"),
    (["REDIS_PASSWORD"], "", "there is no terminal to ask on"),
])
def test_bad_input_exits_2_changes_nothing_and_connects_nowhere(capsys, kept_in_file, monkeypatch, argv, stdin, named):
    monkeypatch.setattr(sys, "stdin", __import__("io").StringIO(stdin))
    monkeypatch.setattr(cli, "stdin_is_tty", lambda: False)
    status, out, err = run(capsys, "production", "secrets", "rotate", *argv)
    assert status == cli.EXIT_USAGE, err
    assert named in err and "nothing changed" in err
    assert read_env_file(kept_in_file.path) == kept_in_file.old
    assert kept_in_file.deploys == []
    assert not any(LAYOUT.lock_dir in " ".join(argv) for argv in (kept_in_file.remote.calls if kept_in_file.remote else []))


def test_a_secret_kept_in_the_environment_is_refused_before_connecting(capsys, monkeypatch, with_secrets):
    connections_refused(monkeypatch)
    status, _, err = run(capsys, "production", "secrets", "rotate", "REDIS_PASSWORD", "--yes")
    assert status == cli.EXIT_USAGE
    assert "REDIS_PASSWORD is set in this process's environment (a CI secret?)" in err


def test_the_secrets_folder_can_be_kept_outside_the_checkout(monkeypatch, tmp_path):
    monkeypatch.delenv(restobot.settings.SECRETS_DIR_ENV, raising=False)
    assert restobot.settings.secrets_file("production", tmp_path) == tmp_path / "secrets" / "production.env"
    monkeypatch.setenv(restobot.settings.SECRETS_DIR_ENV, str(tmp_path / "vault"))
    assert restobot.settings.secrets_file("production", tmp_path) == tmp_path / "vault" / "production.env"


# --- META_APP_SECRET: the old one accepted for a while ------------------------------------------


def test_a_missing_line_is_appended_and_a_present_one_rewritten():
    text = "META_APP_SECRET=old\nA=1"
    assert with_values(text, {"META_APP_SECRET": "new", "META_APP_SECRET_PREVIOUS": "old"}) == (  # pragma: allowlist secret
        "META_APP_SECRET='new'\nA=1\nMETA_APP_SECRET_PREVIOUS='old'\n")  # pragma: allowlist secret


def test_rotating_the_app_secret_writes_the_old_one_and_the_end_of_its_overlap():
    now = datetime(2026, 12, 2, 5, 0, 0, 123456, tzinfo=timezone.utc)
    assert ROTATIONS["META_APP_SECRET"].lines_written("n" * 32, "o" * 32, now, 3600) == {
        "META_APP_SECRET": "n" * 32, "META_APP_SECRET_PREVIOUS": "o" * 32,  # pragma: allowlist secret
        "META_APP_SECRET_PREVIOUS_UNTIL": "2026-12-02T06:00:00+00:00"}  # pragma: allowlist secret
    assert ROTATIONS["REDIS_PASSWORD"].lines_written("n", "o", now, 3600) == {"REDIS_PASSWORD": "n"}


def test_the_previous_app_secret_needs_its_end_and_the_length_of_a_secret(secret_env):
    base = load_inventory("production", secret_env)["production"][0][1]["resto"]
    both = {**secret_env, "META_APP_SECRET_PREVIOUS": PREVIOUS, "META_APP_SECRET_PREVIOUS_UNTIL": "2026-12-03T05:00:00Z"}  # pragma: allowlist secret
    meta = load_settings(base, both).meta
    assert meta.app_secret_previous.get_secret_value() == PREVIOUS
    assert meta.app_secret_previous_until == datetime(2026, 12, 3, 5, tzinfo=timezone.utc)
    with pytest.raises(SettingsError, match="app_secret_previous and app_secret_previous_until: set both or neither"):
        load_settings(base, {**secret_env, "META_APP_SECRET_PREVIOUS": PREVIOUS})
    with pytest.raises(SettingsError, match="meta.app_secret_previous"):
        load_settings(base, {**both, "META_APP_SECRET_PREVIOUS": "short"})  # pragma: allowlist secret
    with pytest.raises(SettingsError, match="meta.app_secret_previous_until"):
        load_settings(base, {**both, "META_APP_SECRET_PREVIOUS_UNTIL": "2026-12-03T05:00:00"})  # no zone  # pragma: allowlist secret


def test_n8n_gets_the_previous_app_secret_and_its_end(secret_env):
    from restobot.render import render_release

    base = load_inventory("production", secret_env)["production"][0][1]["resto"]
    both = {**secret_env, "META_APP_SECRET_PREVIOUS": PREVIOUS, "META_APP_SECRET_PREVIOUS_UNTIL": "2026-12-03T05:00:00Z"}  # pragma: allowlist secret
    env = render_release(load_settings(base, both))["env/n8n.env"].text
    assert f"META_APP_SECRET_PREVIOUS='{PREVIOUS}'\n" in env
    assert "META_APP_SECRET_PREVIOUS_UNTIL='2026-12-03T05:00:00+00:00'\n" in env  # pragma: allowlist secret
    plain = render_release(load_settings(base, secret_env))["env/n8n.env"].text
    assert "META_APP_SECRET_PREVIOUS=''\n" in plain and "META_APP_SECRET_PREVIOUS_UNTIL=''\n" in plain


def test_the_app_secret_rotation_keeps_the_old_one_for_the_overlap(capsys, kept_in_file, monkeypatch):
    issued = "fedcba9876543210fedcba9876543210"  # pragma: allowlist secret
    monkeypatch.setattr(sys, "stdin", __import__("io").StringIO(issued))
    status, out, err = run(capsys, "production", "secrets", "rotate", "META_APP_SECRET", "--from-stdin", "--yes",
                           "--overlap", "2h", "--json")
    assert status == cli.EXIT_OK, err
    kept = read_env_file(kept_in_file.path)
    assert (kept["META_APP_SECRET"], kept["META_APP_SECRET_PREVIOUS"]) == (issued, kept_in_file.old["META_APP_SECRET"])
    until = datetime.fromisoformat(kept["META_APP_SECRET_PREVIOUS_UNTIL"])
    assert abs((until - datetime.now(timezone.utc)).total_seconds() - 7200) < 60
    assert json.loads(out)["old_value_accepted_until"] == kept["META_APP_SECRET_PREVIOUS_UNTIL"]


@pytest.mark.parametrize(("argv", "named"), [
    (["REDIS_PASSWORD", "--overlap", "1h", "--yes"], "--overlap: only META_APP_SECRET keeps its old value"),
    (["META_APP_SECRET", "--overlap", "8d", "--from-stdin", "--yes"], "--overlap: at most 7d"),
    (["META_APP_SECRET_PREVIOUS", "--yes"], "which rotating META_APP_SECRET sets"),
])
def test_bad_overlap_input_exits_2_and_changes_nothing(capsys, kept_in_file, monkeypatch, argv, named):
    monkeypatch.setattr(sys, "stdin", __import__("io").StringIO("fedcba9876543210fedcba9876543210"))  # pragma: allowlist secret
    status, _, err = run(capsys, "production", "secrets", "rotate", *argv)
    assert status == cli.EXIT_USAGE and named in err, err
    assert read_env_file(kept_in_file.path) == kept_in_file.old


def test_the_same_value_again_is_refused(capsys, kept_in_file, monkeypatch):
    monkeypatch.setattr(sys, "stdin", __import__("io").StringIO(kept_in_file.old["META_APP_SECRET"]))
    status, _, err = run(capsys, "production", "secrets", "rotate", "META_APP_SECRET", "--from-stdin", "--yes")
    assert status == cli.EXIT_USAGE and "the new value is the one already in" in err
