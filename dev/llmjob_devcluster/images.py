"""The local cluster's images: what `make images` built with buildah, as the node agent sees it.

`make images` writes an index (one JSON file) of the images a pod may name: each image's
names, digest, OCI config (entrypoint, cmd, env, user, working directory) and its layers,
already unpacked by buildah's overlay store. A container's root filesystem is an overlay of
those layers under a writable layer of its own, so an image is unpacked once per digest (by
buildah, when it was built) and never copied per pod.

`resolve` is pure: reference normalisation as a container runtime does it
(`busybox` -> `docker.io/library/busybox:latest`), then a lookup by name or digest.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The one image name that means "the host's environment" (the venv and this checkout at
# IMAGE_SOURCE_DIR), which only the fast integration tests ask for.
HOST_ENVIRONMENT_IMAGE = "llmjob.local/host-environment:latest"


def index_path() -> Path:
    return Path(os.environ.get("LLMJOB_CACHE", "/var/cache/llmjob")) / "images" / "index.json"


@dataclass(frozen=True)
class Image:
    names: tuple[str, ...]
    image_id: str
    digest: str
    layers: tuple[str, ...]  # lower directories, the top layer first
    config: dict[str, Any]

    @property
    def entrypoint(self) -> list[str]:
        return list(self.config.get("Entrypoint") or [])

    @property
    def cmd(self) -> list[str]:
        return list(self.config.get("Cmd") or [])

    @property
    def env(self) -> dict[str, str]:
        pairs = (entry.partition("=") for entry in self.config.get("Env") or [])
        return {name: value for name, _, value in pairs}

    @property
    def user(self) -> str:
        return str(self.config.get("User") or "")

    @property
    def working_dir(self) -> str:
        return str(self.config.get("WorkingDir") or "")


def normalize(reference: str) -> str:
    """A reference as a runtime stores it: registry, repository and tag (or digest)."""
    name, at, digest = reference.partition("@")
    first, slash, _ = name.partition("/")
    if not slash or ("." not in first and ":" not in first and first != "localhost"):
        name = f"docker.io/{name}" if slash else f"docker.io/library/{name}"
    if not at and ":" not in name.rsplit("/", 1)[-1]:
        name += ":latest"
    return f"{name}@{digest}" if at else name


def resolve(reference: str, index: list[Image]) -> Image | None:
    wanted = normalize(reference)
    name, _, digest = wanted.partition("@")
    for image in index:
        if digest and digest == image.digest:
            return image
        if not digest and name in image.names:
            return image
    return None


def load_index(path: Path) -> list[Image]:
    if not path.exists():
        return []
    return [
        Image(
            names=tuple(entry["names"]),
            image_id=entry["id"],
            digest=entry["digest"],
            layers=tuple(entry["layers"]),
            config=entry["config"],
        )
        for entry in json.loads(path.read_text())["images"]
    ]


# --- writing the index (make images) -----------------------------------------------------


def layer_dirs(store: Path, top_layer: str) -> list[str]:
    """The unpacked layers of an image, top first, as buildah's overlay driver keeps them
    (its short links keep the overlay's mount options within a page)."""
    layers = {
        layer["id"]: layer
        for layer in json.loads((store / "overlay-layers" / "layers.json").read_text())
    }
    dirs = []
    layer_id: str | None = top_layer
    while layer_id:
        link = store / "overlay" / layer_id / "link"
        short = store / "overlay" / "l" / link.read_text().strip() if link.exists() else None
        dirs.append(str(short if short is not None else store / "overlay" / layer_id / "diff"))
        layer_id = layers[layer_id].get("parent")
    return dirs


def describe(store: Path, name: str) -> dict[str, Any]:
    inspected = json.loads(
        subprocess.run(
            [
                "buildah",
                "--root",
                str(store),
                "--storage-driver",
                "overlay",
                "inspect",
                "--type",
                "image",
                name,
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    image_id = inspected["FromImageID"]
    stored = {
        image["id"]: image
        for image in json.loads((store / "overlay-images" / "images.json").read_text())
    }[image_id]
    return {
        "names": [normalize(n) for n in stored.get("names") or []],
        "id": image_id,
        "digest": inspected["FromImageDigest"],
        "layers": layer_dirs(store, stored["layer"]),
        "config": inspected["OCIv1"].get("config") or {},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    index = commands.add_parser("index", help="write the node agent's image index")
    index.add_argument("--store", type=Path, required=True)
    index.add_argument("--out", type=Path, required=True)
    index.add_argument("names", nargs="+")
    args = parser.parse_args()
    entries = [describe(args.store, name) for name in args.names]
    args.out.write_text(json.dumps({"images": entries}, indent=1) + "\n")


if __name__ == "__main__":
    main()
