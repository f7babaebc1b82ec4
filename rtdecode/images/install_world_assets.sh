#!/usr/bin/env bash
# Installs the Debian half of the image world (rtdecode.images.world) into a per-user
# cache, without touching the system: `apt-get download` + `dpkg -x` (no dependencies,
# no root needed once apt's lists exist). Called by `make install`, .ci/run and, from an
# installed wheel, by `rtdecode demo` on its first run (rtdecode.images.world.install_assets).
#
#   fonts-noto-color-emoji   Noto Color Emoji glyphs (SIL OFL 1.1)
#   tuxpaint-stamps-default  Tux Paint's object photographs (GPL-2+; never committed)
#   unicode-data             emoji-test.txt: Unicode's emoji groups and subgroups
#
# Cache: rtdecode's per-user data folder (rtdecode._utils.paths.user_data_dir: $RTDECODE_DATA,
# else $XDG_DATA_HOME/rtdecode, else ~/.local/share/rtdecode); the packages land in
# <it>/assets/<package>/. Without apt the world is built from its PyPI
# sources only; this script then says which sources are missing and exits 0.
set -euo pipefail

CACHE="${RTDECODE_DATA:-${XDG_DATA_HOME:-$HOME/.local/share}/rtdecode}"
ASSETS="$CACHE/assets"
PACKAGES=(fonts-noto-color-emoji tuxpaint-stamps-default unicode-data)

missing=()
for pkg in "${PACKAGES[@]}"; do
    [ -f "$ASSETS/$pkg/.installed" ] || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg >/dev/null 2>&1; then
    echo "install_world_assets: apt-get/dpkg not found, so the image world will lack" \
        "${missing[*]}; it is built from its PyPI sources (OpenMoji, scikit-image," \
        "scikit-learn) only." >&2
    exit 0
fi

mkdir -p "$ASSETS"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
chmod 755 "$tmp"  # apt's sandbox user may write downloads here

download() { (cd "$tmp" && apt-get download -qq "$@" >/dev/null 2>&1); }
if ! download "${missing[@]}"; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq >/dev/null 2>&1 || true
    fi
    download "${missing[@]}" || true
fi

for pkg in "${missing[@]}"; do
    deb="$(ls "$tmp"/"${pkg}"_*.deb 2>/dev/null | head -n 1 || true)"
    if [ -z "$deb" ]; then
        echo "install_world_assets: could not download $pkg (run 'apt-get update' as root" \
            "and retry); the image world is built without it." >&2
        continue
    fi
    rm -rf "$ASSETS/$pkg.partial"
    dpkg -x "$deb" "$ASSETS/$pkg.partial"
    # Only images, names and licences are used: drop the stamps' sounds (about half the size).
    find "$ASSETS/$pkg.partial" -type f \( -name '*.ogg' -o -name '*.wav' \) -delete
    # Of Unicode's data only the emoji tables are read (and the copyright).
    if [ "$pkg" = unicode-data ]; then
        find "$ASSETS/$pkg.partial" -type f ! -path '*/unicode/emoji/*' ! -path '*/doc/*' -delete
    fi
    dpkg-deb -f "$deb" Package Version > "$ASSETS/$pkg.partial/.installed"
    rm -rf "$ASSETS/$pkg"
    mv "$ASSETS/$pkg.partial" "$ASSETS/$pkg"
    echo "install_world_assets: $pkg -> $ASSETS/$pkg"
done
