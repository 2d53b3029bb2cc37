#!/usr/bin/env bash
# Builds the OCI image of slotshift-proxy and slotshift with buildah, with no container registry: the base is a
# Debian 12 minbase root made with debootstrap from the host's mirror (deploy/local/debian-root.sh, cached
# outside the repository) holding the packages deploy/image/runtime-packages names, and the two programs are
# taken from a build tree. The image runs as the user slotshift (uid 10001, as in deploy/image/Dockerfile and
# the manifests of deploy/k8s), with slotshift-proxy as its entrypoint.
#
#   deploy/image/build.sh [--build-dir DIR] [--tag NAME] [--archive FILE]
#   deploy/image/build.sh --check     exits 0 when the base root is built already (builds nothing)
#
#   --build-dir DIR   where the binaries are: DIR/proxy/slotshift-proxy, DIR/orchestrator/slotshift (build)
#   --tag NAME        the image's name in buildah's local storage (localhost/slotshift:dev)
#   --archive FILE    also write the image to FILE as an OCI archive (for `ctr images import`, `kind load
#                     image-archive`, `podman load`, `skopeo copy oci-archive:FILE docker://REGISTRY/...`)
#
# Needs root (debootstrap, chroot) and buildah, which deploy/local/install-deps.sh installs. buildah's storage
# driver is vfs (BUILDAH_STORAGE_DRIVER to change it): overlay needs a kernel and file system that allow it,
# which a container running this script often does not. Prints the image's name last, on stdout.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)

say() { echo "build.sh: $*" >&2; }
die() { say "$*"; exit 1; }

build_dir=$repo/build
tag=localhost/slotshift:dev
archive=
check=false
while [ $# -gt 0 ]; do
  case $1 in
    --build-dir) build_dir=$(cd "$2" && pwd); shift 2 ;;
    --tag) tag=$2; shift 2 ;;
    --archive) archive=$2; shift 2 ;;
    --check) check=true; shift ;;
    *) die "usage: deploy/image/build.sh [--build-dir DIR] [--tag NAME] [--archive FILE] | --check" ;;
  esac
done

# The image's user. deploy/image/Dockerfile and deploy/k8s say the same number; tests/integration/image_test.sh
# checks that they agree.
uid=10001
packages=$(grep -v '^\s*#' "$here/runtime-packages" | grep -v '^\s*$' | tr '\n' ',' | sed 's/,$//')
[ -n "$packages" ] || die "$here/runtime-packages names no package"

# The base root is cached by what it holds: another package list or user makes another root.
key=$(printf '%s\n%s\n' "$packages" "$uid" | sha256sum | cut -c1-12)
. "$repo/deploy/local/debian-root.sh"
if $check; then debian_root_ready "image-bookworm-$key"; exit; fi

proxy_bin=$build_dir/proxy/slotshift-proxy
slotshift_bin=$build_dir/orchestrator/slotshift
[ -x "$proxy_bin" ] && [ -x "$slotshift_bin" ] ||
  die "no binaries in $build_dir: build them first (cmake --build --preset default --target slotshift slotshift-proxy)"
command -v buildah >/dev/null || die "buildah is missing: run deploy/local/install-deps.sh first"
[ "$(id -u)" -eq 0 ] || die "needs root (debootstrap, chroot, buildah's storage)"

# What debootstrap leaves that the image does not need at run time, and the user it runs as. (The root keeps
# minbase's shell and coreutils: the readiness probe of deploy/k8s is a shell command.)
finish_root() {
  local root=$1 log=$2
  chroot "$root" groupadd --gid "$uid" slotshift >>"$log" 2>&1 || return 1
  chroot "$root" useradd --uid "$uid" --gid "$uid" --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin slotshift >>"$log" 2>&1 || return 1
  chroot "$root" apt-get clean >>"$log" 2>&1 || return 1
  rm -rf "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
    "$root"/var/log/*.log "$root"/var/cache/debconf/*-old
}

debian_root "image-bookworm-$key" bookworm "$packages" finish_root
base=$DEBIAN_ROOT

storage=(--storage-driver "${BUILDAH_STORAGE_DRIVER:-vfs}")
ctr=$(buildah "${storage[@]}" from --quiet scratch)
trap 'buildah "${storage[@]}" rm "$ctr" >/dev/null 2>&1 || true' EXIT
mnt=$(buildah "${storage[@]}" mount "$ctr")
# The root as it is, owners and modes kept (buildah copy would make every file root's), less the cache's
# completion marker.
tar -C "$base" --exclude=./.slotshift-root-complete -cf - . | tar -C "$mnt" -xpf -
install -m 0755 "$proxy_bin" "$slotshift_bin" "$mnt/usr/local/bin/"
buildah "${storage[@]}" umount "$ctr" >/dev/null

version=$(git -C "$repo" describe --always --dirty 2>/dev/null || echo unknown)
buildah "${storage[@]}" config \
  --user "$uid:$uid" \
  --workingdir / \
  --env PATH=/usr/local/bin:/usr/bin:/bin \
  --entrypoint '["slotshift-proxy"]' \
  --cmd '["--help"]' \
  --port 6379/tcp \
  --port 9180/tcp \
  --label org.opencontainers.image.title=slotshift \
  --label org.opencontainers.image.description="slotshift-proxy (Redis Cluster as one Redis) and slotshift (slot moves)" \
  --label org.opencontainers.image.version="$version" \
  --label org.opencontainers.image.base.name=debian:bookworm \
  "$ctr"
buildah "${storage[@]}" commit --quiet --rm "$ctr" "$tag" >/dev/null
trap - EXIT
if [ -n "$archive" ]; then
  rm -f "$archive"
  buildah "${storage[@]}" push --quiet "$tag" "oci-archive:$archive:$tag" >/dev/null
  say "wrote $archive"
fi
echo "$tag"
