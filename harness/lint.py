"""Repository checks run by the CI pipelines: `lint` and `security-scan`.

    python -m harness.lint             # JSON parses, rendered nginx passes `nginx -t`
    python -m harness.lint --security  # the security scanners below, plus Traefik's headers

The security scanners are pinned in pyproject.toml's dev extras and run from the
virtual env; each reads its own config at the repo root:

    gixy-next       the rendered nginx.conf of every stage    .gixy.cfg
    detect-secrets  every file git tracks or would track      .secrets.baseline
    bandit          the Python code outside tests/            pyproject.toml [tool.bandit], .bandit-baseline.json
    shellcheck      every shell script, shell templates rendered
    hadolint        every Dockerfile                          .hadolint.yaml
    zizmor          the GitHub Actions workflows              (inline `# zizmor: ignore[rule]`)

A finding is fixed, or suppressed in that config with a one-line reason; any
other finding fails the scan.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pyinfra.api.util import get_template

from restobot.commands import HostLayout
from harness.stage import local_stage_tree
from restobot.operations.backup import TEMPLATES as BACKUP_TEMPLATES
from restobot.operations.backup import BackupPaths, script_values
from restobot.render import GatewayOptions, RenderContext, render_release
from restobot.secrets import generate_secrets
from restobot.settings import REPO_ROOT, Settings, load_inventory, load_settings

# The scanners' executables: the virtual env this module runs in (scripts/setup-host installs them).
VENV_BIN = Path(sys.executable).parent
SETUP_HINT = "run scripts/setup-host (it installs the scanners pinned in pyproject.toml's dev extras)"

NGINX_TEMPLATE = "templates/nginx/nginx.conf.j2"
GIXY_CONFIG = REPO_ROOT / ".gixy.cfg"
SECRETS_BASELINE = REPO_ROOT / ".secrets.baseline"
BANDIT_CONFIG = REPO_ROOT / "pyproject.toml"
BANDIT_BASELINE = REPO_ROOT / ".bandit-baseline.json"
BANDIT_TARGETS = ("restobot", "deploy.py", "rollback.py", "unlock.py", "inventory", "checks", "bench", "examples")
HADOLINT_CONFIG = REPO_ROOT / ".hadolint.yaml"
WORKFLOWS_DIR = ".github/workflows"
SHELL_INTERPRETERS = ("sh", "bash", "dash")
# Shell files with no shebang, each with the shell that sources it.
SOURCED_SHELL_FRAGMENTS = {
    "templates/provision/docker-default.sh": "sh",  # sourced by Debian's /etc/init.d/docker, a #!/bin/sh script
}
SHELL_TEMPLATES = ("backup.sh.j2", "backup-verify.sh.j2")
REQUIRED_TRAEFIK_HEADERS = ("stsSeconds: 31536000", "contentTypeNosniff: true", "frameDeny: true", "referrerPolicy:")


@dataclass(frozen=True)
class Finding:
    """One problem a scanner reports: where, which rule, what (and, optionally, the code it is about)."""

    location: str
    rule: str
    message: str
    detail: str = ""

    def __str__(self) -> str:
        text = f"{self.location}: [{self.rule}] {self.message}"
        if self.detail:
            text += "\n" + "\n".join(f"    | {line}" for line in self.detail.splitlines())
        return text


class ScannerError(Exception):
    """A scanner could not run, or failed rather than report findings; the message says what to do."""


@dataclass(frozen=True)
class Scanner:
    name: str
    way_out: str
    scan: Callable[[Path], list[Finding]]


# --- running a scanner ---------------------------------------------------------


def repository_files(root: Path) -> list[str]:
    """Paths (relative to ``root``) of the files git tracks, or would track once added (not ignored)."""
    listing = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             cwd=root, capture_output=True, check=True)
    names = sorted(set(listing.stdout.decode().split("\0")))
    return [name for name in names if name and (root / name).is_file()]


def run_tool(tool: str, args: Sequence[str], *, cwd: Path, finding_exit_codes: Iterable[int] = (1,),
             stdin: str | None = None) -> str:
    """Run a scanner from the virtual env; its stdout. Raises ScannerError unless it exits 0 or with findings."""
    executable = VENV_BIN / tool
    if not executable.exists():
        raise ScannerError(f"{executable} is missing: {SETUP_HINT}")
    result = subprocess.run([str(executable), *args], cwd=cwd, input=stdin, capture_output=True, text=True)
    if result.returncode not in {0, *finding_exit_codes}:
        output = (result.stderr.strip() or result.stdout.strip())[-2000:]
        raise ScannerError(f"`{tool} {shlex.join(args)}` failed (exit {result.returncode}): {output}")
    return result.stdout


def unexplained_baseline_entries(baseline: Path, entries: Iterable[dict],
                                 describe: Callable[[dict], str]) -> list[Finding]:
    """Baseline entries (suppressed findings) that do not say why they are false positives."""
    return [
        Finding(baseline.name, "suppression-without-reason",
                f"the entry for {describe(entry)} has no \"reason\": "
                "add one line saying why it is a false positive, or fix the finding and remove the entry")
        for entry in entries
        if not str(entry.get("reason", "")).strip()
    ]


# --- settings and rendered files -------------------------------------------------


def inventory_stages(root: Path = REPO_ROOT) -> list[str]:
    return sorted(path.stem for path in (root / "inventory").glob("*.py"))


def stage_settings(stage: str) -> Settings:
    """A stage's settings with throwaway secrets.

    inventory/local.py asks the running harness for its ACME and Meta double URLs;
    no scanned file uses them, so the local tree is composed without them.
    """
    secrets = generate_secrets()
    tree = local_stage_tree() if stage == "local" else load_inventory(stage, secrets)["SETTINGS"]
    return load_settings(tree, secrets)


def example_settings() -> Settings:
    """The shipped production inventory with throwaway secrets."""
    return stage_settings("production")


def rendered_nginx_configs() -> dict[str, str]:
    """Stage -> the nginx.conf a deploy of that stage writes."""
    return {stage: render_release(stage_settings(stage))["nginx/nginx.conf"].text for stage in inventory_stages()}


def rendered_shell_templates(settings: Settings) -> dict[str, str]:
    """templates/backup/*.sh.j2 -> the script a deploy installs (rendered as pyinfra's files.template does)."""
    paths = BackupPaths(HostLayout(settings.host.base_dir))
    values = script_values(settings.backup, settings.host.deploy_user, paths)
    templates = [BACKUP_TEMPLATES / name for name in SHELL_TEMPLATES]
    return {str(path.relative_to(REPO_ROOT)): get_template(str(path)).render(**values) for path in templates}


# --- lint (non-security) ---------------------------------------------------------


def json_problems(root: Path) -> list[str]:
    problems = []
    for path in sorted(root.glob("workflows/*.json")):
        try:
            json.loads(path.read_text())
        except json.JSONDecodeError as error:
            problems.append(f"{path.relative_to(root)}:{error.lineno}: invalid JSON: {error.msg}")
    return problems


def nginx_problems() -> list[str]:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        return ["nginx not found: run scripts/setup-host"]
    with tempfile.TemporaryDirectory() as runtime:
        options = GatewayOptions(upstream="127.0.0.1:5678", resolver=None, listen="127.0.0.1:18080",
                                 runtime_dir=runtime)
        text = render_release(example_settings(), RenderContext(gateway=options))["nginx/nginx.conf"].text
        config = Path(runtime) / "nginx.conf"
        config.write_text(text)
        result = subprocess.run([nginx, "-t", "-c", str(config)], capture_output=True, text=True)
        if result.returncode != 0:
            return [f"{NGINX_TEMPLATE}: nginx -t failed: {result.stderr.strip()}"]
    return []


# --- gixy-next: nginx ----------------------------------------------------------


def gixy_findings(nginx_conf: str, label: str) -> list[Finding]:
    """gixy-next's findings on one complete nginx config; locations read `label line N`."""
    with tempfile.TemporaryDirectory() as directory:
        config = Path(directory) / "nginx.conf"
        config.write_text(nginx_conf)
        report = run_tool("gixy", ["--config", str(GIXY_CONFIG), "--format", "json", str(config)], cwd=Path(directory))
    return [
        Finding(f"{label} line {issue['line']}", issue["plugin"],
                f"{issue['severity']}: {issue['summary']} {issue['reason']} ({issue['reference']})",
                detail=issue.get("config", ""))
        for issue in json.loads(report)
    ]


def nginx_findings(root: Path) -> list[Finding]:
    return [
        finding
        for stage, text in rendered_nginx_configs().items()
        for finding in gixy_findings(text, f"{NGINX_TEMPLATE} rendered for {stage},")
    ]


# --- detect-secrets ----------------------------------------------------------------


def secret_findings(root: Path, baseline: Path = SECRETS_BASELINE, paths: Sequence[str] | None = None) -> list[Finding]:
    """detect-secrets on ``paths`` (default: every file of the repository at ``root``).

    It scans against a copy of ``baseline``, so the committed baseline is never
    rewritten; a secret the baseline holds as audited false positive passes.
    """
    with tempfile.TemporaryDirectory() as directory:
        scanned = Path(directory) / "baseline.json"
        shutil.copyfile(baseline, scanned)
        files = repository_files(root) if paths is None else paths
        run_tool("detect-secrets", ["scan", "--baseline", str(scanned), *files], cwd=root, finding_exit_codes=())
        results = json.loads(scanned.read_text())["results"]
    return [
        Finding(f"{filename}:{secret['line_number']}", secret["type"], "looks like a committed secret")
        for filename, secrets in sorted(results.items())
        for secret in secrets
        if secret.get("is_secret") is not False
    ]


def unexplained_secrets_baseline_entries(baseline: Path = SECRETS_BASELINE) -> list[Finding]:
    entries = [
        {**entry, "filename": filename}
        for filename, secrets in json.loads(baseline.read_text())["results"].items()
        for entry in secrets
    ]
    return unexplained_baseline_entries(baseline, entries, lambda entry: f"{entry['filename']} {entry['type']}")


def repository_secret_findings(root: Path) -> list[Finding]:
    return unexplained_secrets_baseline_entries() + secret_findings(root)


# --- bandit --------------------------------------------------------------------------


def bandit_findings(root: Path, targets: Sequence[str] = BANDIT_TARGETS) -> list[Finding]:
    """bandit on ``targets`` (relative to ``root``), less the baseline's audited false positives."""
    args = ["--configfile", str(BANDIT_CONFIG), "--baseline", str(BANDIT_BASELINE),
            "--format", "json", "--quiet", "--recursive", *targets]
    report = json.loads(run_tool("bandit", args, cwd=root))
    issues = [
        Finding(f"{issue['filename'].removeprefix('./')}:{issue['line_number']}", issue["test_id"],
                f"{issue['issue_severity']}: {issue['issue_text']} ({issue['more_info']})")
        for issue in report["results"]
    ]
    errors = [Finding(error["filename"], "not-scanned", error["reason"]) for error in report["errors"]]
    return issues + errors


def unexplained_bandit_baseline_entries(baseline: Path = BANDIT_BASELINE) -> list[Finding]:
    entries = json.loads(baseline.read_text())["results"]
    return unexplained_baseline_entries(baseline, entries, lambda entry: f"{entry['filename']} {entry['test_id']}")


def repository_bandit_findings(root: Path) -> list[Finding]:
    return unexplained_bandit_baseline_entries() + bandit_findings(root)


# --- shellcheck -----------------------------------------------------------------------


def shebang_interpreter(path: Path) -> str:
    """The program a file's `#!` line runs (`#!/usr/bin/env bash` -> bash); empty without one."""
    with path.open("rb") as handle:
        first_line = handle.readline(200).decode(errors="replace")
    words = first_line.removeprefix("#!").split() if first_line.startswith("#!") else []
    if words and Path(words[0]).name == "env":
        words = words[1:]
    return Path(words[0]).name if words else ""


def shell_scripts(root: Path) -> list[str]:
    """*.sh files and files with a shell shebang; templates (*.j2) and sourced fragments are checked apart."""
    return [
        name for name in repository_files(root)
        if not name.endswith(".j2") and name not in SOURCED_SHELL_FRAGMENTS
        and (name.endswith(".sh") or shebang_interpreter(root / name) in SHELL_INTERPRETERS)
    ]


def shellcheck_findings(root: Path, args: Sequence[str], stdin: str | None = None, label: str = "") -> list[Finding]:
    """shellcheck's findings; a script read from stdin is named ``label``."""
    report = run_tool("shellcheck", ["--format=json1", *args], cwd=root, stdin=stdin)
    return [
        Finding(f"{label if comment['file'] == '-' else comment['file']}:{comment['line']}", f"SC{comment['code']}",
                f"{comment['level']}: {comment['message']} (https://www.shellcheck.net/wiki/SC{comment['code']})")
        for comment in json.loads(report)["comments"]
    ]


def all_shell_findings(root: Path) -> list[Finding]:
    findings = shellcheck_findings(root, shell_scripts(root))
    for fragment, shell in SOURCED_SHELL_FRAGMENTS.items():
        findings += shellcheck_findings(root, [f"--shell={shell}", fragment])
    for template, script in rendered_shell_templates(example_settings()).items():
        findings += shellcheck_findings(root, ["-"], stdin=script, label=f"{template} (rendered)")
    return findings


# --- hadolint ----------------------------------------------------------------------------


def dockerfiles(root: Path) -> list[str]:
    return [name for name in repository_files(root) if Path(name).name == "Dockerfile"]


def hadolint_findings(root: Path, files: Sequence[str]) -> list[Finding]:
    report = run_tool("hadolint", ["--config", str(HADOLINT_CONFIG), "--format", "json", *files], cwd=root)
    return [
        Finding(f"{item['file']}:{item['line']}", item["code"], f"{item['level']}: {item['message']}")
        for item in json.loads(report)
    ]


def all_dockerfile_findings(root: Path) -> list[Finding]:
    return hadolint_findings(root, dockerfiles(root))


# --- zizmor ------------------------------------------------------------------------------

# zizmor exits 10 + the highest severity (1 informational ... 4 high) when it has findings.
ZIZMOR_FINDING_EXIT_CODES = range(10, 15)


def zizmor_location(finding: dict) -> str:
    primary = next(location for location in finding["locations"] if location["symbolic"]["kind"] == "Primary")
    path = primary["symbolic"]["key"]["Local"]["verbatim_path"]
    return f"{path}:{primary['concrete']['location']['start_point']['row'] + 1}"


def zizmor_findings(root: Path, inputs: Sequence[str] = (WORKFLOWS_DIR,)) -> list[Finding]:
    """zizmor's offline audits (the online ones need a GitHub token and the network)."""
    report = run_tool("zizmor", ["--offline", "--format", "json", *inputs], cwd=root,
                      finding_exit_codes=ZIZMOR_FINDING_EXIT_CODES)
    return [
        Finding(zizmor_location(finding), finding["ident"],
                f"{finding['determinations']['severity']}: {finding['desc']} ({finding['url']})")
        for finding in json.loads(report)
        if not finding.get("ignored")
    ]


# --- Traefik's headers (no scanner reads Traefik's dynamic config) ---------------------------


def traefik_header_findings(root: Path) -> list[Finding]:
    dynamic = render_release(example_settings())["traefik/dynamic/dynamic.yml"].text
    return [
        Finding("templates/traefik/dynamic.yml.j2", "security-headers",
                f"the security-headers middleware lacks '{header}'")
        for header in REQUIRED_TRAEFIK_HEADERS
        if header not in dynamic
    ]


# --- the security scan -------------------------------------------------------------------

SCANNERS = (
    Scanner("gixy-next (rendered nginx.conf of every stage)",
            f"fix {NGINX_TEMPLATE}, or skip the plugin in .gixy.cfg with a one-line reason", nginx_findings),
    Scanner("detect-secrets (every file of the repository)",
            "remove the secret from the file and rotate it; a false positive: end its line with "
            "`# pragma: allowlist secret`, or, in a file you cannot edit, copy its entry from "
            "`.venv/bin/detect-secrets scan FILE` into .secrets.baseline with \"is_secret\": false and a \"reason\"",
            repository_secret_findings),
    Scanner("bandit (Python outside tests/)",
            "fix the code, or end the line with `# nosec BXXX # reason`; for a file you cannot edit, add its entry "
            "of `.venv/bin/bandit -f json` output, with a \"reason\", to .bandit-baseline.json",
            repository_bandit_findings),
    Scanner("shellcheck (shell scripts, rendered shell templates)",
            "fix the script, or add `# shellcheck disable=SCxxxx # reason` above the line", all_shell_findings),
    Scanner("hadolint (Dockerfiles)",
            "fix the Dockerfile, or add `# hadolint ignore=DLxxxx` above the line, or the rule to .hadolint.yaml "
            "with a one-line reason", all_dockerfile_findings),
    Scanner("zizmor (GitHub Actions workflows)",
            "fix the workflow, or add `# zizmor: ignore[rule]` with a reason to the line", zizmor_findings),
    Scanner("Traefik security headers", "restore the header in templates/traefik/dynamic.yml.j2",
            traefik_header_findings),
)


def scanner_findings(scanner: Scanner, root: Path) -> list[Finding]:
    try:
        return scanner.scan(root)
    except ScannerError as error:
        return [Finding(scanner.name, "scanner-failed", str(error))]


def security_scan(root: Path) -> int:
    """Run every scanner and print its findings; return how many there are."""
    total = 0
    for scanner in SCANNERS:
        findings = scanner_findings(scanner, root)
        print(f"== {scanner.name}: {len(findings)} finding(s)", flush=True)
        for finding in findings:
            print(finding)
        if findings:
            print(f"   way out: {scanner.way_out}")
        total += len(findings)
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--security", action="store_true", help="run the security scanners")
    args = parser.parse_args(argv)
    if args.security:
        count = security_scan(REPO_ROOT)
        print(f"security-scan: {count} finding(s)")
        return 1 if count else 0
    problems = json_problems(REPO_ROOT) + nginx_problems()
    for problem in problems:
        print(problem, file=sys.stderr)
    print(f"lint: {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
