"""The security scan finds what it is for, and only that."""

from restobot.lint import SECRET_PATTERNS


def test_a_real_looking_private_key_is_found():
    key = "-----BEGIN OPENSSH PRIVATE KEY-----\n" + "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\n" * 3 + "-----END OPENSSH PRIVATE KEY-----"
    assert SECRET_PATTERNS["private key"].search(key)


def test_a_bare_header_in_a_test_is_not_a_key():
    assert not SECRET_PATTERNS["private key"].search('["-----BEGIN OPENSSH PRIVATE KEY-----"]')


def test_an_assigned_secret_in_an_env_file_is_found():
    assert SECRET_PATTERNS["assigned secret"].search("META_APP_SECRET=0123456789abcdef0123456789abcdef\n")


def test_a_placeholder_reference_is_not_a_secret():
    assert not SECRET_PATTERNS["assigned secret"].search("META_APP_SECRET=${{ secrets.X }}\n")
