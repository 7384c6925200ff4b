#!/usr/bin/env bash
# The test bed works: NVMe drives with their serials, device-mapper, signing,
# and vdrive all-in-one taking a volume through create, stage, publish, write,
# unpublish, unstage and delete on a real NVMe drive.
# shellcheck source-path=SCRIPTDIR source=lib.sh
. /vm/guest/lib.sh

step "the NVMe drives"
read -r -a tlc <<<"$VM_TLC_DRIVES"
read -r -a qlc <<<"$VM_QLC_DRIVES"
((${#tlc[@]} >= 1 && ${#qlc[@]} >= 1)) || fail "need TLC and QLC drives, have TLC: $VM_TLC_DRIVES, QLC: $VM_QLC_DRIVES"
for dev in $VM_NVME_DRIVES; do
    name=${dev#/dev/}
    echo "$dev  serial $(tr -d ' ' </sys/block/"$name"/device/serial)  $(($(blockdev --getsize64 "$dev") >> 30)) GiB"
done
[[ $(vm_drive vdrive-tlc-0) == "${tlc[0]}" ]] || fail "vdrive-tlc-0 is $(vm_drive vdrive-tlc-0), not the first of VM_TLC_DRIVES (${tlc[0]})"
findmnt "$VM_SCRATCH_DIR" >/dev/null || fail "the scratch disk is not mounted at $VM_SCRATCH_DIR"

step "device-mapper: a linear device over 16 MiB of ${tlc[0]} at 1 GiB"
offset=$((1 << 30))
check dmsetup create --noudevsync vm-smoke --table "0 32768 linear ${tlc[0]} $((offset / 512))"
check dmsetup mknodes
[[ -b /dev/mapper/vm-smoke ]] || fail "no /dev/mapper/vm-smoke after dmsetup mknodes"
dmsetup table vm-smoke
dd if=/dev/urandom of=pattern bs=1M count=16 2>/dev/null
check dd if=pattern of=/dev/mapper/vm-smoke bs=1M oflag=direct
check cmp pattern /dev/mapper/vm-smoke
# The same bytes are on the drive where the table put them.
dd if="${tlc[0]}" of=on-drive bs=1M skip=1024 count=16 iflag=direct 2>/dev/null
check cmp pattern on-drive
check dmsetup remove --noudevsync vm-smoke
[[ ! -e /dev/mapper/vm-smoke ]] || dmsetup mknodes
check blkdiscard -o "$offset" -l $((16 << 20)) "${tlc[0]}"
rm -f pattern on-drive

step "signing"
# One drive at a time, found by its serial, typed by it (vdrive-tlc-0 …).
for d in /sys/block/nvme*n1; do
    serial=$(tr -d ' ' <"$d/device/serial")
    type=${serial#vdrive-}
    type=${type%%-*}
    check vdrive sign --device "$(vm_drive "$serial")" --type "$type"
done
# A sweep now finds nothing to sign: the NVMe drives are signed, the scratch
# disk is mounted; it skips them and succeeds.
out=$(vdrive sign --all-not-root --type tlc) || fail "vdrive sign --all-not-root failed: $out"
echo "$out"
grep -q "skipped $VM_SCRATCH_DEV" <<<"$out" || fail "the sweep did not skip the mounted scratch disk"
findmnt "$VM_SCRATCH_DIR" >/dev/null || fail "the scratch disk is no longer mounted"
[[ $(blkid -o value -s TYPE "$VM_SCRATCH_DEV") == ext4 ]] || fail "the scratch disk's filesystem is gone"
shown=$(vdrive sign show --json)
echo "$shown"
n_tlc=$(grep -Eo '"type": ?"tlc"' <<<"$shown" | wc -l)
n_qlc=$(grep -Eo '"type": ?"qlc"' <<<"$shown" | wc -l)
((n_tlc == ${#tlc[@]} && n_qlc == ${#qlc[@]})) ||
    fail "vdrive sign show lists $n_tlc TLC and $n_qlc QLC drives, want ${#tlc[@]} and ${#qlc[@]}"
grep -Eq '"serial": ?"vdrive-tlc-0"' <<<"$shown" || fail "vdrive sign show does not name the serial vdrive-tlc-0"
vdrive sign show

step "vdrive all-in-one on the signed drives"
# The loop backend on real NVMe drives (the volumes scenario takes dm).
vdrive_start "$VM_WORK/w" --node-id vm --pool none --device-backend loop
export VDRIVE_ENDPOINT="unix://$VM_WORK/w/csi.sock"
csi() { vdrive csi --endpoint "$VDRIVE_ENDPOINT" "$@"; }
params=(--param tlc=1 --param qlc=0 --param driveCores=1 --param minDriveGiB=1)
cap=$(csi capacity "${params[@]}") || fail "capacity: $cap"
echo "$cap"
if [[ ! $cap =~ ^available\ ([0-9]+)\ GiB ]] || ((BASH_REMATCH[1] == 0)); then
    fail "no TLC capacity: $cap"
fi

out=$(csi create-volume smoke --size 2Gi "${params[@]}") || fail "create-volume: $out"
echo "$out"
[[ $out =~ ^created\ ([^ ]+)\ \(2\ GiB\)\ on\ node\ vm$ ]] || fail "unexpected create-volume answer: $out"
vol=${BASH_REMATCH[1]}
check csi list-volumes

stage=$VM_WORK/stage
target=$VM_WORK/target
check csi stage "$vol" --staging-path "$stage"
source=$(findmnt -n -o SOURCE "$stage") || fail "nothing mounted at $stage"
echo "staged on $source ($(findmnt -n -o FSTYPE "$stage"))"
loop=${source#/dev/}
backing=$(cat "/sys/block/$loop/loop/backing_file" 2>/dev/null) || fail "$source is not a loop device"
[[ " $VM_TLC_DRIVES " == *" $backing "* ]] || fail "$source is over $backing, not a TLC drive"
echo "$source is over $backing at offset $(cat "/sys/block/$loop/loop/offset")"
check csi publish "$vol" --staging-path "$stage" --target-path "$target"
dd if=/dev/urandom of=data bs=1M count=8 2>/dev/null
check cp data "$target/data"
sync
check cmp data "$stage/data"
check csi stats "$vol" --path "$target"
check csi unpublish "$vol" --target-path "$target"
check csi unstage "$vol" --staging-path "$stage"
! findmnt "$stage" >/dev/null || fail "$stage is still mounted after unstage"
check csi delete-volume "$vol"
[[ $(csi list-volumes) == "no volumes" ]] || fail "volumes left after delete: $(csi list-volumes)"

step "stop"
vdrive_stop
tail -n 5 "$VM_WORK/w/vdrive.log"
rm -f data
cleanup_check "$VM_WORK"
pass
