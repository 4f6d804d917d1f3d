"""The off-site backup's local stand-ins: PostgreSQL with pgBackRest, and an SFTP-only host.

Built like the images in ``images.LOCAL_IMAGES`` (same inputs-label cache rule), on demand by the
tests that use them; not bundled for the VPS (the deploy does not run pgBackRest yet).
"""

from __future__ import annotations

from typing import TextIO

from harness import images

POSTGRES_PGBACKREST_IMAGE = images.LocalImage(
    name="postgres-pgbackrest", tag="17",
    official="(postgres:17 plus pgBackRest: not built for production yet)",
    parent="postgres:17", inputs=(("harness/dockerfiles/postgres-pgbackrest", "."),),
)
SFTP_IMAGE = images.LocalImage(
    name="sftp", tag="bookworm",
    official="(none: the off-site host, a storage box or a second VPS, is the operator's)",
    parent="debian:bookworm", inputs=(("harness/dockerfiles/sftp", "."),),
)


def build_offsite_images(out: TextIO | None = None) -> tuple[str, str]:
    """Build both images when their inputs changed; return their refs (postgres, sftp)."""
    images.build_images([POSTGRES_PGBACKREST_IMAGE, SFTP_IMAGE], out=out)
    return images.image_ref(POSTGRES_PGBACKREST_IMAGE), images.image_ref(SFTP_IMAGE)
