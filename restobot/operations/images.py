"""Container images on the host: pulled from the registry, or loaded from bundles.

Production pulls the official images. The local stage has no registry: the
harness saves each locally built image to a bundle file that the VPS sees, and
this loads the ones missing. Either way an image already present is skipped.
The migrate image, and the postgres image with pgBackRest when offsite_backup is
enabled, are built on the host from the release (their tags are the hash of their
inputs, so an unchanged release builds nothing).
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import operation

from restobot.commands import compose_build_migrate, compose_build_postgres, image_fetch, shell
from restobot.facts.deploy import DockerImages
from restobot.settings import ImageSettings


def service_images(images: ImageSettings) -> tuple[str, ...]:
    """The images the stack runs (its monitoring included), plus the migrate image's base."""
    return (images.traefik, images.nginx, images.n8n, images.postgres, images.redis, images.migrate_base,
            images.prometheus, images.alertmanager, images.node_exporter, images.postgres_exporter,
            images.redis_exporter, images.blackbox_exporter)


@operation()
def images_present(images: ImageSettings):
    """
    Ensure every image of the stack is in the host's docker engine.

    + images: the image settings; ``bundle_dir`` set means load from bundles, else pull

    **Example:**

    .. code:: python

        images_present(name="Ensure the stack's images are present", images=settings.images)
    """
    wanted = service_images(images)
    present = host.get_fact(DockerImages, images=wanted)
    missing = [image for image in wanted if image not in present]
    if not missing:
        host.noop(f"all {len(wanted)} images are present")
        return
    for image in missing:
        yield shell(image_fetch(image, images.bundle_dir))


@operation()
def migrate_image_built(release_dir: str, image: str):
    """
    Ensure the release's migrate image exists, building it from the release if not.

    + release_dir: the release directory (the build context)
    + image: the image reference the release's compose file names
    """
    if image in host.get_fact(DockerImages, images=(image,)):
        host.noop(f"{image} is present")
        return
    yield shell(compose_build_migrate(release_dir))


@operation()
def postgres_image_built(release_dir: str, image: str | None):
    """
    Ensure the release's postgres image with pgBackRest exists, building it from the release if not.

    + release_dir: the release directory (the build context)
    + image: the image reference the release's compose file names; None: offsite_backup is disabled
      and postgres runs the stage's image as it is

    **Example:**

    .. code:: python

        postgres_image_built(name="Ensure the postgres image with pgBackRest is built",
                             release_dir=release_dir, image=built.postgres_image)
    """
    if image is None:
        host.noop("offsite_backup is disabled: postgres runs the stage's image")
        return
    if image in host.get_fact(DockerImages, images=(image,)):
        host.noop(f"{image} is present")
        return
    yield shell(compose_build_postgres(release_dir))
