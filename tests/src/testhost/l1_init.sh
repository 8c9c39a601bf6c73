#!/bin/sh
# /init of the moat test host's L1 initramfs (built by tests/src/testhost/initramfs.rs,
# booted by tests/src/testhost.rs). Only busybox is in the initramfs.
#
# 1. mounts the per-run scratch share (9p tag `moatrun`) at /moat and reads
#    /moat/config (9p mount options) and /moat/mounts ("tag path" lines);
# 2. mounts the host's / read-only (9p tag `hostroot`) at /host, fresh
#    proc/sys/cgroup2/devtmpfs/devpts/tmpfs inside it, each read-write host
#    directory at its own path, and the scratch share at /run/moat-testhost;
# 3. runs /run/moat-testhost/wrapper.sh chrooted into /host with stdout and
#    stderr in /moat and writes its exit status to /moat/status, writing L1's
#    uptime to /moat/heartbeat every 5 s meanwhile;
# 4. reboots, which ends qemu (it runs with -no-reboot).
export PATH=/bin

say() { echo "moat-testhost: $*"; }
die() {
    say "FATAL: $*"
    sync
    reboot -f
    sleep 60
}
p9() { mount -t 9p -o "trans=virtio,version=9p2000.L,$1" "$2" "$3"; }

mount -t proc proc /proc || die "cannot mount /proc"
mount -t sysfs sysfs /sys || die "cannot mount /sys"
mount -t devtmpfs devtmpfs /dev || die "cannot mount /dev"
mkdir -p /moat /host
p9 msize=512000 moatrun /moat || die "cannot mount the scratch share (9p tag moatrun)"
. /moat/config || die "cannot read /moat/config"
p9 "ro,$ROOT_OPTS" hostroot /host || die "cannot mount the host's / (9p tag hostroot)"

mount -t proc proc /host/proc || die "cannot mount /host/proc"
mount -t sysfs sysfs /host/sys || die "cannot mount /host/sys"
mount -t cgroup2 cgroup2 /host/sys/fs/cgroup || say "warning: no cgroup2"
mount -t devtmpfs devtmpfs /host/dev || die "cannot mount /host/dev"
mkdir -p /host/dev/pts /host/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts /host/dev/pts
mount -t tmpfs -o mode=1777 tmpfs /host/dev/shm
# /tmp, /var/tmp and /var/lib: the host's files (read-only, via 9p) under a
# writable tmpfs overlay, so host paths below them (a CARGO_TARGET_DIR in
# /tmp...) still resolve; writes stay in L1 (/var/lib: libcni's cache in
# /var/lib/cni, which CRI pods need). Plain tmpfs if overlayfs refuses.
mkdir -p /ovl
mount -t tmpfs -o mode=0755 tmpfs /ovl || die "cannot mount /ovl"
for spec in /tmp:1777 /var/tmp:1777 /var/lib:0755; do
    d=${spec%:*} mode=${spec#*:}
    [ -d "/host$d" ] || continue
    mkdir -p "/ovl$d/upper" "/ovl$d/work"
    chmod "$mode" "/ovl$d/upper"
    mount -t overlay -o "lowerdir=/host$d,upperdir=/ovl$d/upper,workdir=/ovl$d/work" \
        overlay "/host$d" ||
        mount -t tmpfs -o "mode=$mode" tmpfs "/host$d" || die "cannot mount $d"
done
mount -t tmpfs -o mode=0755 tmpfs /host/run || die "cannot mount /run"

while read -r tag path; do
    [ -n "$tag" ] || continue
    mkdir -p "/host$path" 2>/dev/null
    p9 "$RW_OPTS" "$tag" "/host$path" || die "cannot mount read-write $path (9p tag $tag)"
done < /moat/mounts

mkdir -p /host/run/moat-testhost
mount --bind /moat /host/run/moat-testhost || die "cannot bind the scratch share"
ip link set lo up
hostname moat-testhost

cat /proc/uptime > /moat/started
# The heartbeat the host's watchdog (tests/src/testhost/watchdog.rs) reads: it stops only
# when L1 schedules nothing at all.
(while :; do cat /proc/uptime > /moat/heartbeat; sleep 5; done) &
heartbeat=$!
say "running script"
env -i chroot /host /bin/sh /run/moat-testhost/wrapper.sh \
    < /dev/null > /moat/stdout 2> /moat/stderr
echo $? > /moat/status.tmp
kill $heartbeat
mv /moat/status.tmp /moat/status
say "script exited with status $(cat /moat/status)"
sync
reboot -f
sleep 60
