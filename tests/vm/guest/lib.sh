# shellcheck shell=bash
# Helpers for the guest scenarios of tests/vm/run; a scenario starts with
#   . /vm/guest/lib.sh
# (bash). It then runs with set -euo pipefail, in $VM_WORK (fresh, under /tmp),
# on blank NVMe drives. What a scenario can rely on:
#   VM_SCENARIO      its name
#   VM_WORK          its work dir; cleanup_check asserts nothing is mounted there
#   VM_NVME_DRIVES   every NVMe drive, e.g. "/dev/nvme0n1 /dev/nvme2n1 ...", in
#                    serial order (vdrive-qlc-0 … vdrive-tlc-2)
#   VM_TLC_DRIVES    the drives with serial vdrive-tlc-*, in serial order
#   VM_QLC_DRIVES    the drives with serial vdrive-qlc-*
#   VM_SCRATCH_DEV, VM_SCRATCH_DIR  a small disk (/dev/vda) mounted at
#                    /mnt/scratch: vdrive must never sign or touch it
#   VM_CSI_SANITY    /bin/csi-sanity if a scenario of the boot has the line
#                    "# vm-needs: csi-sanity", else empty
#   VM_TEST_BINS     the test executables the host packed (VM_TEST_BINS), in
#                    /bin (see vm_test_bin); env!("CARGO_BIN_EXE_vdrive") of
#                    integration tests leads to /bin/vdrive
#   DM_DISABLE_UDEV=1  set: there is no udev, libdevmapper makes /dev/mapper nodes
# Tools: vdrive, util-linux (mount, losetup, blkid, wipefs, findmnt, blockdev,
# blkdiscard, lsblk), e2fsprogs, xfsprogs, dmsetup, fio ("# vm-needs: fio"),
# bash, and busybox for everything else (dd, cmp, od, sha256sum, timeout …).
# Helpers below: pass, fail MSG, check CMD..., step MSG, wait_for_socket PATH,
# vm_drive SERIAL, vm_blank_drives, vm_sign_drives, vm_test_bin NAME,
# vdrive_start DIR [ARGS], vdrive_stop, cleanup_check [DIR].
# It exits 0 to pass (pass does), anything else fails; /init stops it (and all
# it started) after VM_SCENARIO_TIMEOUT, and tears down what it left mounted,
# mapped or bound after it ends.
set -euo pipefail

_bg_pids=()

# The scenario passed.
pass() {
    echo "PASS: $VM_SCENARIO"
    exit 0
}

# The scenario failed, saying why.
fail() {
    echo "FAIL: $VM_SCENARIO: $*" >&2
    exit 1
}

# Runs a command, echoed first; fails the scenario if it fails.
check() {
    echo "+ $*"
    local rc=0
    "$@" || rc=$?
    ((rc == 0)) || fail "$* exited $rc"
}

# Prints a heading, so a failure's log reads as steps.
step() { echo "== $*"; }

# Waits until PATH is a socket (default 60 s; set a second argument to change).
# With a pid as third argument, fails at once if that process is gone.
wait_for_socket() {
    local path=$1 secs=${2:-60} pid=${3:-} i
    for ((i = 0; i < secs * 10; i++)); do
        [[ -S $path ]] && return 0
        if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then
            fail "the process that should serve $path (pid $pid) exited"
        fi
        sleep 0.1
    done
    fail "no socket at $path after $secs s"
}

# The device of the NVMe drive with this serial (vdrive-tlc-0 …).
vm_drive() {
    local d
    for d in /sys/block/nvme*n1; do
        if [[ $(tr -d ' ' <"$d/device/serial") == "$1" ]]; then
            echo "/dev/${d##*/}"
            return 0
        fi
    done
    fail "no NVMe drive with serial $1"
}

# Discards every NVMe drive whole (signatures, volumes, all) and checks that it
# reads back zeroes. Every scenario starts so; this is for starting over within one.
vm_blank_drives() {
    local dev
    for dev in $VM_NVME_DRIVES; do
        # -f: it is a vdrive drive by now; its "data will be lost" warning is noise.
        blkdiscard -f "$dev" 2>/dev/null || fail "blkdiscard -f $dev failed"
        cmp -s -n 1048576 "$dev" /dev/zero || fail "$dev does not read back zeroes after blkdiscard"
    done
}

# Signs the TLC drives as tlc and the QLC drives as qlc (vdrive sign --device).
vm_sign_drives() {
    local args=() dev
    for dev in $VM_TLC_DRIVES; do args+=(--device "$dev"); done
    ((${#args[@]} == 0)) || check vdrive sign "${args[@]}" --type tlc
    args=()
    for dev in $VM_QLC_DRIVES; do args+=(--device "$dev"); done
    ((${#args[@]} == 0)) || check vdrive sign "${args[@]}" --type qlc
}

# The path of the packed test executable NAME (cargo's NAME-<hash> too), from
# VM_TEST_BINS; fails the scenario if the host packed none.
vm_test_bin() {
    local bin
    for bin in ${VM_TEST_BINS:-}; do
        case ${bin##*/} in "$1" | "$1"-*) echo "$bin"; return 0 ;; esac
    done
    fail "no test executable $1 in the guest: run tests/vm/run with VM_TEST_BINS naming it (cargo test --no-run prints its path)"
}

# Starts `vdrive all-in-one` on unix://$1/csi.sock with state in $1/state and
# its log in $1/vdrive.log, plus any further arguments; waits for its socket.
# Sets VDRIVE_PID. It is stopped (SIGTERM) when the scenario exits, if not before.
vdrive_start() {
    local dir=$1
    shift
    mkdir -p "$dir"
    vdrive all-in-one --endpoint "unix://$dir/csi.sock" --state-dir "$dir/state" "$@" \
        >"$dir/vdrive.log" 2>&1 &
    VDRIVE_PID=$!
    _bg_pids+=("$VDRIVE_PID")
    if ! (wait_for_socket "$dir/csi.sock" 60 "$VDRIVE_PID"); then
        tail -n 40 "$dir/vdrive.log" >&2
        fail "vdrive all-in-one did not serve $dir/csi.sock"
    fi
}

# Stops what vdrive_start started with SIGTERM and waits for it (at most 30 s,
# then SIGKILL, which fails the scenario).
vdrive_stop() {
    local pid=${VDRIVE_PID:-} i
    [[ -n $pid ]] || return 0
    VDRIVE_PID=""
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 300; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null
        fail "vdrive all-in-one (pid $pid) did not stop within 30 s of SIGTERM"
    fi
    wait "$pid" 2>/dev/null || true
}

# Nothing of the scenario is left: no device-mapper device, no bound loop
# device, nothing mounted under DIR (default $VM_WORK).
cleanup_check() {
    local dir=${1:-$VM_WORK} d left=()
    for d in /sys/block/dm-*; do
        [[ -e $d ]] && left+=("dm device ${d##*/} ($(cat "$d/dm/name" 2>/dev/null))")
    done
    for d in /sys/block/loop*; do
        [[ -e $d/loop/backing_file ]] && left+=("loop device ${d##*/} over $(cat "$d/loop/backing_file")")
    done
    while read -r _ target _; do
        [[ $target == "$dir" || $target == "$dir"/* ]] && left+=("mount at $target")
    done </proc/mounts
    if ((${#left[@]})); then
        printf '  left behind: %s\n' "${left[@]}" >&2
        fail "cleanup_check: ${#left[@]} thing(s) left behind"
    fi
    echo "cleanup_check: nothing left behind"
}

# Background processes started through this library die with the scenario.
_lib_exit() {
    local pid
    for pid in "${_bg_pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
}
trap _lib_exit EXIT
