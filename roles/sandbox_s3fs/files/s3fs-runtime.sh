#!/bin/sh
# Install Debian SUITE's s3fs with the libraries it needs into DEST, run through its own dynamic
# loader, so that a host whose own s3fs is too old gets a newer one without any host library changing.
# Usage: s3fs-runtime.sh DEST CACHE SUITE
#   DEST   absolute directory: DEST/bin/s3fs (the wrapper to run), DEST/root, DEST/release
#   CACHE  work directory; keeps SUITE's package lists and the .debs between runs
#   SUITE  Debian suite to take s3fs from, e.g. trixie
# The packages come from the Debian mirror in the host's own apt sources. Prints one line on
# stdout when it installed something, nothing when DEST already had SUITE's s3fs.
set -eu

step() { printf 's3fs-runtime: %s\n' "$*" >&2; }
die() { step "error: $*"; exit 1; }

[ "$#" -eq 3 ] || die "usage: $0 DEST CACHE SUITE"
dest=${1%/}
cache=${2%/}
suite=$3
case "$dest" in
    "" | /*[!A-Za-z0-9._/+-]* | [!/]*) die "DEST must be an absolute path of [A-Za-z0-9._/+-]: $dest" ;;
esac
umask 022

arch=$(dpkg --print-architecture)
case "$arch" in
    amd64) multiarch=x86_64-linux-gnu loader=usr/lib64/ld-linux-x86-64.so.2 ;;
    arm64) multiarch=aarch64-linux-gnu loader=usr/lib/ld-linux-aarch64.so.1 ;;
    *) die "architecture $arch is not supported (only amd64 and arm64)" ;;
esac
libdir=usr/lib/$multiarch

# shellcheck disable=SC2016 # $root is the wrapper's variable
wrapper() {  # ROOT NOW: the wrapper running ROOT's s3fs, whose files are at NOW for the time being
    printf '#!/bin/sh\n'
    printf '# s3fs from Debian %s with its own libraries and loader (sandbox-host role sandbox_s3fs).\n' "$suite"
    printf "root='%s'\n" "$1"
    if [ -d "$2/$libdir/gconv" ]; then
        # Without it, the newer libc would load the host's gconv modules.
        printf 'GCONV_PATH="$root/%s/gconv"\nexport GCONV_PATH\n' "$libdir"
    fi
    printf 'exec "$root/usr/libexec/s3fs" --inhibit-cache --library-path "$root/%s" "$root/usr/bin/s3fs" "$@"\n' \
        "$libdir"
}
upstream() { printf '%s\n' "${1#*:}" | sed 's/[^0-9.].*//'; }

# --- already there? DEST/release holds "SUITE DEBIAN-VERSION" of the s3fs it runs; the wrapper
# is compared too, so that a changed wrapper gets installed.
if [ -r "$dest/release" ] && [ -x "$dest/bin/s3fs" ]; then
    read -r have_suite have_version <"$dest/release" || true
    if [ "${have_suite:-}" = "$suite" ] && [ -n "${have_version:-}" ] &&
        wrapper "$dest/root" "$dest/root" | cmp -s - "$dest/bin/s3fs" &&
        "$dest/bin/s3fs" --version 2>/dev/null | grep -q "V$(upstream "$have_version")[^0-9.]"; then
        step "up to date: s3fs $have_version from $suite in $dest"
        exit 0
    fi
fi

keyring=/usr/share/keyrings/debian-archive-keyring.gpg
[ -f "$keyring" ] || die "$keyring is missing (package debian-archive-keyring); without it $suite cannot be verified"

# --- the Debian mirror: the first archive (http, https or file) of the host's own release in its
# apt sources, as apt itself reads them (provisioning/aptmirror.py takes the same).
# shellcheck source=/dev/null
codename=$(. /etc/os-release && printf '%s' "${VERSION_CODENAME:-}")
[ -n "$codename" ] || die "no VERSION_CODENAME in /etc/os-release"
# shellcheck disable=SC2016 # $(...) are apt's fields
mirror=$(apt-get indextargets --no-release-info --format '$(TARGET_OF) $(RELEASE) $(SITE)' |
    awk -v cn="$codename" '$1 == "deb" && $2 == cn && $3 ~ /^(https?:\/\/|file:)/ { print $3; exit }')
[ -n "$mirror" ] || die "no 'deb' source for suite $codename in the host's apt sources (apt-get indextargets)"

# --- the closure of s3fs in SUITE, downloaded with a private apt state (empty dpkg status, so
# every dependency is fetched; the host's package database is neither read nor changed).
work=$cache/apt
archives=$cache/archives
mkdir -p "$work/lists/partial" "$work/none" "$archives/partial"
: >"$work/status"
printf 'deb [signed-by=%s] %s %s main\n' "$keyring" "$mirror" "$suite" >"$work/sources.list"
set -- -o "Dir::Etc::SourceList=$work/sources.list" -o "Dir::Etc::SourceParts=$work/none" \
    -o "Dir::Etc::Preferences=$work/none/preferences" -o "Dir::Etc::PreferencesParts=$work/none" \
    -o "Dir::State::Lists=$work/lists" -o "Dir::State::status=$work/status" \
    -o "Dir::State::extended_states=$work/extended_states" -o "Dir::Cache::Archives=$archives" \
    -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache= -o Debug::NoLocking=1 \
    -o APT::Install-Recommends=false -o APT::Install-Suggests=false
step "reading $suite from $mirror"
apt-get "$@" -qq update || die "cannot read $suite from $mirror (not a Debian mirror? see sandbox_s3fs_runtime_archive)"
# "Inst libc6 (2.41-12 Debian:13.2/stable [amd64]) []" -> "libc6_2.41-12_amd64.deb"
apt-get "$@" -s install s3fs |
    sed -n 's/^Inst \([^ ]*\) (\([^ ]*\) [^[]*\[\([^]]*\)\]).*$/\1_\2_\3.deb/p' |
    sed 's/:/%3a/g' >"$work/debs"
version=$(sed -n 's/^s3fs_\(.*\)_[^_]*\.deb$/\1/p' "$work/debs" | sed 's/%3a/:/g')
[ -n "$version" ] || die "$suite at $mirror has no installable s3fs for $arch"
step "fetching s3fs $version and its $(($(wc -l <"$work/debs") - 1)) dependencies into $archives"
apt-get "$@" -qq -y -o APT::Get::Download-Only=true install s3fs
for deb in "$archives"/*.deb; do  # older versions from earlier runs
    [ -f "$deb" ] || continue
    grep -qxF "${deb##*/}" "$work/debs" || rm -f "$deb"
done

# --- unpack everything, then keep what s3fs loads: the libraries the loader resolves for it and for
# the NSS modules (dlopened by libc), and gconv (GCONV_PATH below). Plugins that libraries look for
# under absolute /usr/lib paths (sasl2, krb5, ossl-modules) would be the host's anyway, and so would
# any configuration under /etc: neither is kept.
new=$dest.new
tree=$cache/tree
cleanup() {
    rc=$?
    rm -rf "$tree" "$cache/s3fs-test"
    [ "$rc" -eq 0 ] || rm -rf "$new"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 1' HUP INT TERM
rm -rf "$tree" "$new" "$dest.old"
# 0700: the packages include set-uid programs (fusermount3, mount).
mkdir -m 0700 "$tree"
tree=$(cd "$tree" && pwd -P)
step "unpacking $(wc -l <"$work/debs") packages"
while IFS= read -r deb; do
    [ -f "$archives/$deb" ] || die "apt did not download $deb"
    dpkg-deb -x "$archives/$deb" "$tree"
done <"$work/debs"
[ -x "$tree/usr/bin/s3fs" ] || die "the s3fs package has no usr/bin/s3fs"
[ -x "$tree/$loader" ] || die "libc6 of $suite has no $loader"

keep() {  # PATH under $tree: copy it, and a symlink's target, to $new/root
    case "$1" in "$tree"/*) ;; *) die "$1 is outside the unpacked packages" ;; esac
    rel=${1#"$tree"/}
    mkdir -p "$new/root/${rel%/*}"
    cp -P -p "$1" "$new/root/$rel"
    if [ -L "$1" ]; then keep "$(readlink -f "$1")"; fi
}
libraries() {  # ELF...: every library the loader resolves for them, one path a line
    for elf in "$@"; do
        out=$("$tree/$loader" --inhibit-cache --library-path "$tree/$libdir" --list "$elf") ||
            die "the $suite loader cannot load $elf"
        case "$out" in *"not found"*) die "$elf needs a library that is not in the closure: $out" ;; esac
        printf '%s\n' "$out" | sed -n 's/^[[:space:]]*[^ ]* => \(.*\) (0x[0-9a-f]*)$/\1/p'
    done
}
step "selecting what s3fs needs"
mkdir -p "$new/bin"
keep "$tree/usr/bin/s3fs"
keep "$tree/$loader"
# The loader also as usr/libexec/s3fs: a process is named after what it was started as, so
# started through this link it is "s3fs" (comm, argv[0]) for pgrep and the like, not "ld-linux...".
mkdir -p "$new/root/usr/libexec"
ln -s "../${loader#usr/}" "$new/root/usr/libexec/s3fs"
set -- "$tree/usr/bin/s3fs"
for nss in "$tree/$libdir"/libnss_*.so.*; do
    if [ -f "$nss" ]; then keep "$nss"; set -- "$@" "$nss"; fi
done
libs=$(libraries "$@")
printf '%s\n' "$libs" | sort -u | while IFS= read -r lib; do keep "$lib"; done
if [ -d "$tree/$libdir/gconv" ]; then
    cp -R -P -p "$tree/$libdir/gconv" "$new/root/$libdir/"
fi

step "checking the new runtime"
wrapper "$new/root" "$new/root" >"$cache/s3fs-test"
out=$(sh "$cache/s3fs-test" --version 2>&1) || die "the new s3fs does not run: $out"
printf '%s\n' "$out" | grep -q "V$(upstream "$version")[^0-9.]" || die "the new s3fs is not $version: $out"
wrapper "$dest/root" "$new/root" >"$new/bin/s3fs"
chmod 0755 "$new/bin/s3fs"
printf '%s %s\n' "$suite" "$version" >"$new/release"

# A directory cannot be renamed over a non-empty one: move the old one aside, the new one in, and
# put the old one back if the new one does not run from its final place.
step "installing into $dest"
mkdir -p "${dest%/*}/"
[ ! -e "$dest" ] || mv "$dest" "$dest.old"
mv "$new" "$dest"
if ! out=$("$dest/bin/s3fs" --version 2>&1); then
    rm -rf "$dest"
    [ ! -e "$dest.old" ] || mv "$dest.old" "$dest"
    die "the installed s3fs does not run: $out"
fi
rm -rf "$dest.old"
size=$(du -sh "$dest" | cut -f1)
step "installed s3fs $version from $suite in $dest ($size)"
printf 'installed s3fs %s from %s in %s (%s)\n' "$version" "$suite" "$dest" "$size"
