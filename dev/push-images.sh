#!/usr/bin/env bash
# The release workflow's push: every image `make images` built (dev/images.sh's index) goes
# to its registry as <name>-<arch>; the workflow then joins the architectures into one
# multi-arch tag. Needs `buildah login` to the registry first.
set -euo pipefail
cache=${LLMJOB_CACHE:?}
images=$cache/images
store=(--root "$images/storage" --runroot "$images/run" --storage-driver overlay)
arch=$(dpkg --print-architecture)
python3 -c '
import json, sys
for image in json.load(open(sys.argv[1]))["images"]:
    print(next(n for n in image["names"] if not n.startswith("localhost/")))
' "$images/index.json" | while read -r name; do
  echo "push: $name-$arch" >&2
  buildah "${store[@]}" push --quiet "$name" "docker://$name-$arch"
done
