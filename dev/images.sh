#!/usr/bin/env bash
# `make images`: builds the operator image and the CPU trainer image without a Docker engine
# (buildah, chroot isolation: no daemon, no cgroups created), from a Debian bookworm base made
# here with debootstrap (no registry is reachable). Everything lives in $LLMJOB_CACHE/images,
# outside the repo tree; an image is rebuilt only when its Dockerfile, build arguments, base or
# the files it copies change (a content key), and buildah's layer cache keeps the dependency
# layers across source changes. Wheels come from $LLMJOB_CACHE/wheelhouse, filled once per
# constraints.txt. Last, it writes the index the node agent resolves pod images with.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${LLMJOB_CACHE:?}
venv=${LLMJOB_VENV:?}
images=$cache/images
store=(--root "$images/storage" --runroot "$images/run" --storage-driver overlay)
version=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$repo/helm/llmjob-operator/Chart.yaml")
base=localhost/llmjob-base/debian:bookworm
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

say() { echo "images: $*" >&2; }

if ! command -v buildah >/dev/null || ! command -v debootstrap >/dev/null; then
  say "installing buildah and debootstrap (Debian packages)"
  apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    buildah debootstrap fuse-overlayfs uidmap >&2
fi
mkdir -p "$images"

image_exists() { buildah "${store[@]}" inspect --type image "$1" >/dev/null 2>&1; }

# The base: a minimal bookworm (the Dockerfiles' debian:bookworm-slim, made here).
if ! image_exists "$base"; then
  start=$SECONDS
  rootfs=$(mktemp -d "$images/debootstrap.XXXXXX")
  trap 'rm -rf "$rootfs" "$rootfs.tar"' EXIT
  say "debootstrap bookworm from $mirror"
  debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$images/debootstrap.log" 2>&1 \
    || { tail -20 "$images/debootstrap.log" >&2; exit 1; }
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb
  # buildah 1.28 has no `import`: a tar added to an empty image keeps owners and setuid bits.
  tar --numeric-owner --xattrs -C "$rootfs" -cf "$rootfs.tar" .
  container=$(buildah "${store[@]}" from scratch)
  buildah "${store[@]}" add "$container" "$rootfs.tar" / >/dev/null
  buildah "${store[@]}" config --cmd '["bash"]' \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$container"
  buildah "${store[@]}" commit --quiet --rm "$container" "$base" >/dev/null
  rm -rf "$rootfs" "$rootfs.tar"
  trap - EXIT
  say "base $base built in $((SECONDS - start))s"
fi

# The wheels of every pinned dependency, downloaded once per constraints.txt (pip's own
# cache serves what the venv build already fetched).
deps_key=$(cat "$repo/pyproject.toml" "$repo/constraints.txt" | sha256sum | cut -c1-16)
wheelhouse=$cache/wheelhouse/$deps_key
if [[ ! -f $wheelhouse/.complete ]]; then
  start=$SECONDS
  say "downloading the pinned wheels into $wheelhouse (once per constraints.txt)"
  mkdir -p "$wheelhouse"
  "$venv/bin/pip" download --progress-bar off -q -d "$wheelhouse" -c "$repo/constraints.txt" \
    "$repo[operator,trainer]" "setuptools>=75" wheel >&2
  touch "$wheelhouse/.complete"
  say "wheels downloaded in $((SECONDS - start))s ($(du -sh "$wheelhouse" | cut -f1))"
fi

# The content key of an image: its Dockerfile, build arguments, base and every file it copies.
content_key() {
  local dockerfile=$1; shift
  {
    echo "$*"
    buildah "${store[@]}" inspect --type image --format '{{.FromImageID}}' "$base"
    cd "$repo"
    git ls-files -z --cached --others --exclude-standard -- "$dockerfile" pyproject.toml \
      constraints.txt README.md operator/llmjob_operator trainer_image/llmjob_trainer \
      | sort -z | xargs -0 sha256sum
  } | sha256sum | cut -c1-16
}

build() {
  local name=$1 dockerfile=$2; shift 2
  local key; key=$(content_key "$dockerfile" "$@")
  local repository=${name%:*}
  local cached=localhost/llmjob-cache/${repository##*/}:$key
  if image_exists "$cached"; then
    say "$name: up to date ($key)"
  else
    local start=$SECONDS
    say "$name: building from $dockerfile ($key)"
    buildah "${store[@]}" bud --quiet --isolation chroot --layers --pull-never \
      --volume "$wheelhouse:/wheels:ro" --build-arg WHEELHOUSE=/wheels \
      --build-arg "BASE_IMAGE=$base" "${@/#/--build-arg=}" \
      -f "$repo/$dockerfile" -t "$cached" "$repo" >/dev/null
    say "$name: built in $((SECONDS - start))s"
  fi
  buildah "${store[@]}" tag "$cached" "$name"
  buildah "${store[@]}" images --format '{{.Name}}:{{.Tag}} {{.Size}}' "$name" | sed 's/^/images: size /' >&2
}

built=("ghcr.io/llmjob/operator:$version" "ghcr.io/llmjob/trainer:$version-cpu")
build "${built[0]}" operator/Dockerfile
build "${built[1]}" trainer_image/Dockerfile VARIANT=cpu
# The GPU trainer (the release workflow; needs a registry for the CUDA base, and ~20 GB).
if [[ ${LLMJOB_IMAGES_GPU:-0} = 1 ]]; then
  cuda_base=$(sed -n 's/^ARG BASE_IMAGE=//p' "$repo/trainer_image/Dockerfile")
  image_exists "$cuda_base" || buildah "${store[@]}" pull --quiet "docker.io/$cuda_base" >/dev/null
  base=$cuda_base
  built+=("ghcr.io/llmjob/trainer:$version-cuda")
  build "${built[2]}" trainer_image/Dockerfile VARIANT=cuda
fi

"$venv/bin/python" -m llmjob_devcluster.images index --store "$images/storage" \
  --out "$images/index.json" "${built[@]}"
