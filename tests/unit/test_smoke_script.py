"""templates/smoke.sh's retries, run by /bin/sh with curl, docker, date and sleep replaced on PATH:
curl answers as the gateway would (a refusal at once, then the workflow's answer), date is a clock
that moves 10 s per reading, sleep returns at once. The e2e deploys run it against the real stack."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

FAKE_CURL = r"""#!/bin/sh
# The gateway: /healthz ok; a handshake refused (exit 22, curl --fail on a 503) for the first
# $REFUSED tries, then answered with its challenge.
url=$(sed -n 's/^url = "\(.*\)"$/\1/p')
case "$url" in */healthz) echo ok; exit 0 ;; esac
tries=$(($(cat "$STATE/handshakes" 2>/dev/null || echo 0) + 1))
echo "$tries" > "$STATE/handshakes"
[ "$tries" -gt "$REFUSED" ] || exit 22
printf %s "${url##*hub.challenge=}"
"""

FAKE_DATE = r"""#!/bin/sh
now=$(($(cat "$STATE/clock" 2>/dev/null || echo 1000000) + 10))
echo "$now" > "$STATE/clock"
echo "$now"
"""


@pytest.fixture
def release(tmp_path) -> Path:
    """A release directory as the host has it: bin/smoke and env/n8n.env."""
    directory = tmp_path / "release"
    (directory / "bin").mkdir(parents=True)
    (directory / "env").mkdir()
    shutil.copy(REPO / "templates" / "smoke.sh", directory / "bin" / "smoke")
    token = os.urandom(8).hex()
    (directory / "env" / "n8n.env").write_text(
        f"WEBHOOK_URL=https://api.resto.example/\nMETA_VERIFY_TOKEN={token}\n")
    fakes = tmp_path / "fakes"
    fakes.mkdir()
    for name, body in {"curl": FAKE_CURL, "date": FAKE_DATE, "docker": "#!/bin/sh\n", "sleep": "#!/bin/sh\n"}.items():
        (fakes / name).write_text(body)
        (fakes / name).chmod(0o755)
    return directory


def smoke(release: Path, refused: int) -> tuple[list[str], int]:
    """The script's lines and how many handshake tries curl received."""
    state = release.parent / "state"
    state.mkdir(exist_ok=True)
    env = {"PATH": f"{release.parent / 'fakes'}:/usr/bin:/bin", "STATE": str(state), "REFUSED": str(refused)}
    out = subprocess.run(["sh", str(release / "bin" / "smoke"), "1"], env=env, capture_output=True, text=True,
                         timeout=60, check=True).stdout
    return out.splitlines(), int((state / "handshakes").read_text())


def test_handshakes_refused_at_once_are_tried_again_until_they_pass(release):
    # Three counted tries were spent in 4 s while customers' retries filled the gateway's slots.
    lines, tries = smoke(release, refused=4)
    assert [line.split()[:2] for line in lines] == [
        ["PASS", "healthz"], ["PASS", "verify-whatsapp"], ["PASS", "verify-instagram"],
        ["PASS", "verify-messenger"], ["PASS", "console"]]
    assert tries == 4 + 3


def test_handshakes_never_answered_fail_once_their_shared_deadline_has_passed(release):
    lines, tries = smoke(release, refused=10_000)
    assert [line.split()[:2] for line in lines[1:4]] == [
        ["FAIL", "verify-whatsapp"], ["FAIL", "verify-instagram"], ["FAIL", "verify-messenger"]]
    # 60 s on a clock moving 10 s a reading: about 6 tries for the first, one for each of the others.
    assert tries <= 10
    assert all("verify_token=***" in line for line in lines[1:4])
