"""The locally built images exist, are cached by their inputs, and keep the
contracts the compose template relies on (the official images' contracts).

Cold, the first build takes ~10 minutes (n8n); afterwards every build is a
cache hit and this module takes about a minute and a half (n8n queue mode is the
longest check).
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import images
from harness.poll import PollTimeout, poll

pytestmark = pytest.mark.integration

# The stand-ins' references and versions come from harness.images.LOCAL_IMAGES (and
# restobot.versions through it): a version bump there needs no edit here.
N8N, POSTGRES, REDIS, NGINX, TRAEFIK, PYTHON, VPS = (
    images.local_image(name) for name in ("n8n", "postgres", "redis", "nginx", "traefik", "python", "vps"))
N8N_REF, POSTGRES_REF, REDIS_REF, NGINX_REF, TRAEFIK_REF, PYTHON_REF, VPS_REF = (
    images.image_ref(image) for image in (N8N, POSTGRES, REDIS, NGINX, TRAEFIK, PYTHON, VPS))


def _docker(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], check=check, text=True, capture_output=True,
                          timeout=timeout)


def _suffix() -> str:
    return secrets.token_hex(4)


def _logs(container: str) -> str:
    proc = _docker("logs", "--tail", "30", container, check=False)
    return f"--- last log lines of {container} ---\n{proc.stdout}{proc.stderr}"


def _wait_for(container: str, argv: list[str], *, seconds: float) -> float:
    """Run argv in the container until it exits 0 (bounded); return the seconds it took."""
    started = time.monotonic()
    try:
        poll(lambda: _docker("exec", container, *argv, check=False, timeout=30),
             until=lambda proc: proc.returncode == 0, timeout=seconds,
             what=f"{' '.join(argv)} succeeding in {container}")
    except PollTimeout as error:
        pytest.fail(f"{error}\n{_logs(container)}")
    return time.monotonic() - started


@pytest.fixture(scope="module")
def build_report() -> list[images.BuildResult]:
    """Build everything (a cache hit when nothing changed)."""
    return images.build_images(out=None)


@pytest.fixture(scope="module")
def rebuild_report(build_report: list[images.BuildResult]) -> list[images.BuildResult]:
    """A second build right after the first: must not build anything."""
    return images.build_images(out=None)


@pytest.fixture
def containers() -> Iterator[list[str]]:
    """Names registered here are removed (with their volumes) after the test."""
    names: list[str] = []
    yield names
    for name in names:
        _docker("rm", "--force", "--volumes", name, check=False)


@pytest.fixture
def network() -> Iterator[str]:
    name = f"rb-test-images-{_suffix()}"
    _docker("network", "create", name)
    yield name
    _docker("network", "rm", name, check=False)


# --- build and cache --------------------------------------------------------------


@pytest.mark.parametrize("image", images.LOCAL_IMAGES, ids=lambda i: f"{i.name}:{i.tag}")
def test_image_exists_with_its_inputs_label(image: images.LocalImage,
                                            build_report: list[images.BuildResult]) -> None:
    result = next(r for r in build_report
                  if r.name == image.name and (image.tag is None or r.ref.endswith(f":{image.tag}")))
    assert result.status in ("built", "up to date"), result.reason
    info = images.inspect_image(result.ref)
    assert info is not None, f"{result.ref} missing after build"
    assert info["Config"]["Labels"][images.INPUTS_LABEL] == result.inputs_key


def test_second_build_builds_nothing(rebuild_report: list[images.BuildResult]) -> None:
    built = [r.ref for r in rebuild_report if r.status == "built"]
    assert built == []
    assert {r.status for r in rebuild_report} == {"up to date"}


def test_inputs_key_changes_with_the_parent_image() -> None:
    image = images.local_image("redis")
    assert images.inputs_key(image, "sha256:aaa") != images.inputs_key(image, "sha256:bbb")


def test_no_image_contains_the_build_ca_bundle() -> None:
    """The host CA bundle is a build-time input only (n8n copies /usr/local out of its fetch stage)."""
    proc = _docker("run", "--rm", "--user", "root", "--entrypoint", "sh", N8N_REF, "-c",
                   "find / -xdev -name build-ca.crt 2>/dev/null || true")
    assert proc.stdout.strip() == ""


def test_migrate_image_is_built_from_the_local_python_image(
        build_report: list[images.BuildResult]) -> None:
    result = next(r for r in build_report if r.name == "migrate")
    assert result.status != "skipped", result.reason
    proc = _docker("run", "--rm", "--entrypoint", "python3", result.ref, "-c",
                   "import restobot.remote.migrate.runner, psycopg; print(psycopg.__version__)")
    assert proc.stdout.strip().startswith("3.")


# --- bundles ------------------------------------------------------------------------


def test_bundle_is_written_once_per_image_id(tmp_path: Path,
                                             build_report: list[images.BuildResult]) -> None:
    first = images.bundle_images(["redis"], bundle_dir=tmp_path, out=None)
    second = images.bundle_images(["redis"], bundle_dir=tmp_path, out=None)
    manifest = json.loads((tmp_path / images.BUNDLE_MANIFEST).read_text())
    assert [r.status for r in first] == ["written"]
    assert [r.status for r in second] == ["up to date"]
    assert manifest[REDIS_REF]["file"] == images.bundle_file_name(REDIS_REF)
    assert manifest[REDIS_REF]["id"] == images.inspect_image(REDIS_REF)["Id"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([
        "manifest.json", images.bundle_file_name(REDIS_REF)])


# --- contracts ------------------------------------------------------------------------


def test_nginx_carries_its_stand_in_version(build_report: list[images.BuildResult]) -> None:
    proc = _docker("run", "--rm", NGINX_REF, "nginx", "-v")
    assert f"nginx/{NGINX.version}." in proc.stderr


NGINX_CONF = """\
worker_processes 1;
events { worker_connections 64; }
http {
    include /etc/nginx/mime.types;
    access_log /var/log/nginx/access.log;
    server {
        listen 8080;
        location = /healthz { return 200 "ok\\n"; }
    }
}
"""


def test_nginx_serves_a_mounted_config_without_user_directive(
        tmp_path: Path, containers: list[str], build_report: list[images.BuildResult]) -> None:
    conf = tmp_path / "nginx.conf"
    conf.write_text(NGINX_CONF)
    name = f"rb-test-nginx-{_suffix()}"
    containers.append(name)
    _docker("run", "-d", "--name", name, "-v", f"{conf}:/etc/nginx/nginx.conf:ro", NGINX_REF)
    _wait_for(name, ["wget", "-q", "-O-", "http://127.0.0.1:8080/healthz"], seconds=20)
    body = _docker("exec", name, "wget", "-q", "-O-", "http://127.0.0.1:8080/healthz").stdout
    assert body == "ok\n"
    assert "GET /healthz" in _docker("logs", name).stdout, "access log should go to stdout"


def test_postgres_initialises_from_env_and_init_scripts(
        tmp_path: Path, containers: list[str], build_report: list[images.BuildResult]) -> None:
    (tmp_path / "01_table.sql").write_text("CREATE TABLE seeded (id int);\n")
    tmp_path.chmod(0o755)  # the scripts run as the postgres user, as in the official image
    name = f"rb-test-postgres-{_suffix()}"
    containers.append(name)
    _docker("run", "-d", "--name", name,
            "-e", "POSTGRES_USER=resto", "-e", "POSTGRES_PASSWORD=test-password",
            "-e", "POSTGRES_DB=restodb",
            "-v", f"{tmp_path}:/docker-entrypoint-initdb.d:ro", POSTGRES_REF)
    # The image's healthcheck command; the temp server during init answers on
    # the socket only, so also wait for TCP (the real server).
    _wait_for(name, ["pg_isready", "-U", "resto", "-d", "restodb", "-h", "127.0.0.1"], seconds=60)
    _docker("exec", name, "pg_isready", "-U", "resto", "-d", "restodb")
    proc = _docker("exec", "-e", "PGPASSWORD=test-password", name, "psql", "-h", "127.0.0.1",
                   "-U", "resto", "-d", "restodb", "-tAc",
                   "SELECT current_user, to_regclass('public.seeded') IS NOT NULL, "
                   "current_setting('listen_addresses')")
    assert proc.stdout.strip() == "resto|t|*"


@pytest.mark.parametrize("password,accepted", [("right-password", True), ("wrong", False)])
def test_postgres_checks_passwords_from_other_containers(
        password: str, accepted: bool, network: str, containers: list[str],
        build_report: list[images.BuildResult]) -> None:
    """scram-sha-256 for host connections; like the official image, loopback inside is trusted."""
    name = f"rb-test-postgres-{_suffix()}"
    containers.append(name)
    _docker("run", "-d", "--name", name, "--network", network, "-e", "POSTGRES_USER=resto",
            "-e", "POSTGRES_PASSWORD=right-password", POSTGRES_REF)
    _wait_for(name, ["pg_isready", "-h", "127.0.0.1", "-U", "resto"], seconds=60)
    proc = _docker("run", "--rm", "--network", network, "-e", f"PGPASSWORD={password}",
                   "--entrypoint", "psql", POSTGRES_REF, "-h", name, "-U", "resto", "-d", "resto",
                   "-tAc", "SELECT 1", check=False)
    if accepted:
        assert (proc.returncode, proc.stdout.strip()) == (0, "1"), proc.stderr
    else:
        assert proc.returncode != 0
        assert "password authentication failed" in proc.stderr


def test_postgres_stops_fast_and_cleanly_with_a_client_connected(
        containers: list[str], build_report: list[images.BuildResult]) -> None:
    """`docker stop` sends SIGINT (the image's STOPSIGNAL, as in the official image): a fast
    shutdown that ends open sessions, where SIGTERM (smart) would wait for them."""
    name = f"rb-test-postgres-{_suffix()}"
    containers.append(name)
    _docker("run", "-d", "--name", name, "-e", "POSTGRES_PASSWORD=pw", POSTGRES_REF)
    _wait_for(name, ["pg_isready", "-h", "127.0.0.1"], seconds=60)
    _docker("exec", "-d", name, "psql", "-U", "postgres", "-c", "SELECT pg_sleep(120)")
    _wait_for(name, ["sh", "-c", "psql -U postgres -tAc \"SELECT count(*) FROM pg_stat_activity "
                                 "WHERE query LIKE 'SELECT pg_sleep%'\" | grep -qx 1"], seconds=20)
    started = time.monotonic()
    _docker("stop", "--time", "20", name)
    assert time.monotonic() - started < 10
    state = json.loads(_docker("inspect", name).stdout)[0]["State"]
    assert state["ExitCode"] == 0, _logs(name)
    assert "database system is shut down" in _docker("logs", name).stderr


def test_postgres_reads_the_password_from_a_file(
        tmp_path: Path, network: str, containers: list[str],
        build_report: list[images.BuildResult]) -> None:
    secret = tmp_path / "pg_password"
    secret.write_text("file-password\n")
    secret.chmod(0o644)
    tmp_path.chmod(0o755)
    name = f"rb-test-postgres-{_suffix()}"
    containers.append(name)
    _docker("run", "-d", "--name", name, "--network", network,
            "-e", "POSTGRES_PASSWORD_FILE=/run/secrets/pg_password",
            "-v", f"{secret}:/run/secrets/pg_password:ro", POSTGRES_REF)
    _wait_for(name, ["pg_isready", "-h", "127.0.0.1"], seconds=60)
    proc = _docker("run", "--rm", "--network", network, "-e", "PGPASSWORD=file-password",
                   "--entrypoint", "psql", POSTGRES_REF, "-h", name, "-U", "postgres",
                   "-tAc", "SELECT 1", check=False)
    assert (proc.returncode, proc.stdout.strip()) == (0, "1"), proc.stderr


@pytest.mark.parametrize("tool", ["pg_isready", "psql", "pg_dump", "pg_dumpall", "pg_restore"])
def test_postgres_tool_on_path(tool: str, build_report: list[images.BuildResult]) -> None:
    _docker("run", "--rm", "--entrypoint", tool, POSTGRES_REF, "--version")


def test_redis_carries_its_stand_in_version(build_report: list[images.BuildResult]) -> None:
    assert f"v={REDIS.version}." in _docker("run", "--rm", REDIS_REF, "redis-server", "--version").stdout


@pytest.mark.parametrize("command", [[], ["redis-server", "--appendonly", "yes"]],
                         ids=["default-command", "compose-command"])
def test_redis_answers_other_containers(command: list[str], network: str,
                                        containers: list[str],
                                        build_report: list[images.BuildResult]) -> None:
    """Protected mode is off, as in the official image, even when compose overrides the command."""
    name = f"rb-test-redis-{_suffix()}"
    containers.append(name)
    _docker("run", "-d", "--name", name, "--network", network, REDIS_REF, *command)
    _wait_for(name, ["redis-cli", "ping"], seconds=20)
    proc = _docker("run", "--rm", "--network", network, "--entrypoint", "redis-cli", REDIS_REF,
                   "-h", name, "ping")
    assert proc.stdout.strip() == "PONG"
    assert _docker("exec", name, "sh", "-c", "ps -o user= -p 1 || id -un").returncode == 0
    assert _docker("exec", name, "pwd").stdout.strip() == "/data"


TRAEFIK_YML = """\
entryPoints:
  web:
    address: ":80"
ping: {}
log:
  level: INFO
"""


def test_traefik_runs_with_config_file_and_passes_its_healthcheck(
        tmp_path: Path, containers: list[str], build_report: list[images.BuildResult]) -> None:
    config = tmp_path / "traefik.yml"
    config.write_text(TRAEFIK_YML)
    name = f"rb-test-traefik-{_suffix()}"
    containers.append(name)
    _docker("run", "-d", "--name", name, "-v", f"{config}:/etc/traefik/traefik.yml:ro",
            TRAEFIK_REF, "--configFile=/etc/traefik/traefik.yml")
    _wait_for(name, ["traefik", "healthcheck", "--ping"], seconds=20)


def test_traefik_version_subcommand(build_report: list[images.BuildResult]) -> None:
    assert TRAEFIK.version in _docker("run", "--rm", TRAEFIK_REF, "version").stdout


def test_python_base_has_psycopg_and_pip(build_report: list[images.BuildResult]) -> None:
    _docker("run", "--rm", PYTHON_REF, "python", "-c", "import psycopg")
    _docker("run", "--rm", PYTHON_REF, "python3", "-m", "pip", "--version")


def test_n8n_prints_its_pinned_version(build_report: list[images.BuildResult]) -> None:
    """Arguments go to n8n, as with the official entrypoint (`command: worker`)."""
    assert _docker("run", "--rm", N8N_REF, "--version").stdout.strip() == images.N8N_VERSION


def test_n8n_binary_on_path(build_report: list[images.BuildResult]) -> None:
    proc = _docker("run", "--rm", "--entrypoint", "n8n", N8N_REF, "--version")
    assert proc.stdout.strip() == images.N8N_VERSION


def test_n8n_runs_as_node_with_its_data_dir(build_report: list[images.BuildResult]) -> None:
    proc = _docker("run", "--rm", "--entrypoint", "sh", N8N_REF, "-c",
                   "id -u; id -un; echo $HOME; stat -c %U /home/node/.n8n; node --version; "
                   "command -v wget")
    uid, user, home, owner, node, wget = proc.stdout.split()
    assert (uid, user, home, owner) == ("1000", "node", "/home/node", "node")
    assert node == f"v{images.NODE_VERSION}"
    assert wget == "/usr/bin/wget"


def test_vps_image_refuses_passwords_and_has_no_docker(build_report: list[images.BuildResult]) -> None:
    proc = _docker("run", "--rm", "--entrypoint", "bash", VPS_REF, "-c",
                   "ssh-keygen -A >/dev/null; mkdir -p /run/sshd; /usr/sbin/sshd -T; "
                   "command -v docker || echo no-docker")
    assert "passwordauthentication no" in proc.stdout
    assert "permitrootlogin without-password" in proc.stdout
    assert proc.stdout.strip().endswith("no-docker")


# --- n8n for real: queue mode on the PostgreSQL and Redis stand-ins ----------------------


def test_n8n_main_and_worker_run_in_queue_mode(network: str, containers: list[str],
                                               build_report: list[images.BuildResult]) -> None:
    suffix = _suffix()
    pg, redis, main, worker = (f"rb-test-n8n-{role}-{suffix}"
                               for role in ("postgres", "redis", "main", "worker"))
    containers.extend([worker, main, redis, pg])
    _docker("run", "-d", "--name", pg, "--network", network, "-e", "POSTGRES_USER=n8n",
            "-e", "POSTGRES_PASSWORD=n8n-test-pw", "-e", "POSTGRES_DB=n8n", POSTGRES_REF)
    _docker("run", "-d", "--name", redis, "--network", network, REDIS_REF)
    _wait_for(pg, ["pg_isready", "-h", "127.0.0.1", "-U", "n8n", "-d", "n8n"], seconds=60)
    _wait_for(redis, ["redis-cli", "ping"], seconds=20)
    env = {
        "DB_TYPE": "postgresdb", "DB_POSTGRESDB_HOST": pg, "DB_POSTGRESDB_DATABASE": "n8n",
        "DB_POSTGRESDB_USER": "n8n", "DB_POSTGRESDB_PASSWORD": "n8n-test-pw",
        "EXECUTIONS_MODE": "queue", "QUEUE_BULL_REDIS_HOST": redis,
        "N8N_ENCRYPTION_KEY": "test-encryption-key-" + suffix,
        "QUEUE_HEALTH_CHECK_ACTIVE": "true",
        "N8N_DIAGNOSTICS_ENABLED": "false", "N8N_VERSION_NOTIFICATIONS_ENABLED": "false",
        "N8N_TEMPLATES_ENABLED": "false",
    }
    env_args = [arg for key, value in env.items() for arg in ("-e", f"{key}={value}")]
    started = time.monotonic()
    _docker("run", "-d", "--name", main, "--network", network, *env_args, N8N_REF)
    main_ready = _wait_for(main, ["wget", "-q", "--spider",
                                  "http://127.0.0.1:5678/healthz/readiness"], seconds=180)
    _docker("run", "-d", "--name", worker, "--network", network, *env_args, N8N_REF, "worker")
    worker_ready = _wait_for(worker, ["wget", "-q", "-O-", "http://127.0.0.1:5678/healthz"],
                             seconds=120)
    print(f"\nTIMING n8n main readiness {main_ready:.1f} s (first start, migrations), "
          f"worker /healthz {worker_ready:.1f} s, total {time.monotonic() - started:.1f} s")
    for name in (main, worker):
        state = json.loads(_docker("inspect", name).stdout)[0]["State"]
        assert state["Running"], _logs(name)
