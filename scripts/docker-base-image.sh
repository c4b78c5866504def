#!/usr/bin/env bash
# Builds local stand-ins for the official base images, for machines that reach Debian's mirror but no image
# registry: `debian:bookworm-slim` (debootstrap --variant=minbase) and `node:20-bookworm-slim` (the same plus this
# machine's Node 20 and npm, laid out as the official image lays them out, with its `node` user, uid 1000).
# The Dockerfile then builds unchanged here and anywhere the official images can be pulled.
# Usage: scripts/docker-base-image.sh [--force]   (root; installs debootstrap with apt when missing)
set -euo pipefail

NODE_TAG=node:20-bookworm-slim
DEBIAN_TAG=debian:bookworm-slim
force=0
[ "${1:-}" = "--force" ] && force=1

if [ "$force" = 0 ] && docker image inspect "$NODE_TAG" >/dev/null 2>&1 && docker image inspect "$DEBIAN_TAG" >/dev/null 2>&1; then
  echo "docker-base-image: $NODE_TAG and $DEBIAN_TAG exist (--force rebuilds)"
  exit 0
fi

node_bin="$(readlink -f "$(command -v node)")"
node_version="$("$node_bin" --version)"
case "$node_version" in
  v20.*) ;;
  *) echo "docker-base-image: this machine's node is $node_version; the stand-in needs Node 20" >&2; exit 1 ;;
esac
npm_dir="$(npm root -g 2>/dev/null)/npm"
[ -f "$npm_dir/bin/npm-cli.js" ] || { echo "docker-base-image: npm not found at $npm_dir" >&2; exit 1; }

if ! command -v debootstrap >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends debootstrap
fi

# The mirror apt is configured with (deb822 or one-line sources), else Debian's default.
mirror="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)"
[ -n "$mirror" ] || mirror="$(awk '/^deb / && $0 !~ /security/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)"
[ -n "$mirror" ] || mirror=http://deb.debian.org/debian

work="$(mktemp -d /var/tmp/sluice-base.XXXXXX)"
trap 'rm -rf "$work"' EXIT
root="$work/rootfs"

echo "docker-base-image: debootstrap bookworm from $mirror"
debootstrap --variant=minbase bookworm "$root" "$mirror" >"$work/debootstrap.log" 2>&1 || {
  tail -20 "$work/debootstrap.log" >&2; exit 1; }

# Slim like the official -slim images: no docs, man pages, apt lists or caches.
rm -rf "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
  "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb "$root"/var/log/*
cat >"$root/etc/apt/sources.list.d/debian.sources" <<SOURCES
Types: deb
URIs: $mirror
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
rm -f "$root/etc/apt/sources.list"
# As in Debian's docker images: no recommends, no docs from later installs.
printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' >"$root/etc/apt/apt.conf.d/docker-no-recommends"
printf 'path-exclude /usr/share/doc/*\npath-exclude /usr/share/man/*\npath-exclude /usr/share/info/*\n' >"$root/etc/dpkg/dpkg.cfg.d/docker-nodoc"

env_path='PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
tar -C "$root" --numeric-owner -c . | docker import --change "ENV $env_path" --change 'CMD ["bash"]' - "$DEBIAN_TAG" >/dev/null
echo "docker-base-image: tagged $DEBIAN_TAG"

install -D -m 0755 "$node_bin" "$root/usr/local/bin/node"
mkdir -p "$root/usr/local/lib/node_modules"
cp -a "$npm_dir" "$root/usr/local/lib/node_modules/npm"
ln -sf ../lib/node_modules/npm/bin/npm-cli.js "$root/usr/local/bin/npm"
ln -sf ../lib/node_modules/npm/bin/npx-cli.js "$root/usr/local/bin/npx"
chroot "$root" groupadd --gid 1000 node
chroot "$root" useradd --uid 1000 --gid node --shell /bin/bash --create-home node
chroot "$root" /usr/local/bin/node --version >/dev/null

tar -C "$root" --numeric-owner -c . | docker import \
  --change "ENV $env_path" --change "ENV NODE_VERSION=${node_version#v}" --change 'CMD ["node"]' - "$NODE_TAG" >/dev/null
echo "docker-base-image: tagged $NODE_TAG (node $node_version)"
docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E "^($NODE_TAG|$DEBIAN_TAG) "
