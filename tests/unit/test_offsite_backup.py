"""The off-site backup's settings (offsite_backup) and what is rendered from them (pgBackRest, postgres)."""

from __future__ import annotations

import base64
import re
import secrets

import pytest
import yaml

from restobot import cli
from restobot.facts.offsite import OffsiteBackupInfo, OffsiteRepository
from restobot.release_archive import ReleaseError, build_release, postgres_image_name
from restobot.render import (
    SECRET_MODE,
    OffsiteBackupDisabled,
    OffsiteKeyUnreadable,
    RenderContext,
    postgres_archiving_args,
    render_offsite_backup,
    render_release,
)
from restobot.secrets import generate_secrets
from restobot.settings import SettingsError, load_settings

# A real ed25519 public key (public: not a secret) and the fingerprint `ssh-keygen -lf` prints for it.
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINsycvnFokzgwk+wg/3g55PO3cJm/0hW975MP6JNfpp8"  # pragma: allowlist secret
HOST_KEY_SSH_KEYGEN_SHA256 = "Xmw04Vi16OrIUw5THAgCpL1ur//iCcf8Qrs8oJnfMZI"  # pragma: allowlist secret
SFTP = {"host": "backup.example.net", "port": 23, "user": "u12345", "path": "/backups/resto", "host_key": HOST_KEY,
        "key_path": "/home/ops/.ssh/resto-offsite"}
S3 = {"endpoint": "s3.eu-west-3.amazonaws.com", "bucket": "resto-backups", "region": "eu-west-3"}


def offsite(production_data: dict, **values) -> dict:
    production_data["offsite_backup"] = values
    return production_data


def problems_of(data: dict, environ: dict) -> list[str]:
    with pytest.raises(SettingsError) as caught:
        load_settings(data, environ)
    return caught.value.problems


# --- settings ---------------------------------------------------------------


def test_defaults_are_the_issue_ones(production_data, secret_env):
    settings = load_settings(production_data, secret_env).offsite_backup
    assert (settings.enabled, settings.repository, settings.stanza) == (False, "sftp", "restobot")
    assert (settings.pitr_days, settings.full_interval_days, settings.full_backups_kept) == (7, 7, 4)
    assert settings.archive_timeout_seconds == 60


def test_generated_secrets_hold_a_passphrase_but_no_bucket_keys():
    generated = generate_secrets()
    assert len(generated["OFFSITE_BACKUP_PASSPHRASE"]) >= 32
    assert "OFFSITE_S3_KEY" not in generated and "OFFSITE_S3_KEY_SECRET" not in generated
    assert generate_secrets()["OFFSITE_BACKUP_PASSPHRASE"] != generated["OFFSITE_BACKUP_PASSPHRASE"]


def test_enabled_sftp_loads(production_data, secret_env):
    settings = load_settings(offsite(production_data, enabled=True, sftp=SFTP), secret_env).offsite_backup
    assert settings.sftp is not None and settings.sftp.host_key == HOST_KEY
    assert settings.cipher_passphrase is not None
    assert settings.cipher_passphrase.get_secret_value() == secret_env["OFFSITE_BACKUP_PASSPHRASE"]


def test_enabled_sftp_without_its_host_is_refused(production_data, secret_env):
    assert problems_of(offsite(production_data, enabled=True), secret_env) == [
        "offsite_backup.sftp: required while enabled is true and repository is 'sftp' "
        "(host, user, host_key; or set enabled: false)"
    ]


def test_enabled_without_passphrase_names_the_variable(production_data, secret_env):
    del secret_env["OFFSITE_BACKUP_PASSPHRASE"]
    [problem] = problems_of(offsite(production_data, enabled=True, sftp=SFTP), secret_env)
    assert problem.startswith("offsite_backup.cipher_passphrase: required while enabled is true (set "
                              "OFFSITE_BACKUP_PASSPHRASE")
    assert "keep a copy off the VPS" in problem


def test_disabled_needs_no_passphrase(production_data, secret_env):
    del secret_env["OFFSITE_BACKUP_PASSPHRASE"]
    assert load_settings(production_data, secret_env).offsite_backup.cipher_passphrase is None


@pytest.mark.parametrize("passphrase, rule", [
    ("Zq9-short-Zq9", "must be at least 32 characters long"),
    ("changeme-" + "Zq9" * 10, "looks like a placeholder; generate a real value"),
    ("Zq9'" + "a" * 40, "must not contain quotes, backslashes or line breaks"),
])
def test_weak_passphrase_is_refused_without_showing_it(production_data, secret_env, passphrase, rule):
    secret_env["OFFSITE_BACKUP_PASSPHRASE"] = passphrase
    with pytest.raises(SettingsError) as caught:
        load_settings(offsite(production_data, enabled=True, sftp=SFTP), secret_env)
    assert caught.value.problems == [f"offsite_backup.cipher_passphrase: {rule}"]
    assert "Zq9" not in str(caught.value)


def test_host_key_must_be_an_openssh_key(production_data, secret_env):
    [problem] = problems_of(offsite(production_data, enabled=True, sftp={**SFTP, "host_key": "AAAAC3Nza"}),
                            secret_env)
    assert problem.startswith("offsite_backup.sftp.host_key: must be an OpenSSH public host key such as "
                              "'ssh-ed25519 AAAA...'")


def test_host_key_with_the_host_name_in_front_is_refused(production_data, secret_env):
    [problem] = problems_of(
        offsite(production_data, enabled=True, sftp={**SFTP, "host_key": f"backup.example.net {HOST_KEY}"}),
        secret_env)
    assert problem.startswith("offsite_backup.sftp.host_key: starts with a host name ('backup.example.net')")


def test_host_key_is_required(production_data, secret_env):
    sftp = {key: value for key, value in SFTP.items() if key != "host_key"}
    assert problems_of(offsite(production_data, enabled=True, sftp=sftp), secret_env) == [
        "offsite_backup.sftp.host_key: required"
    ]


def test_relative_repository_path_is_refused(production_data, secret_env):
    [problem] = problems_of(offsite(production_data, enabled=True, sftp={**SFTP, "path": "backups"}), secret_env)
    assert problem.startswith("offsite_backup.sftp.path: must be an absolute path")


def test_retention_that_cannot_hold_the_window_is_refused(production_data, secret_env):
    data = offsite(production_data, enabled=True, sftp=SFTP, pitr_days=30, full_backups_kept=4)
    assert problems_of(data, secret_env) == [
        "offsite_backup.full_backups_kept: 4 full backups every 7 days cannot hold a 30-day point-in-time "
        "window (it needs 6); raise full_backups_kept or lower pitr_days"
    ]


@pytest.mark.parametrize("seconds", [0, 5, 3601])
def test_archive_timeout_out_of_range_is_refused(production_data, secret_env, seconds):
    [problem] = problems_of(offsite(production_data, archive_timeout_seconds=seconds), secret_env)
    assert problem.startswith("offsite_backup.archive_timeout_seconds: Input should be")


def test_unknown_repository_type_is_refused(production_data, secret_env):
    [problem] = problems_of(offsite(production_data, repository="ftp"), secret_env)
    assert problem == "offsite_backup.repository: Input should be 'sftp' or 's3'"


def test_s3_needs_its_key_pair(production_data, secret_env):
    [problem] = problems_of(offsite(production_data, enabled=True, repository="s3", s3=S3), secret_env)
    assert problem.startswith("offsite_backup: s3_key and s3_key_secret: required for an s3 repository "
                              "(set OFFSITE_S3_KEY and OFFSITE_S3_KEY_SECRET")


def test_unknown_key_in_the_sftp_section_is_refused(production_data, secret_env):
    [problem] = problems_of(offsite(production_data, enabled=True, sftp={**SFTP, "hostkey": HOST_KEY}), secret_env)
    assert problem.startswith("offsite_backup.sftp.hostkey: unknown key")


# --- rendering --------------------------------------------------------------


def test_sftp_configuration_by_value(production_data, secret_env):
    settings = load_settings(offsite(production_data, enabled=True, sftp=SFTP), secret_env)
    [(path, rendered)] = render_offsite_backup(settings).items()
    assert (path, rendered.mode) == ("pgbackrest/pgbackrest.conf", SECRET_MODE)
    lines = [line for line in rendered.text.splitlines() if line and not line.startswith("#")]
    fingerprint = settings.offsite_backup.sftp.host_key_sha256
    assert lines == [
        "[global]",
        "repo1-type=sftp",
        "repo1-path=/backups/resto",
        "repo1-sftp-host=backup.example.net",
        "repo1-sftp-host-port=23",
        "repo1-sftp-host-user=u12345",
        "repo1-sftp-private-key-file=/etc/pgbackrest/sftp_key",
        "repo1-sftp-host-key-check-type=fingerprint",
        "repo1-sftp-host-key-hash-type=sha256",
        f"repo1-sftp-host-fingerprint={fingerprint}",
        "repo1-cipher-type=aes-256-cbc",
        f"repo1-cipher-pass={secret_env['OFFSITE_BACKUP_PASSPHRASE']}",
        "repo1-retention-full-type=count",
        "repo1-retention-full=4",
        "repo1-retention-archive-type=full",
        "repo1-retention-archive=2",
        "archive-async=n",
        "compress-type=zst",
        "repo1-bundle=y",
        "start-fast=y",
        "log-level-console=info",
        "log-level-file=off",
        "[restobot]",
        "pg1-path=/var/lib/postgresql/data",
        f"pg1-user={settings.database.user}",
    ]


def test_pinned_fingerprint_is_the_one_ssh_keygen_shows():
    from restobot.settings import SftpRepository

    fingerprint = SftpRepository(host="backup.example.net", user="u1", host_key=HOST_KEY).host_key_sha256
    assert base64.b64encode(bytes.fromhex(fingerprint)).decode().rstrip("=") == HOST_KEY_SSH_KEYGEN_SHA256


@pytest.mark.parametrize("pitr_days, archive", [(1, 2), (7, 2), (8, 3), (14, 3), (21, 4)])
def test_wal_is_kept_for_enough_fulls_to_cover_the_window(production_data, secret_env, pitr_days, archive):
    settings = load_settings(offsite(production_data, enabled=True, sftp=SFTP, pitr_days=pitr_days), secret_env)
    text = render_offsite_backup(settings)["pgbackrest/pgbackrest.conf"].text
    assert f"\nrepo1-retention-archive={archive}\n" in text
    assert "\nrepo1-retention-full=4\n" in text


def test_s3_configuration_by_value(production_data, secret_env):
    key, key_secret = secrets.token_hex(10).upper(), secrets.token_urlsafe(30)
    secret_env.update(OFFSITE_S3_KEY=key, OFFSITE_S3_KEY_SECRET=key_secret)
    settings = load_settings(offsite(production_data, enabled=True, repository="s3", s3=S3, stanza="resto"),
                             secret_env)
    text = render_offsite_backup(settings)["pgbackrest/pgbackrest.conf"].text
    for line in ("repo1-type=s3", "repo1-path=/restobot", "repo1-s3-endpoint=s3.eu-west-3.amazonaws.com",
                 "repo1-s3-bucket=resto-backups", "repo1-s3-region=eu-west-3", "repo1-s3-uri-style=host",
                 f"repo1-s3-key={key}", f"repo1-s3-key-secret={key_secret}",
                 "repo1-cipher-type=aes-256-cbc", "[resto]"):
        assert f"\n{line}\n" in text
    assert "sftp" not in text


def test_disabled_renders_nothing_and_says_how_to_enable(production_data, secret_env):
    settings = load_settings(production_data, secret_env)
    with pytest.raises(OffsiteBackupDisabled, match=r"offsite_backup\.enabled is false: set it to true"):
        render_offsite_backup(settings)
    assert postgres_archiving_args(settings) == ()


def test_postgres_archives_to_pgbackrest(production_data, secret_env):
    settings = load_settings(
        offsite(production_data, enabled=True, sftp=SFTP, stanza="resto", archive_timeout_seconds=30), secret_env)
    assert postgres_archiving_args(settings) == (
        "-c", "archive_mode=on",
        "-c", "archive_command=pgbackrest --stanza=resto archive-push %p",
        "-c", "archive_timeout=30",
        "-c", "wal_level=replica",
    )


# --- the release and its compose file ----------------------------------------

@pytest.fixture(scope="module")
def login_key() -> str:
    """A throwaway OpenSSH private key, made for this run."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption(),
    ).decode()


@pytest.fixture
def enabled(production_data, secret_env, tmp_path, login_key):
    """Settings with an enabled SFTP off-site backup whose login key is a file on this machine."""
    key = tmp_path / "offsite_key"
    key.write_text(login_key)
    return load_settings(offsite(production_data, enabled=True, sftp={**SFTP, "key_path": str(key)}), secret_env)


def postgres_service(settings, context=None) -> dict:
    return yaml.safe_load(render_release(settings, context)["compose.yml"].text)


def test_login_key_path_is_required(production_data, secret_env):
    sftp = {key: value for key, value in SFTP.items() if key != "key_path"}
    [problem] = problems_of(offsite(production_data, enabled=True, sftp=sftp), secret_env)
    assert problem.startswith("offsite_backup.sftp.key_path: required while enabled is true")


def test_release_ships_the_configuration_and_the_key_owner_only(enabled, secret_env, login_key):
    files = render_release(enabled)
    assert files["pgbackrest/pgbackrest.conf"].mode == SECRET_MODE
    assert (files["pgbackrest/sftp_key"].text, files["pgbackrest/sftp_key"].mode) == (login_key, SECRET_MODE)


def test_passphrase_and_key_are_only_in_owner_only_files(enabled, secret_env):
    for path, rendered in render_release(enabled).items():
        if secret_env["OFFSITE_BACKUP_PASSPHRASE"] in rendered.text or "PRIVATE KEY" in rendered.text:
            assert rendered.mode == SECRET_MODE, path


def test_disabled_release_runs_the_stage_postgres_image_without_pgbackrest(production_data, secret_env):
    settings = load_settings(production_data, secret_env)
    files = render_release(settings)
    assert not [path for path in files if path.startswith("pgbackrest/")]
    compose = yaml.safe_load(files["compose.yml"].text)
    postgres = compose["services"]["postgres"]
    assert (postgres["image"], postgres["networks"]) == (settings.images.postgres, ["backend"])
    assert "command" not in postgres and "secrets" not in postgres and "secrets" not in compose
    assert "offsite" not in compose["networks"]


def test_enabled_postgres_runs_the_built_image_archiving_with_its_secrets(enabled):
    compose = postgres_service(enabled, RenderContext(postgres_image="restobot/postgres-pgbackrest:0123456789ab"))
    postgres = compose["services"]["postgres"]
    assert postgres["image"] == "restobot/postgres-pgbackrest:0123456789ab"
    assert postgres["build"] == {"context": ".", "dockerfile": "docker/postgres-pgbackrest/Dockerfile",
                                 "args": {"BASE_IMAGE": enabled.images.postgres}}
    assert postgres["command"] == ["postgres", *postgres_archiving_args(enabled)]
    assert postgres["secrets"] == [{"source": "pgbackrest_conf", "target": "pgbackrest.conf"},
                                   {"source": "pgbackrest_sftp_key", "target": "sftp_key"}]
    files = {name: secret["file"] for name, secret in compose["secrets"].items()}
    assert set(files) == {"pgbackrest_conf", "pgbackrest_sftp_key"}
    assert re.fullmatch(r"/opt/resto/configs/pgbackrest-[0-9a-f]{12}/pgbackrest\.conf", files["pgbackrest_conf"])
    assert files["pgbackrest_sftp_key"] == files["pgbackrest_conf"].replace("pgbackrest.conf", "sftp_key")


def test_only_postgres_gets_the_route_to_the_offsite_host(enabled):
    compose = postgres_service(enabled)
    assert compose["networks"]["offsite"] == {}
    on_it = sorted(name for name, service in compose["services"].items() if "offsite" in service.get("networks", []))
    assert on_it == ["postgres"]


def test_unreadable_login_key_is_refused_naming_the_setting(production_data, secret_env, tmp_path):
    missing = tmp_path / "nowhere"
    settings = load_settings(offsite(production_data, enabled=True, sftp={**SFTP, "key_path": str(missing)}),
                             secret_env)
    with pytest.raises(ReleaseError) as caught:
        build_release(settings, "v1")
    assert str(caught.value) == (f"offsite_backup.sftp.key_path: {missing} cannot be read (FileNotFoundError); "
                                 "point it at the private key whose public half the off-site host accepts")


def test_a_public_key_given_as_the_login_key_is_refused(production_data, secret_env, tmp_path):
    public = tmp_path / "offsite_key.pub"
    public.write_text(HOST_KEY + "\n")
    settings = load_settings(offsite(production_data, enabled=True, sftp={**SFTP, "key_path": str(public)}),
                             secret_env)
    with pytest.raises(OffsiteKeyUnreadable, match=r"^offsite_backup\.sftp\.key_path: .* is not a private key"):
        render_release(settings)


def test_postgres_image_is_tagged_by_its_dockerfile_and_base():
    files = {"docker/postgres-pgbackrest/Dockerfile": b"FROM x", "migrations/0001.sql": b"select 1"}
    name = postgres_image_name(files, "postgres:17-bookworm")
    assert name.startswith("restobot/postgres-pgbackrest:") and len(name.split(":")[1]) == 12
    assert postgres_image_name({**files, "migrations/0002.sql": b"select 2"}, "postgres:17-bookworm") == name
    assert postgres_image_name(files, "postgres:17.7-bookworm") != name
    assert postgres_image_name({**files, "docker/postgres-pgbackrest/Dockerfile": b"FROM y"},
                               "postgres:17-bookworm") != name


def test_an_enabled_release_names_the_postgres_image_to_build(enabled):
    assert build_release(enabled, "v1").postgres_image.startswith("restobot/postgres-pgbackrest:")


def test_a_disabled_release_builds_no_postgres_image(production_data, secret_env):
    assert build_release(load_settings(production_data, secret_env), "v1").postgres_image is None


# --- what pgBackRest reports ----------------------------------------------------------

INFO_JSON = """[{"name":"restobot","status":{"code":0,"message":"ok"},
 "archive":[{"id":"17-1","min":"000000010000000000000003","max":"000000010000000000000009"}],
 "backup":[{"type":"full","label":"20261201-101010F"},{"type":"diff","label":"20261201-101010F_20261202-101010D"},
           {"type":"full","label":"20261208-101010F"}]}]"""


def test_info_reports_the_full_backups_and_the_newest_wal():
    assert OffsiteBackupInfo().process(INFO_JSON.splitlines()) == OffsiteRepository(
        status_code=0, status_message="ok", full_backups=2, wal_max="000000010000000000000009")


def test_info_of_a_missing_stanza_says_it_does_not_exist():
    missing = '[{"name":"restobot","status":{"code":1,"message":"missing stanza path"},"archive":[],"backup":[]}]'
    repository = OffsiteBackupInfo().process([missing])
    assert repository is not None and not repository.stanza_exists and repository.full_backups == 0


@pytest.mark.parametrize("output", [[], ["ERROR: [039]: HTTP request failed"], ["[]"]])
def test_info_that_is_not_a_report_means_unknown(output):
    assert OffsiteBackupInfo().process(output) is None


# --- resto STAGE backup offsite info ---------------------------------------------------

INFO_REPORT = {
    "name": "restobot", "cipher": "aes-256-cbc", "status": {"code": 0, "message": "ok"},
    "archive": [{"id": "17-1", "min": "000000010000000000000003", "max": "000000010000000000000009"}],
    "backup": [{"label": "20261201-101010F", "type": "full", "timestamp": {"start": 1796119810, "stop": 1796119815},
                "info": {"size": 30_000_000, "repository": {"size": 3_000_000, "delta": 3_000_000}}}],
}


def test_offsite_info_is_summed_up_for_the_operator():
    assert cli.offsite_summary([INFO_REPORT]) == {
        "stanza": "restobot", "status": "ok", "problem": None, "cipher": "aes-256-cbc",
        "wal_min": "000000010000000000000003", "wal_max": "000000010000000000000009",
        "backups": [{"label": "20261201-101010F", "type": "full", "started": "2026-12-01T10:10:10Z",
                     "stopped": "2026-12-01T10:10:15Z", "database_bytes": 30_000_000, "repository_bytes": 3_000_000}],
        "healthy": True,
    }


@pytest.mark.parametrize("report", [
    {**INFO_REPORT, "backup": []},
    {**INFO_REPORT, "status": {"code": 99, "message": "other"}},
])
def test_offsite_info_without_a_full_backup_or_ok_status_is_not_healthy(report):
    assert cli.offsite_summary([report])["healthy"] is False


def test_offsite_info_when_disabled_says_how_to_enable_and_connects_nowhere(capsys, monkeypatch, with_secrets):
    def refuse(target):
        raise AssertionError(f"connected to {target.address} although offsite_backup is disabled")

    monkeypatch.setattr(cli, "connect", refuse)
    status = cli.main(["production", "backup", "offsite", "info"])
    captured = capsys.readouterr()
    assert status == cli.EXIT_USAGE
    assert "offsite_backup.enabled is false in " in captured.err
    assert "nothing is archived off-site; set it to true with its repository (README, Backups) and deploy" in captured.err
    assert captured.out == ""
