"""The off-site backup on real pgBackRest: PostgreSQL archives to an SFTP-only host, encrypted, and comes back.

Two containers on a docker network this module creates, nothing published: PostgreSQL with pgBackRest
(harness/offsite.py's stand-in) running with the rendered pgbackrest.conf and the archiving arguments, and
the off-site host (SFTP only, its host key pinned in the settings as an operator would from the provider's
console). A full backup plus the WAL archived after it are restored into a fresh container; the off-site
host's files hold no plain text; a wrong passphrase is refused and writes nothing.
"""

from __future__ import annotations

import io
import json
import secrets
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from harness.offsite import build_offsite_images
from harness.poll import poll
from restobot.commands import DRILL_SCRIPT
from restobot.remote.backup import drill_sql
from restobot.render import PGDATA, postgres_archiving_args, render_offsite_backup
from restobot.secrets import generate_secrets
from restobot.settings import Settings
from tests.conftest import settings_for_stage

pytestmark = pytest.mark.integration

SFTP_ALIAS = "offsite-sftp.backup.test"
REPO_PATH = "/srv/offsite/restobot"


def docker(*args: str, check: bool = True, stdin: bytes | None = None,
           timeout: float = 300) -> subprocess.CompletedProcess[str]:
    completed = subprocess.run(["docker", *args], input=stdin, capture_output=True, timeout=timeout)
    result = subprocess.CompletedProcess(completed.args, completed.returncode,
                                         completed.stdout.decode(errors="replace"),
                                         completed.stderr.decode(errors="replace"))
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args[:4])}... exited {result.returncode}:\n"
                             f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return result


@dataclass
class Offsite:
    network: str
    postgres_image: str
    sftp: str
    settings: Settings
    environ: dict[str, str]
    private_key: bytes
    postgres_uid: int
    other_host_key: str
    containers: list[str] = field(default_factory=list)

    def postgres_container(self, settings: Settings, *, archiving: bool, role: str) -> str:
        """A PostgreSQL container holding ``settings``' pgbackrest.conf and the SFTP key, started.

        ``archiving``: the stand-in's entrypoint runs ``postgres`` with the archiving arguments; otherwise
        the container only sleeps (a fresh host waiting for a restore), with an empty PGDATA.
        """
        name = f"{self.network}-{role}"
        command = (["postgres", *postgres_archiving_args(settings)] if archiving
                   else ["--entrypoint", "sleep"])
        run_args = ["create", "--name", name, "--network", self.network,
                    "-e", f"POSTGRES_USER={settings.database.user}",
                    "-e", f"POSTGRES_PASSWORD={secrets.token_urlsafe(16)}"]
        if archiving:
            docker(*run_args, self.postgres_image, *command)
        else:
            docker(*run_args, *command, self.postgres_image, "infinity")
        self.containers.append(name)
        docker("cp", "-a", "-", f"{name}:/etc/pgbackrest", stdin=self.pgbackrest_tar(settings))
        docker("start", name)
        return name

    def pgbackrest_tar(self, settings: Settings) -> bytes:
        """pgbackrest.conf and the SFTP private key, owned by postgres, mode 0600 (a tar for docker cp)."""
        files = {"pgbackrest.conf": render_offsite_backup(settings)["pgbackrest/pgbackrest.conf"].text.encode(),
                 "sftp_key": self.private_key}
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as archive:
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.uid, info.gid = len(data), 0o600, self.postgres_uid, self.postgres_uid
                archive.addfile(info, io.BytesIO(data))
        return buffer.getvalue()

    def psql(self, container: str, sql: str) -> str:
        # The superuser is POSTGRES_USER, as in the deployed stack (pgbackrest.conf's pg1-user).
        return docker("exec", "-u", "postgres", container, "psql", "-X", "-At", "-v", "ON_ERROR_STOP=1",
                      "-U", self.settings.database.user, "-d", "postgres",
                      "-c", sql).stdout.strip()

    def pgbackrest(self, container: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return docker("exec", "-u", "postgres", container, "pgbackrest",
                      f"--stanza={self.settings.offsite_backup.stanza}", *args, check=check)

    def wait_ready(self, container: str) -> None:
        # Over TCP: the image's entrypoint runs its init scripts on a socket-only server it then stops,
        # and pg_isready on the socket answered yes to it (stanza-create then met "shutting down").
        poll(lambda: docker("exec", "-u", "postgres", container, "pg_isready", "-q", "-h", "127.0.0.1",
                            check=False).returncode == 0,
             timeout=60, what=f"{container} accepting connections")


def offsite_settings(environ: dict[str, str], host_key: str, key_path: Path) -> Settings:
    return settings_for_stage("production", environ, offsite_backup={
        "enabled": True,
        "sftp": {"host": SFTP_ALIAS, "user": "offsite", "path": REPO_PATH, "host_key": host_key,
                 "key_path": str(key_path)},
        "archive_timeout_seconds": 10,
    })


@pytest.fixture(scope="module")
def offsite(tmp_path_factory) -> Iterator[Offsite]:
    postgres_image, sftp_image = build_offsite_images()
    keys = tmp_path_factory.mktemp("offsite-keys")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "pgbackrest", "-f", str(keys / "id")],
                   check=True)
    network = f"resto-offsite-{secrets.token_hex(4)}"
    docker("network", "create", network)
    containers: list[str] = []
    try:
        sftp = f"{network}-sftp"
        docker("run", "-d", "--name", sftp, "--network", network, "--network-alias", SFTP_ALIAS,
               "-e", f"AUTHORIZED_KEYS={(keys / 'id.pub').read_text().strip()}", sftp_image)
        containers.append(sftp)
        # Read out of band, as from the provider's console. pgBackRest's libssh2 prefers the ECDSA host key
        # (then ed25519, then RSA): the key to pin is the host's ECDSA one (README, Backups).
        public = poll(lambda: docker("exec", sftp, "cat", "/etc/ssh/ssh_host_ecdsa_key.pub", check=False),
                      until=lambda result: result.returncode == 0 and result.stdout.startswith("ecdsa-sha2-"),
                      timeout=30, what="the off-site host's ECDSA host key")
        host_key = " ".join(public.stdout.split()[:2])
        other_key = " ".join(docker("exec", sftp, "cat", "/etc/ssh/ssh_host_ed25519_key.pub").stdout.split()[:2])
        environ = generate_secrets()
        uid = int(docker("run", "--rm", "--entrypoint", "id", postgres_image, "-u", "postgres").stdout)
        stage = Offsite(network, postgres_image, sftp, offsite_settings(environ, host_key, keys / "id"), environ,
                        (keys / "id").read_bytes(), uid, other_key, containers)
        yield stage
    finally:
        for container in containers:
            docker("rm", "-f", "-v", container, check=False)
        docker("network", "rm", network, check=False)


@dataclass(frozen=True)
class Backed:
    source: str
    before_backup: str
    after_backup: str


@pytest.fixture(scope="module")
def backed_up(offsite: Offsite) -> Backed:
    """A database archiving to the off-site host: stanza, one row, a full backup, one more row archived after it."""
    source = offsite.postgres_container(offsite.settings, archiving=True, role="source")
    offsite.wait_ready(source)
    offsite.pgbackrest(source, "stanza-create")
    offsite.pgbackrest(source, "check")
    before, after = f"MARKER-BEFORE-{secrets.token_hex(8)}", f"MARKER-AFTER-{secrets.token_hex(8)}"
    offsite.psql(source, "CREATE TABLE messages (id serial PRIMARY KEY, body text NOT NULL)")
    offsite.psql(source, f"INSERT INTO messages (body) VALUES ('{before}')")
    offsite.pgbackrest(source, "backup", "--type=full")
    offsite.psql(source, f"INSERT INTO messages (body) VALUES ('{after}')")
    segment = offsite.psql(source, "SELECT pg_walfile_name(pg_switch_wal())")
    poll(lambda: offsite.psql(source, "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver"),
         until=lambda archived: archived >= segment, timeout=60, what=f"WAL segment {segment} archived")
    return Backed(source, before, after)


def test_a_full_backup_is_in_the_offsite_repository(offsite, backed_up):
    info = offsite.pgbackrest(backed_up.source, "info").stdout
    assert "status: ok" in info and "full backup:" in info, info


# Without repo1-bundle, this restore failed on the 1024th file it opened over SFTP ("libssh2 error
# [-31]: sftp error [4] failure"): pgBackRest kept a handle per file read, and the SFTP server's
# session had 1024 open files at most (its /proc/PID/fd counted 1024 when it failed).
def test_restore_into_a_fresh_container_brings_back_the_rows_archived_after_the_backup(offsite, backed_up):
    fresh = offsite.postgres_container(offsite.settings, archiving=False, role="restored")
    offsite.pgbackrest(fresh, "restore")
    docker("exec", "-u", "postgres", fresh, "chmod", "0700", PGDATA)
    docker("exec", "-d", "-u", "postgres", fresh, "postgres", "-D", PGDATA)
    offsite.wait_ready(fresh)
    poll(lambda: offsite.psql(fresh, "SELECT pg_is_in_recovery()"), until=lambda answer: answer == "f",
         timeout=60, what="the restored cluster promoted at the end of the archive")
    rows = offsite.psql(fresh, "SELECT body FROM messages ORDER BY id").splitlines()
    assert rows == [backed_up.before_backup, backed_up.after_backup]


def test_the_restore_drill_script_restores_the_latest_point_and_answers_its_rows(offsite, backed_up):
    """DRILL_SCRIPT (the drill's scratch instance), as the one-off container runs it: pgBackRest's restore
    into a subdirectory of its data volume, recovery to the end of the archive, then its JSON answer."""
    scratch = offsite.postgres_container(offsite.settings, archiving=False, role="drill")
    stanza = offsite.settings.offsite_backup.stanza
    proc = docker("exec", "-e", "POSTGRES_DB=postgres", scratch, "gosu", "postgres", "sh", "-c", DRILL_SCRIPT,
                  "restore-drill", stanza, "120", drill_sql(("messages", "absent_table")), check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    answer = json.loads(proc.stdout.splitlines()[-1])
    assert answer["tables"] == {"messages": 2} and answer["restored_to"], answer
    # Stopped at the end, archiving nothing: no history file of its new timeline reached the repository.
    assert docker("exec", scratch, "sh", "-c", f"ls {PGDATA}/drill/postmaster.pid", check=False).returncode != 0
    history = docker("exec", offsite.sftp, "find", f"{REPO_PATH}/archive", "-name", "*.history*").stdout.split()
    assert history == [], history


def test_the_offsite_host_holds_no_plain_text(offsite, backed_up):
    # The marker is in the source's own files in plain text: the grep below could find it if it were there.
    assert docker("exec", backed_up.source, "grep", "-rl", backed_up.before_backup, PGDATA).stdout
    files = docker("exec", offsite.sftp, "find", REPO_PATH, "-type", "f", "-size", "+0").stdout.split()
    assert any("/archive/" in path for path in files) and any("/backup/" in path for path in files), files
    for marker in (backed_up.before_backup, backed_up.after_backup):
        found = docker("exec", offsite.sftp, "grep", "-rl", marker, REPO_PATH, check=False)
        assert found.returncode == 1 and found.stdout == "", found.stdout
    headers = docker("exec", offsite.sftp, "sh", "-c",
                     f"find {REPO_PATH} -type f -size +0 | while read -r f; do head -c 8 \"$f\"; echo; done").stdout
    assert headers.splitlines() == ["Salted__"] * len(files)  # OpenSSL's header: every file is encrypted


def test_a_wrong_passphrase_is_refused_and_restores_nothing(offsite, backed_up):
    environ = {**offsite.environ, "OFFSITE_BACKUP_PASSPHRASE": secrets.token_urlsafe(32)}
    wrong = offsite_settings(environ, offsite.settings.offsite_backup.sftp.host_key,
                             offsite.settings.offsite_backup.sftp.key_path)
    fresh = offsite.postgres_container(wrong, archiving=False, role="wrong-passphrase")
    refused = offsite.pgbackrest(fresh, "restore", check=False)
    assert refused.returncode != 0
    assert "ERROR" in refused.stdout + refused.stderr, refused
    assert environ["OFFSITE_BACKUP_PASSPHRASE"] not in refused.stdout + refused.stderr
    assert docker("exec", fresh, "ls", "-A", PGDATA).stdout == ""


def test_a_host_presenting_another_key_than_the_pinned_one_is_refused(offsite, backed_up):
    unpinned = offsite_settings(offsite.environ, offsite.other_host_key, offsite.settings.offsite_backup.sftp.key_path)
    assert unpinned.offsite_backup.sftp.host_key_sha256 != offsite.settings.offsite_backup.sftp.host_key_sha256
    fresh = offsite.postgres_container(unpinned, archiving=False, role="unpinned")
    refused = offsite.pgbackrest(fresh, "restore", check=False)
    assert refused.returncode != 0
    assert "fingerprint" in (refused.stdout + refused.stderr).lower(), refused
