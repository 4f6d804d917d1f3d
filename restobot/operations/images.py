"""Container images on the host: pulled from the registry, or loaded from bundles.

Production pulls the official images. The local stage has no registry: the
harness saves each locally built image to a bundle file that the VPS sees, and
this loads the ones missing. Either way an image already present is skipped.
The migrate image is built on the host from the release (its tag is the hash
of its inputs, so an unchanged release builds nothing).
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import operation

from restobot.commands import compose_build_migrate, image_fetch, shell
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
