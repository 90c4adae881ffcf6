#!/usr/bin/env bash
# Prepare a fresh Debian bookworm machine (as root) for building and testing Vessel:
# installs the packages the project needs (only those missing), then builds the guest assets
# (scripts/guest-assets.sh, into <repo>/.cache/assets or $VESSEL_ASSETS). Idempotent.
#
# Usage: sudo scripts/setup.sh
set -euo pipefail

die() { echo "setup: error: $*" >&2; exit 1; }
log() { echo "setup: $*" >&2; }

SCRIPT_DIR="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)"

# qemu-system-x86: the host box (and the reference VMM inside it); qemu-utils: qemu-img, which
# the qcow2 tests use to check Vessel's images and to make images for it; cpio: packing
# initramfs; lz4: unpacking the kernel; busybox-static: handy on the host; binutils: readelf;
# gcc: building small test guests.
PACKAGES="qemu-system-x86 qemu-utils cpio lz4 busybox-static binutils gcc"

command -v dpkg-query >/dev/null && command -v apt-get >/dev/null \
    || die "this script needs Debian (bookworm): dpkg-query/apt-get not found"

missing=""
for p in $PACKAGES; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        missing="$missing $p"
    fi
done

if [ -n "$missing" ]; then
    [ "$(id -u)" = 0 ] || die "packages missing:$missing; run this script as root"
    log "installing:$missing"
    apt-get update -q || die "apt-get update failed"
    # qemu-system-x86 and qemu-utils must come from one QEMU release: installing the first
    # alone removes a qemu-utils of another version (these machines may ship a newer one), so
    # both are installed together at qemu-system-x86's version.
    case " $missing " in
    *" qemu-system-x86 "*|*" qemu-utils "*)
        qemu_version=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
        [ -n "$qemu_version" ] && [ "$qemu_version" != "(none)" ] \
            || die "no installable qemu-system-x86 package"
        missing=$(echo "$missing" | sed -e 's/ qemu-system-x86//; s/ qemu-utils//')
        missing="$missing qemu-system-x86=$qemu_version qemu-utils=$qemu_version"
        ;;
    esac
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        --allow-downgrades $missing || die "apt-get install$missing failed"
else
    log "packages already installed: $PACKAGES"
fi

# /dev/kvm is not needed by the host box (QEMU runs it under TCG), but say what we see.
if [ -e /sys/module/kvm_pvm ]; then
    log "note: /dev/kvm here is kvm_pvm: stock Linux guests run only inside the host box (crates/testbox)"
elif [ ! -e /dev/kvm ]; then
    log "note: no /dev/kvm on this machine"
fi

bash "$SCRIPT_DIR/guest-assets.sh" ${VESSEL_ASSETS:+"$VESSEL_ASSETS"}
log "done"
