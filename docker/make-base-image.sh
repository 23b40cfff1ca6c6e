#!/usr/bin/env bash
# Builds a debian:bookworm-slim base image with debootstrap and imports it into
# podman, for machines that cannot pull images from a registry.
#
#   docker/make-base-image.sh [IMAGE]
#
# IMAGE defaults to docker.io/library/debian:bookworm-slim, the name the
# Dockerfile's FROM lines resolve to. Needs root (debootstrap), podman and
# debootstrap. The podman storage is whatever CONTAINERS_CONF and
# CONTAINERS_STORAGE_CONF select; docker/test-container.sh sets both.
#
# The image is a minbase bookworm with the host's APT sources, so that apt-get
# in a Dockerfile RUN step reaches the same mirror as the host. Like Debian's
# official slim images, it configures dpkg to skip documentation, man pages and
# locales, which keeps the runtime image under 100 MB.
set -euo pipefail

image=${1:-docker.io/library/debian:bookworm-slim}
suite=bookworm
repo_root=$(cd "$(dirname "$0")/.." && pwd)
work_parent="$repo_root/build/container"

log() { printf 'make-base-image: %s\n' "$*" >&2; }
die() {
    log "$*"
    exit 1
}

[ "$(id -u)" = 0 ] || die "debootstrap needs root; run as root or pull $image instead"
command -v debootstrap >/dev/null || die "debootstrap not found; install it with 'apt-get install debootstrap'"
command -v podman >/dev/null || die "podman not found; install it with 'apt-get install podman runc'"

# Returns the first Debian mirror URI of the host's APT sources (deb822 format
# first, then the one-line format).
host_mirror() {
    local uri=""
    if [ -r /etc/apt/sources.list.d/debian.sources ]; then
        uri=$(awk '/^URIs:/ && $2 !~ /security/ { print $2; exit }' \
            /etc/apt/sources.list.d/debian.sources)
    fi
    if [ -z "$uri" ] && [ -r /etc/apt/sources.list ]; then
        uri=$(awk '$1 == "deb" && $0 !~ /security/ { for (i = 2; i <= NF; i++)
            if ($i ~ /^https?:/) { print $i; exit } }' /etc/apt/sources.list)
    fi
    printf '%s\n' "${uri:-http://deb.debian.org/debian}"
}

mkdir -p "$work_parent"
rootfs=$(mktemp -d "$work_parent/base-rootfs.XXXXXX")
cleanup() { rm -rf "$rootfs"; }
trap cleanup EXIT

mirror=$(host_mirror)
log "debootstrap --variant=minbase $suite from $mirror (about 30 s)"
if ! debootstrap --variant=minbase "$suite" "$rootfs" "$mirror" \
    >"$work_parent/debootstrap.log" 2>&1; then
    tail -n 20 "$work_parent/debootstrap.log" >&2
    die "debootstrap failed; full output in $work_parent/debootstrap.log"
fi

# APT sources: the host's, so that RUN apt-get reaches the same mirror and
# the security suite.
if [ -r /etc/apt/sources.list.d/debian.sources ]; then
    cp /etc/apt/sources.list.d/debian.sources "$rootfs/etc/apt/sources.list.d/"
    rm -f "$rootfs/etc/apt/sources.list"
elif [ -r /etc/apt/sources.list ]; then
    cp /etc/apt/sources.list "$rootfs/etc/apt/sources.list"
fi

# Packages installed later skip documentation and translations.
cat >"$rootfs/etc/dpkg/dpkg.cfg.d/excludes" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
EOF

# APT keeps no downloaded .deb files and no package caches in image layers.
cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
cat >"$rootfs/etc/apt/apt.conf.d/docker-no-languages" <<'EOF'
Acquire::Languages "none";
EOF

# Remove the documentation, caches and logs that debootstrap left behind.
find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
(
    cd "$rootfs"
    rm -rf usr/share/man/* usr/share/info/* usr/share/locale/* \
        usr/share/lintian/* var/lib/apt/lists/* var/cache/apt/*.bin \
        var/cache/apt/archives/*.deb var/cache/debconf/*-old \
        dev/* proc/* sys/* tmp/*
)
find "$rootfs/var/log" -type f -delete
chmod 0755 "$rootfs"

log "importing as $image"
tar --numeric-owner -C "$rootfs" -c . |
    podman import --quiet --change 'CMD ["bash"]' - "$image" >/dev/null
log "done: $(podman image inspect --format '{{.Size}}' "$image") bytes"
