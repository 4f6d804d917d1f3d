"""The security scan's scanners find what they are for, through the code path scripts/security-scan runs.

No test here skips: a scanner missing from the virtual env fails with ScannerError,
whose message says to run scripts/setup-host.
"""

from __future__ import annotations

import json
import textwrap

import pytest

from harness import lint

# A minimal complete nginx config; ROUTE is the admin route under test. Everything
# else is what gixy wants of a gateway (workers, no version, a resolver for $n8n).
NGINX_CONFIG = """\
worker_processes auto;

events {
    worker_connections 512;
}

http {
    server_tokens off;
    resolver 127.0.0.11 valid=10s ipv6=off;

    server {
        listen 8080 default_server;
        set $n8n http://n8n-main:5678;
ROUTE
    }
}
"""
# The route the committed template had: $uri is percent-decoded, so %0d%0a in the
# path becomes CR LF in the request line n8n receives (HTTP request splitting).
OLD_ADMIN_ROUTE = """\
        location ^~ /v1/admin/ {
            limit_except POST { deny all; }
            proxy_pass $n8n/webhook$uri$is_args$args;
        }
"""
# The fix: one exact route with a fixed upstream path; nothing from the client's path travels on.
FIXED_ADMIN_ROUTE = """\
        location = /v1/admin/dlq/replay {
            limit_except POST { deny all; }
            proxy_pass $n8n/webhook/v1/admin/dlq/replay;
        }
"""


def nginx_config(route: str) -> str:
    return NGINX_CONFIG.replace("ROUTE\n", route)


def rules(findings: list[lint.Finding]) -> set[str]:
    return {finding.rule for finding in findings}


# --- gixy-next --------------------------------------------------------------------------


def test_gixy_reports_http_splitting_on_the_old_admin_route():
    findings = lint.gixy_findings(nginx_config(OLD_ADMIN_ROUTE), "old-route.conf")

    assert "http_splitting" in rules(findings), [str(finding) for finding in findings]
    splitting = next(finding for finding in findings if finding.rule == "http_splitting")
    assert splitting.location == "old-route.conf line 16"
    assert "$uri" in splitting.message


def test_gixy_passes_the_fixed_admin_route():
    findings = lint.gixy_findings(nginx_config(FIXED_ADMIN_ROUTE), "fixed-route.conf")

    assert findings == [], [str(finding) for finding in findings]


def test_the_nginx_scan_renders_every_inventory_stage_without_the_local_harness():
    configs = lint.rendered_nginx_configs()

    assert set(configs) == {"local", "production", "staging"}
    for stage, text in configs.items():
        assert f"stage {stage}" in text.splitlines()[0]


# --- detect-secrets ---------------------------------------------------------------------


def plant_fake_private_key(directory, name="deploy_key"):
    # Assembled here so this file itself holds no key for detect-secrets to find.
    begin, end = "-----BEGIN " + "OPENSSH PRIVATE KEY-----", "-----END " + "OPENSSH PRIVATE KEY-----"
    body = "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n" * 3
    (directory / name).write_text(f"{begin}\n{body}{end}\n")
    return name


def test_detect_secrets_finds_a_planted_private_key(tmp_path):
    name = plant_fake_private_key(tmp_path)

    findings = lint.secret_findings(tmp_path, paths=[name])

    assert [(finding.location, finding.rule) for finding in findings] == [(f"{name}:1", "Private Key")]


def test_detect_secrets_passes_a_secret_audited_as_a_false_positive(tmp_path):
    name = plant_fake_private_key(tmp_path)
    baseline = tmp_path / "baseline.json"
    baseline.write_text(lint.run_tool("detect-secrets", ["scan", name], cwd=tmp_path, finding_exit_codes=()))
    audited = json.loads(baseline.read_text())
    for secret in audited["results"][name]:
        secret["is_secret"] = False
    baseline.write_text(json.dumps(audited))

    assert lint.secret_findings(tmp_path, baseline, paths=[name]) == []


def test_detect_secrets_passes_a_file_without_secrets(tmp_path):
    (tmp_path / "deploy.env.j2").write_text("POSTGRES_PASSWORD={{ secrets.POSTGRES_PASSWORD }}\n")

    assert lint.secret_findings(tmp_path, paths=["deploy.env.j2"]) == []


# --- the baselines of audited false positives --------------------------------------------


def test_every_committed_suppression_says_why():
    unexplained = lint.unexplained_secrets_baseline_entries() + lint.unexplained_bandit_baseline_entries()

    assert unexplained == [], [str(finding) for finding in unexplained]


def test_a_suppression_without_a_reason_is_reported(tmp_path):
    baseline = tmp_path / ".bandit-baseline.json"
    baseline.write_text(json.dumps({"results": [
        {"filename": "restobot/x.py", "test_id": "B608", "reason": "values are bound as parameters"},
        {"filename": "restobot/y.py", "test_id": "B105", "reason": " "},
    ]}))

    findings = lint.unexplained_bandit_baseline_entries(baseline)

    assert [(finding.location, finding.rule) for finding in findings] == [
        (".bandit-baseline.json", "suppression-without-reason")]
    assert "restobot/y.py B105" in findings[0].message


# --- bandit, shellcheck, hadolint, zizmor ---------------------------------------------------


def test_bandit_finds_a_shell_command_built_from_input(tmp_path):
    (tmp_path / "helper.py").write_text("import os\n\n\ndef remove(path):\n    os.system('rm -rf ' + path)\n")

    findings = lint.bandit_findings(tmp_path, ["helper.py"])

    assert [(finding.location, finding.rule) for finding in findings] == [("helper.py:5", "B605")]


def test_bandit_config_keeps_argv_subprocess_calls_quiet(tmp_path):
    (tmp_path / "helper.py").write_text("import subprocess\n\nsubprocess.run(['git', 'status'], check=True)\n")

    assert lint.bandit_findings(tmp_path, ["helper.py"]) == []


def test_shellcheck_finds_an_unquoted_variable(tmp_path):
    (tmp_path / "cleanup").write_text('#!/bin/sh\nrm -rf $1/cache\n')

    findings = lint.shellcheck_findings(tmp_path, ["cleanup"])

    assert [(finding.location, finding.rule) for finding in findings] == [("cleanup:2", "SC2086")]


def test_shellcheck_names_a_rendered_template_by_its_label(tmp_path):
    findings = lint.shellcheck_findings(tmp_path, ["-"], stdin="#!/bin/sh\necho $1\n",
                                        label="templates/x.sh.j2 (rendered)")

    assert [finding.location for finding in findings] == ["templates/x.sh.j2 (rendered):2"]


@pytest.mark.parametrize(("first_line", "interpreter"), [
    ("#!/usr/bin/env bash", "bash"), ("#!/bin/sh -e", "sh"), ("#!/usr/bin/python3", "python3"), ("# no shebang", ""),
])
def test_shebang_interpreter(tmp_path, first_line, interpreter):
    (tmp_path / "script").write_text(first_line + "\necho hi\n")

    assert lint.shebang_interpreter(tmp_path / "script") == interpreter


def test_the_shell_scan_covers_scripts_harness_entrypoints_and_rendered_backup_scripts():
    scripts = lint.shell_scripts(lint.REPO_ROOT)
    templates = lint.rendered_shell_templates(lint.example_settings())

    assert {"scripts/security-scan", ".ci/run", "templates/smoke.sh", "harness/dockerfiles/vps/vps-init"} <= set(scripts)
    assert set(templates) == {"templates/backup/backup.sh.j2", "templates/backup/backup-verify.sh.j2"}
    assert all(text.startswith("#!/bin/sh\n") and "{{" not in text for text in templates.values())


def test_hadolint_finds_an_unpinned_base_image(tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM debian:latest\nCMD [\"true\"]\n")

    findings = lint.hadolint_findings(tmp_path, ["Dockerfile"])

    assert [(finding.location, finding.rule) for finding in findings] == [("Dockerfile:1", "DL3007")]


def test_zizmor_finds_an_action_not_pinned_to_a_commit(tmp_path):
    workflows = tmp_path / ".github" / "workflows"
    workflows.mkdir(parents=True)
    (workflows / "ci.yml").write_text(textwrap.dedent("""\
        name: ci
        on: [push]
        permissions: {}
        jobs:
          test:
            runs-on: ubuntu-latest
            steps:
              - uses: actions/checkout@v4
                with:
                  persist-credentials: false
    """))

    findings = lint.zizmor_findings(tmp_path, [".github/workflows/ci.yml"])

    assert [(finding.location, finding.rule) for finding in findings] == [
        (".github/workflows/ci.yml:8", "unpinned-uses")]


# --- running the scanners ---------------------------------------------------------------


def test_a_missing_scanner_fails_and_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setattr(lint, "VENV_BIN", tmp_path)

    with pytest.raises(lint.ScannerError, match=r"gixy is missing: run scripts/setup-host"):
        lint.gixy_findings(nginx_config(FIXED_ADMIN_ROUTE), "fixed-route.conf")


def test_the_scan_reports_a_scanner_that_cannot_run_as_a_finding(tmp_path, monkeypatch):
    monkeypatch.setattr(lint, "VENV_BIN", tmp_path)
    scanner = lint.Scanner("hadolint", "install it", lint.all_dockerfile_findings)

    findings = lint.scanner_findings(scanner, lint.REPO_ROOT)

    assert [(finding.location, finding.rule) for finding in findings] == [("hadolint", "scanner-failed")]


def test_lint_reports_invalid_workflow_json_with_its_line(tmp_path):
    (tmp_path / "workflows").mkdir()
    (tmp_path / "workflows" / "intake.json").write_text('{\n  "nodes": [\n}\n')

    assert lint.json_problems(tmp_path) == ["workflows/intake.json:3: invalid JSON: Expecting value"]


def test_the_repository_passes_the_security_scan(capsys):
    """What scripts/security-scan runs, on this tree: CI fails on a new unsuppressed finding."""
    code = lint.security_scan(lint.REPO_ROOT)
    assert code == 0, capsys.readouterr().out[-4000:]
