#!/usr/bin/env bash
# sonded's OCI image, built offline with buildah: from scratch, sonded and sondectl as cargo
# built them, and exactly the shared libraries they load (as ldd lists them); nothing pulled.
# The image goes to local containers storage (podman's).
#   deploy/image.sh [release|debug] [TAG]      (cargo xtask image runs it on a release build)
set -euo pipefail
profile=${1:-release}
tag=${2:-localhost/sonde/sonded:0.1.0}
cd "$(dirname "$0")/.."
bins=("target/$profile/sonded" "target/$profile/sondectl")
for bin in "${bins[@]}"; do
  [[ -x $bin ]] || { echo "image.sh: $bin is not built (cargo build --bins${profile/debug/})" >&2; exit 1; }
done
ctr=$(buildah from scratch)
trap 'buildah rm "$ctr" >/dev/null 2>&1 || true' EXIT
# The loader and every library, each at the path the binaries ask for.
for lib in $(ldd "${bins[@]}" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | sort -u); do
  buildah copy --quiet "$ctr" "$(readlink -f "$lib")" "$lib" >/dev/null
done
# The system's CA certificates: kube's TLS stack refuses to start without any (found by
# tests/image.rs: the pod watch failed in a scratch image), even for an in-cluster CA.
buildah copy --quiet "$ctr" /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt >/dev/null
for bin in "${bins[@]}"; do
  buildah copy --quiet --chmod 0755 "$ctr" "$bin" "/usr/local/bin/$(basename "$bin")" >/dev/null
done
buildah config \
  --entrypoint '["/usr/local/bin/sonded"]' \
  --env PATH=/usr/local/bin \
  --port 7470 --port 9470 \
  --label org.opencontainers.image.title=sonded \
  --label org.opencontainers.image.description="sonde's per-node agent (and sondectl)" \
  "$ctr"
buildah commit --quiet --rm "$ctr" "$tag" >/dev/null
trap - EXIT
echo "$tag $(podman image inspect --format '{{.Size}}' "$tag") bytes"
