"""Repository checks run by the CI pipelines: `lint` and `security-scan`.

    python -m restobot.lint             # JSON parses, rendered nginx passes `nginx -t`
    python -m restobot.lint --security  # no secret committed, gateway headers hardened
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from restobot.render import GatewayOptions, RenderContext, render_release
from restobot.secrets import generate_secrets
from restobot.settings import REPO_ROOT, load_inventory, load_settings

# Patterns of credentials that must never be committed.
SECRET_PATTERNS = {
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----[A-Za-z0-9+/=\s]{40,}-----END [A-Z ]*PRIVATE KEY-----"),
    "Meta access token": re.compile(r"\bEAA[A-Za-z0-9]{60,}"),
    "AWS access key": re.compile(r"\bAKIA[0-9A-Z]{16}\b"),
    "assigned secret": re.compile(
        r"^(META_APP_SECRET|POSTGRES_PASSWORD|N8N_ENCRYPTION_KEY|ADMIN_API_TOKEN|WA_API_TOKEN|IG_API_TOKEN"
        r"|MSG_API_TOKEN|META_VERIFY_TOKEN)\s*=\s*['\"]?[A-Za-z0-9_\-]{8,}",
        re.MULTILINE,
    ),
}
REQUIRED_TRAEFIK_HEADERS = ("stsSeconds: 31536000", "contentTypeNosniff: true", "frameDeny: true", "referrerPolicy:")


def tracked_files(root: Path) -> list[Path]:
    listing = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True)
    return [root / name for name in listing.stdout.decode().split("\0") if name]


def json_problems(root: Path) -> list[str]:
    problems = []
    for path in sorted(root.glob("workflows/*.json")):
        try:
            json.loads(path.read_text())
        except json.JSONDecodeError as error:
            problems.append(f"{path.relative_to(root)}:{error.lineno}: invalid JSON: {error.msg}")
    return problems


def example_settings():
    """The shipped production inventory with throwaway secrets."""
    secrets = generate_secrets()
    return load_settings(load_inventory("production", secrets)["SETTINGS"], secrets)


def nginx_problems() -> list[str]:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        return ["nginx not found: run scripts/setup-host"]
    with tempfile.TemporaryDirectory() as runtime:
        options = GatewayOptions(upstream="127.0.0.1:5678", resolver=None, listen="127.0.0.1:18080", runtime_dir=runtime)
        text = render_release(example_settings(), RenderContext(gateway=options))["nginx/nginx.conf"].text
        config = Path(runtime) / "nginx.conf"
        config.write_text(text)
        result = subprocess.run([nginx, "-t", "-c", str(config)], capture_output=True, text=True)
        if result.returncode != 0:
            return [f"templates/nginx/nginx.conf.j2: nginx -t failed: {result.stderr.strip()}"]
    return []


def secret_problems(root: Path) -> list[str]:
    problems = []
    for path in tracked_files(root):
        if not path.is_file() or path.stat().st_size > 1_000_000:
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for label, pattern in SECRET_PATTERNS.items():
            for match in pattern.finditer(text):
                line = text.count("\n", 0, match.start()) + 1
                problems.append(f"{path.relative_to(root)}:{line}: looks like a committed {label}")
    return problems


def header_problems() -> list[str]:
    rendered = render_release(example_settings())
    problems = []
    if "server_tokens off;" not in rendered["nginx/nginx.conf"].text:
        problems.append("templates/nginx/nginx.conf.j2: server_tokens must be off")
    dynamic = rendered["traefik/dynamic/dynamic.yml"].text
    for header in REQUIRED_TRAEFIK_HEADERS:
        if header not in dynamic:
            problems.append(f"templates/traefik/dynamic.yml.j2: security-headers lacks '{header}'")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--security", action="store_true", help="scan for committed secrets and header hardening")
    args = parser.parse_args(argv)
    problems = (secret_problems(REPO_ROOT) + header_problems()) if args.security else (json_problems(REPO_ROOT) + nginx_problems())
    for problem in problems:
        print(problem, file=sys.stderr)
    print(f"{'security-scan' if args.security else 'lint'}: {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
