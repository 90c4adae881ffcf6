#!/usr/bin/env bash
# Build the guest assets used by Vessel's tests (see docs and crates/testbox).
#
# Usage: scripts/guest-assets.sh [OUTDIR]      (default OUTDIR: <repo>/.cache/assets)
#
# Produces in OUTDIR, from Debian bookworm packages (linux-image-cloud-amd64, busybox-static):
#   bzImage             the Debian cloud kernel, as shipped (boot/vmlinuz-*)
#   vmlinux             the ELF kernel extracted from bzImage (LZ4 payload), carries the Xen PVH note
#   busybox             static busybox
#   kernel-release      the `uname -r` string of the kernel
#   modules/            the whole lib/modules/<release> tree, with a modules.dep (busybox depmod)
#   initramfs.cpio.gz   the L2 guest initramfs (newc, gzip): busybox, virtio modules, /init
#
# Idempotent: OUTDIR/.complete holds a hash of this script; when it matches and every output is
# present, nothing is done. Concurrent runs are serialised with flock on OUTDIR/.lock.
# Needs: apt-get, dpkg-deb, lz4, cpio, gzip, readelf (binutils). As root, missing tools are
# installed with apt-get (scripts/setup.sh does that too).
#
# The guest /init understands these kernel command line parameters (passed to init as env vars):
#   vcmd="..."      run this shell command (sh -c), then print `VESSEL-CMD-EXIT rc=N`
#   vscript=NAME    run /scripts/NAME (if present) instead, same exit line
#   vinteractive=1  with neither of the above, open an interactive shell on the console
#   vroot=DEV       once the modules are loaded, mount DEV (a disk holding a copy of this
#                   initramfs' tree) and switch_root into it: its /init (this script) then runs
#                   from the disk, as a distribution's root file system would
# It prints `VESSEL-GUEST-INIT` once the modules are loaded, and powers off at the end.
# The ACPI power button works as on a distribution: the kernel's button driver reports KEY_POWER
# on an input device, busybox acpid (started before VESSEL-GUEST-INIT, pid in /run/acpid.pid)
# runs /etc/acpi/PWRF/00000080, which prints `VESSEL-GUEST-POWER-BUTTON` and runs `poweroff`;
# that signals init (SIGUSR2, as to busybox init; `halt` sends SIGUSR1), and init stops every
# process, unmounts the disks, prints `VESSEL-GUEST-SHUTDOWN` and powers off. The vcmd/vscript
# command runs in the background with init waiting for it, so a request takes effect at once;
# with vinteractive=1 it takes effect when the shell exits.
# To add scripts for vscript=NAME, pass a second initrd archive (the kernel unpacks concatenated
# cpio archives): e.g. `cat initramfs.cpio.gz extra.cpio.gz > mine.cpio.gz`, extra.cpio holding
# scripts/NAME.
set -euo pipefail

die() { echo "guest-assets: error: $*" >&2; exit 1; }
log() { echo "guest-assets: $*" >&2; }

SCRIPT_PATH="$(readlink -f "${BASH_SOURCE[0]}")"
REPO_ROOT="$(cd "$(dirname "$SCRIPT_PATH")/.." && pwd)"
OUTDIR="${1:-$REPO_ROOT/.cache/assets}"
mkdir -p "$OUTDIR" || die "cannot create $OUTDIR"
OUTDIR="$(cd "$OUTDIR" && pwd)"

# Modules carried by the guest initramfs (loaded in dependency order computed from modules.dep).
GUEST_MODULES="virtio virtio_ring virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_mmio
virtio_blk failover net_failover virtio_net virtio_rng virtio_balloon virtio_console
button evdev"

OUTPUTS="bzImage vmlinux busybox kernel-release modules/modules.dep initramfs.cpio.gz"

# ---------------------------------------------------------------------------------------------
# Fast path: already complete?
STAMP="$OUTDIR/.complete"
WANT_STAMP="$(sha256sum "$SCRIPT_PATH" | cut -d' ' -f1)"
is_complete() {
    [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT_STAMP" ] || return 1
    local f
    for f in $OUTPUTS; do [ -e "$OUTDIR/$f" ] || return 1; done
    return 0
}
if is_complete; then
    log "up to date in $OUTDIR"
    exit 0
fi

command -v flock >/dev/null || die "flock not found (util-linux)"
exec 9>"$OUTDIR/.lock"
flock 9
# Someone else may have finished while we waited for the lock.
if is_complete; then
    log "up to date in $OUTDIR"
    exit 0
fi
rm -f "$STAMP"

# ---------------------------------------------------------------------------------------------
# Tools.
need_pkgs=""
for t in lz4:lz4 cpio:cpio gzip:gzip readelf:binutils dpkg-deb:dpkg od:coreutils; do
    command -v "${t%%:*}" >/dev/null || need_pkgs="$need_pkgs ${t#*:}"
done
command -v apt-get >/dev/null || die "apt-get not found: this script needs Debian (bookworm)"
if [ -n "$need_pkgs" ]; then
    if [ "$(id -u)" = 0 ]; then
        log "installing missing tools:$need_pkgs"
        apt-get update -q >&2 || die "apt-get update failed"
        # shellcheck disable=SC2086
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q $need_pkgs >&2 \
            || die "apt-get install$need_pkgs failed"
    else
        die "missing tools (packages:$need_pkgs); run scripts/setup.sh as root"
    fi
fi

# ---------------------------------------------------------------------------------------------
# Download packages (kept in OUTDIR/debs so a rebuild does not download again).
DEBS="$OUTDIR/debs"
mkdir -p "$DEBS"
cd "$DEBS"

# (Output captured first: `grep -q` closing the pipe early would fail the pipeline under pipefail.)
meta_candidate() { apt-cache policy linux-image-cloud-amd64 2>/dev/null | sed -n 's/^ *Candidate: *//p' | grep -v '(none)' || true; }
if [ -z "$(meta_candidate)" ]; then
    [ "$(id -u)" = 0 ] || die "apt has no candidate for linux-image-cloud-amd64; run 'apt-get update' as root"
    log "no apt candidate for linux-image-cloud-amd64: running apt-get update"
    apt-get update -q >&2 || die "apt-get update failed"
    [ -n "$(meta_candidate)" ] \
        || die "linux-image-cloud-amd64 not available from apt (is this Debian bookworm with main enabled?)"
fi

# apt-get download as root warns that the download is unsandboxed: harmless, filtered out.
apt_download() {
    log "apt-get download $*"
    apt-get download -q "$@" 2>&1 | grep -v 'unsandboxed' >&2 || true
    # Success is judged by the file being there (the grep above eats the exit status).
}

meta_ver="$(meta_candidate)"
meta_deb="$(ls linux-image-cloud-amd64_*.deb 2>/dev/null | grep -F "_${meta_ver/*:/}_" | head -1 || true)"
if [ -z "$meta_deb" ]; then
    apt_download "linux-image-cloud-amd64=$meta_ver"
    meta_deb="$(ls linux-image-cloud-amd64_*.deb 2>/dev/null | grep -F "_${meta_ver/*:/}_" | head -1 || true)"
    [ -n "$meta_deb" ] || die "apt-get download linux-image-cloud-amd64=$meta_ver failed"
fi

# Depends: linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)
dep="$(dpkg-deb -f "$meta_deb" Depends | tr ',' '\n' | grep -o 'linux-image-[0-9][^ ]*-cloud-amd64 *(= *[^)]*)' | head -1 || true)"
[ -n "$dep" ] || die "cannot find the concrete linux-image package in Depends of $meta_deb: $(dpkg-deb -f "$meta_deb" Depends)"
kpkg="${dep%% *}"
kver="$(echo "$dep" | sed 's/.*(= *\([^)]*\)).*/\1/')"
kdeb="$(ls "${kpkg}"_*.deb 2>/dev/null | grep -F "_${kver/*:/}_" | head -1 || true)"
if [ -z "$kdeb" ]; then
    apt_download "$kpkg=$kver"
    kdeb="$(ls "${kpkg}"_*.deb 2>/dev/null | grep -F "_${kver/*:/}_" | head -1 || true)"
    [ -n "$kdeb" ] || die "apt-get download $kpkg=$kver failed"
fi

bb_deb="$(ls busybox-static_*.deb 2>/dev/null | head -1 || true)"
if [ -z "$bb_deb" ]; then
    apt_download busybox-static
    bb_deb="$(ls busybox-static_*.deb 2>/dev/null | head -1 || true)"
    [ -n "$bb_deb" ] || die "apt-get download busybox-static failed"
fi
log "kernel package: $kdeb; busybox: $bb_deb"

# ---------------------------------------------------------------------------------------------
# Unpack.
WORK="$OUTDIR/.work"
rm -rf "$WORK"
mkdir -p "$WORK/kernel" "$WORK/busybox"
trap 'rm -rf "$WORK"' EXIT
dpkg-deb -x "$DEBS/$kdeb" "$WORK/kernel" || die "dpkg-deb -x $kdeb failed"
dpkg-deb -x "$DEBS/$bb_deb" "$WORK/busybox" || die "dpkg-deb -x $bb_deb failed"

BB="$WORK/busybox/bin/busybox"
[ -x "$BB" ] || die "busybox-static package has no bin/busybox"
"$BB" true || die "the downloaded busybox does not run on this host"

set -- "$WORK"/kernel/boot/vmlinuz-*
[ $# = 1 ] && [ -f "$1" ] || die "expected exactly one boot/vmlinuz-* in $kdeb"
VMLINUZ="$1"
RELEASE="${VMLINUZ##*/vmlinuz-}"
MODSRC="$WORK/kernel/lib/modules/$RELEASE"
[ -d "$MODSRC/kernel" ] || die "$kdeb has no lib/modules/$RELEASE/kernel"
log "kernel release $RELEASE"

# ---------------------------------------------------------------------------------------------
# Modules: decompress if the package ships compressed modules, then generate modules.dep.
nxz="$(find "$MODSRC" -name '*.ko.xz' | wc -l)"
nzst="$(find "$MODSRC" -name '*.ko.zst' | wc -l)"
ngz="$(find "$MODSRC" -name '*.ko.gz' | wc -l)"
if [ "$nxz" -gt 0 ]; then
    log "decompressing $nxz .ko.xz modules"
    find "$MODSRC" -name '*.ko.xz' -exec "$BB" unxz {} + || die "unxz of modules failed"
fi
if [ "$ngz" -gt 0 ]; then
    log "decompressing $ngz .ko.gz modules"
    find "$MODSRC" -name '*.ko.gz' -exec gzip -d {} + || die "gunzip of modules failed"
fi
if [ "$nzst" -gt 0 ]; then
    command -v zstd >/dev/null || die "modules are zstd-compressed: install zstd"
    log "decompressing $nzst .ko.zst modules"
    find "$MODSRC" -name '*.ko.zst' -exec zstd -q -d --rm {} + || die "unzstd of modules failed"
fi
# The package has no modules.dep (depmod runs at install time); busybox depmod writes one.
"$BB" depmod -b "$WORK/kernel" "$RELEASE" || die "busybox depmod failed"
[ -s "$MODSRC/modules.dep" ] || die "depmod produced no modules.dep"

# ---------------------------------------------------------------------------------------------
# vmlinux: the bzImage payload (LZ4 legacy frame followed by a 4-byte uncompressed size).
u8_at() { od -An -t u1 -j "$(($2))" -N1 "$1" | tr -d ' \n'; }
u32_at() { od -An -t u4 -j "$(($2))" -N4 "$1" | tr -d ' \n'; }
[ "$(od -An -c -j $((0x202)) -N4 "$VMLINUZ" | tr -d ' \n')" = "HdrS" ] || die "$VMLINUZ is not a bzImage (no HdrS)"
setup_sects="$(u8_at "$VMLINUZ" 0x1f1)"
[ "$setup_sects" -ne 0 ] || setup_sects=4
payload_offset="$(u32_at "$VMLINUZ" 0x248)"
payload_length="$(u32_at "$VMLINUZ" 0x24c)"
payload_start=$(( (setup_sects + 1) * 512 + payload_offset ))
log "bzImage: setup_sects=$setup_sects payload at $payload_start, $payload_length bytes"
magic="$(od -An -t x1 -j "$payload_start" -N4 "$VMLINUZ" | tr -d ' \n')"
[ "$magic" = "02214c18" ] || die "bzImage payload is not LZ4 legacy (magic $magic); only LZ4 is supported"
dd if="$VMLINUZ" of="$WORK/payload" bs=1M iflag=skip_bytes,count_bytes \
    skip="$payload_start" count="$payload_length" status=none || die "cannot cut the payload out of $VMLINUZ"
[ "$(stat -c %s "$WORK/payload")" = "$payload_length" ] || die "bzImage payload truncated"
want_size="$(u32_at "$WORK/payload" "$((payload_length - 4))")"
head -c "$((payload_length - 4))" "$WORK/payload" | lz4 -d -c > "$WORK/vmlinux" \
    || die "lz4 -d of the bzImage payload failed"
got_size="$(stat -c %s "$WORK/vmlinux")"
[ "$got_size" = "$want_size" ] || die "vmlinux is $got_size bytes, the payload says $want_size"
[ "$(head -c 4 "$WORK/vmlinux" | od -An -t x1 | tr -d ' \n')" = "7f454c46" ] || die "extracted vmlinux is not ELF"
# XEN_ELFNOTE_PHYS32_ENTRY (18 = 0x12): the PVH entry point.
readelf -n "$WORK/vmlinux" > "$WORK/notes" || die "readelf -n vmlinux failed"
grep -Eq '^ *Xen .*(\(0x00000012\)|PHYS32)' "$WORK/notes" \
    || die "extracted vmlinux has no Xen PVH note (XEN_ELFNOTE_PHYS32_ENTRY)"

# ---------------------------------------------------------------------------------------------
# Guest initramfs.
#
# Module load order: depth-first over modules.dep, dependencies first.
# Prints one line per wanted module: "mod <relpath>" or "builtin <name>" or "missing <name>".
resolve_modules() {
    awk -v want="$1" -v builtin_file="$MODSRC/modules.builtin" '
    function norm(s) { sub(/.*\//, "", s); sub(/\.ko$/, "", s); gsub(/-/, "_", s); return s }
    function visit(n,    i, k, parts) {
        if (n in done) return
        done[n] = 1
        if (!(n in path)) { print "missing " n; return }
        k = split(deps[n], parts, " ")
        for (i = 1; i <= k; i++) visit(norm(parts[i]))
        print "mod " path[n]
    }
    BEGIN {
        while ((getline line < builtin_file) > 0) builtin[norm(line)] = 1
    }
    {
        p = $1; sub(/:$/, "", p)
        n = norm(p); path[n] = p
        d = ""
        for (i = 2; i <= NF; i++) d = d " " $i
        deps[n] = d
    }
    END {
        k = split(want, w, /[ \n]+/)
        for (i = 1; i <= k; i++) {
            if (w[i] == "") continue
            n = norm(w[i])
            if (n in path) visit(n)
            else if (n in builtin) print "builtin " n
            else print "missing " n
        }
    }' "$MODSRC/modules.dep"
}

IR="$WORK/initramfs"
mkdir -p "$IR"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,tmp,run,root,scripts,lib/modules/"$RELEASE"}
cp "$BB" "$IR/bin/busybox"
# Busybox applet links (at build time, so /init can rely on them).
"$BB" --list-full | while read -r applet; do
    [ "$applet" = "bin/busybox" ] && continue
    case "$applet" in
        bin/*) ln -sf busybox "$IR/$applet" ;;
        *) ln -sf /bin/busybox "$IR/$applet" ;;
    esac
done
[ -e "$IR/bin/sh" ] || ln -sf busybox "$IR/bin/sh"
# /dev/console for the kernel to open before /init runs (the kernel's built-in initramfs has one
# too; this works only as root, which is fine).
mknod -m 600 "$IR/dev/console" c 5 1 2>/dev/null || true

: > "$IR/etc/modules.order"
: > "$IR/lib/modules/$RELEASE/modules.dep"
while read -r kind what; do
    case "$kind" in
        mod)
            mkdir -p "$IR/lib/modules/$RELEASE/$(dirname "$what")"
            cp "$MODSRC/$what" "$IR/lib/modules/$RELEASE/$what"
            echo "/lib/modules/$RELEASE/$what" >> "$IR/etc/modules.order"
            grep "^$what:" "$MODSRC/modules.dep" >> "$IR/lib/modules/$RELEASE/modules.dep"
            ;;
        builtin) log "module $what is built into the kernel" ;;
        missing) die "module $what is neither in modules.dep nor built in" ;;
        *) die "internal: bad resolve_modules output: $kind $what" ;;
    esac
done < <(resolve_modules "$GUEST_MODULES")
log "guest module order: $(sed 's#.*/##' "$IR/etc/modules.order" | tr '\n' ' ')"
cp "$MODSRC/modules.builtin" "$IR/lib/modules/$RELEASE/" 2>/dev/null || true
echo "$RELEASE" > "$IR/etc/kernel-release"

# busybox acpid maps a KEY_POWER press to the action PWRF/00000080, run from /etc/acpi.
mkdir -p "$IR/etc/acpi/PWRF"
cat > "$IR/etc/acpi/PWRF/00000080" <<'EOF'
#!/bin/sh
# The ACPI power button was pressed (run by acpid): power off cleanly, through init.
echo VESSEL-GUEST-POWER-BUTTON
exec poweroff
EOF
chmod 755 "$IR/etc/acpi/PWRF/00000080"

cat > "$IR/init" <<'EOF'
#!/bin/sh
# Vessel L2 guest init (generated by scripts/guest-assets.sh).
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
export HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts 2>/dev/null
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
[ -c /dev/console ] && exec </dev/console >/dev/console 2>&1

while read -r m; do
    [ -n "$m" ] || continue
    name=${m##*/}; name=${name%.ko}
    # Already loaded (or built in): nothing to do.
    [ -d "/sys/module/$(echo "$name" | tr - _)" ] && continue
    insmod "$m" 2>/tmp/insmod.err || echo "init: insmod $name failed: $(cat /tmp/insmod.err)"
done < /etc/modules.order
rm -f /tmp/insmod.err

# vroot=DEV: this same tree on a disk becomes the root file system (once: from the disk, `/` is
# no longer the initramfs and this is skipped).
if [ -n "${vroot:-}" ] && [ "$(awk '$2 == "/" { print $3; exit }' /proc/mounts)" = rootfs ]; then
    mkdir -p /newroot
    if mount "$vroot" /newroot; then
        umount /tmp /run /dev/pts 2>/dev/null
        exec switch_root /newroot /init
    fi
    echo "init: cannot mount vroot=$vroot"
fi

# An orderly power-off, as busybox init does it when `poweroff` (SIGUSR2) or `halt` (SIGUSR1)
# asks: stop every process, unmount the disks (or make them read-only), power off.
shutdown() {
    trap '' USR1 USR2
    echo "init: power-off requested: stopping every process"
    kill -TERM -1 2>/dev/null
    sleep 1
    kill -KILL -1 2>/dev/null
    sync
    for m in $(awk '$1 ~ /^\/dev\// { print $2 }' /proc/mounts | sort -r); do
        umount "$m" 2>/dev/null || mount -o remount,ro "$m" 2>/dev/null
    done
    echo VESSEL-GUEST-SHUTDOWN
    poweroff -f
}
trap shutdown USR1 USR2

# The ACPI power button's events (see the header of guest-assets.sh).
acpid -l /dev/console -p /run/acpid.pid || echo "init: acpid failed"

echo VESSEL-GUEST-INIT

# The command runs in the background, init waiting for it: a power-off request (a trapped
# signal) interrupts `wait` at once, where a foreground command would delay it until it ends.
# Its standard input stays the console.
exec 3<&0
if [ -n "${vcmd:-}" ]; then
    sh -c "$vcmd" <&3 3<&- &
    wait $!
    echo "VESSEL-CMD-EXIT rc=$?"
elif [ -n "${vscript:-}" ] && [ -f "/scripts/$vscript" ]; then
    sh "/scripts/$vscript" <&3 3<&- &
    wait $!
    echo "VESSEL-CMD-EXIT rc=$?"
elif [ -n "${vscript:-}" ]; then
    echo "init: /scripts/$vscript not found"
    echo "VESSEL-CMD-EXIT rc=127"
elif [ "${vinteractive:-}" = 1 ]; then
    setsid cttyhack sh -l || sh
fi

sync
poweroff -f
# Not reached unless power off failed; exiting init panics, and panic=-1 reboots.
sleep 1
reboot -f
EOF
chmod 755 "$IR/init"

(cd "$IR" && find . | LC_ALL=C sort | cpio -o -H newc --quiet | gzip -9) > "$WORK/initramfs.cpio.gz" \
    || die "packing the initramfs failed"

# ---------------------------------------------------------------------------------------------
# Install into OUTDIR.
rm -rf "$OUTDIR/modules"
mv "$MODSRC" "$OUTDIR/modules"
cp "$VMLINUZ" "$OUTDIR/bzImage"
mv "$WORK/vmlinux" "$OUTDIR/vmlinux"
cp "$BB" "$OUTDIR/busybox"
echo "$RELEASE" > "$OUTDIR/kernel-release"
mv "$WORK/initramfs.cpio.gz" "$OUTDIR/initramfs.cpio.gz"
echo "$WANT_STAMP" > "$STAMP"
log "done: $OUTDIR (kernel $RELEASE, $(stat -c %s "$OUTDIR/initramfs.cpio.gz") byte initramfs)"
