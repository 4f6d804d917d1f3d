"""The provisioning facts parse their command's output into typed results."""

from __future__ import annotations

from restobot.facts.provision import Firewall, HostPlatform, Platform, Swap, SwapState, UfwFirewall


def test_host_platform_without_systemd():
    output = ["machine=x86_64", "dpkg_architecture=amd64", "distribution=debian", "codename=bookworm",
              "version_id=12", "init_system=sysvinit"]
    assert HostPlatform().process(output) == Platform("x86_64", "amd64", "debian", "bookworm", "12", "sysvinit")


def test_host_platform_with_systemd():
    output = ["machine=aarch64", "dpkg_architecture=arm64", "distribution=ubuntu", "codename=noble",
              "version_id=24.04", "init_system=systemd"]
    assert HostPlatform().process(output).init_system == "systemd"


def test_host_platform_not_debian_like_is_none():
    assert HostPlatform().process(["machine=x86_64", "dpkg_architecture=", "init_system=sysvinit"]) is None


def test_ufw_inactive_with_debian_defaults():
    output = [
        "Status: inactive",
        'DEFAULT_INPUT_POLICY="DROP"',
        'DEFAULT_OUTPUT_POLICY="ACCEPT"',
        "Added user rules (see 'ufw status' for running firewall):",
        "(None)",
    ]
    assert UfwFirewall().process(output) == Firewall(False, "deny", "allow", ())


def test_ufw_active_with_rules():
    output = [
        "Status: active",
        'DEFAULT_INPUT_POLICY="ACCEPT"',
        'DEFAULT_OUTPUT_POLICY="REJECT"',
        "Added user rules (see 'ufw status' for running firewall):",
        "ufw allow 22/tcp",
        "ufw allow 5432/tcp",
    ]
    assert UfwFirewall().process(output) == Firewall(True, "allow", "reject", ("allow 22/tcp", "allow 5432/tcp"))


def test_swap_state():
    assert SwapState().process(["active=/swapfile", "active=/dev/vda2", "size=2147483648"]) == Swap(
        ("/swapfile", "/dev/vda2"), 2147483648
    )
    assert SwapState.default() == Swap((), None)


def test_swap_state_command_quotes_the_path():
    assert SwapState().command("/swap file").get_raw_value() == (
        "tail -n +2 /proc/swaps | awk '{print \"active=\" $1}'; stat -c 'size=%s' '/swap file' 2>/dev/null || true"
    )
