#!/usr/bin/env bash
# Volumes of several virtual drives on several NVMe drives, through the dm
# backend: a TLC/QLC mix spread over 3 cores (tlc 4 : qlc 1, driveCores 3) as an
# ext4 volume and as a block volume. A known pattern written through each
# survives unpublish, unstage, an all-in-one restart and restaging, byte for
# byte; an expansion that cannot grow in place adds an extent on another part of
# the drives and the filesystem grows online; after delete every extent reads
# zeros where the pattern was; nothing is left behind.
# shellcheck source-path=SCRIPTDIR source=lib.sh
. /vm/guest/lib.sh
# shellcheck source-path=SCRIPTDIR source=lib-volumes.sh
. /vm/guest/lib-volumes.sh

mix=(--param tlc=4 --param qlc=1 --param driveCores=3 --param minDriveGiB=1)

step "all-in-one on the signed NVMe drives, dm backend"
vm_sign_drives
vdrive_start "$VM_WORK/d" --node-id vm --pool none
grep -q "dm backend" "$VM_WORK/d/vdrive.log" || fail "all-in-one did not choose the dm backend: $(head -n 5 "$VM_WORK/d/vdrive.log")"

step "an ext4 volume and a block volume of the mixed class"
fsvol=$(create_volume mixed-fs --size 12Gi "${mix[@]}")
blkvol=$(create_volume mixed-block --size 12Gi --block "${mix[@]}")
for vol in "$fsvol" "$blkvol"; do
    show_extents "$vol"
    parts=$(extents "$vol" | wc -l)
    drives=$(extents "$vol" | awk '{print $1}' | sort -u | wc -l)
    tlc=$(extents "$vol" | awk '$4 == "tlc"' | wc -l)
    qlc=$(extents "$vol" | awk '$4 == "qlc"' | wc -l)
    ((tlc >= 3 && qlc >= 3)) || fail "volume $vol has $tlc TLC and $qlc QLC virtual drives; driveCores 3 asks at least 3 of each"
    # TLC first, then QLC: the order of the linear device.
    extents "$vol" | awk '{print $4}' | uniq | tr '\n' ' ' | grep -qx "tlc qlc " ||
        fail "volume $vol's parts are not TLC first then QLC"
    echo "volume $vol: $parts virtual drives on $drives physical drives"
done

stage=$VM_WORK/stage target=$VM_WORK/target
bstage=$VM_WORK/bstage btarget=$VM_WORK/btarget/dev
check csi stage "$fsvol" --staging-path "$stage"
check csi publish "$fsvol" --staging-path "$stage" --target-path "$target"
check csi stage "$blkvol" --staging-path "$bstage" --block
check csi publish "$blkvol" --staging-path "$bstage" --target-path "$btarget" --block
source=$(findmnt -n -o SOURCE "$stage") || fail "nothing mounted at $stage"
dm_name=$(dm_name_of "$source") || fail "$stage is mounted from $source, not a device-mapper device"
[[ $dm_name == "vdrive-$fsvol" ]] || fail "the staged device is $dm_name, not vdrive-$fsvol"
check_table "$fsvol"
check_table "$blkvol"
[[ $(blockdev --getsize64 "$btarget") == $((12 << 30)) ]] || fail "the block volume is $(blockdev --getsize64 "$btarget") bytes, not 12 GiB"

step "a pattern through both"
dd if=/dev/urandom of=pattern bs=1M count=24 2>/dev/null
check cp pattern "$target/pattern"
sync
# On the block device: at its start, across every boundary between parts, and
# at its end.
write_at_boundaries "$blkvol" "$btarget" pattern
sha_fs=$(sha256sum <pattern | cut -d' ' -f1)

step "unpublish, unstage, restart all-in-one, stage again: the bytes are there"
check csi unpublish "$fsvol" --target-path "$target"
check csi unstage "$fsvol" --staging-path "$stage"
check csi unpublish "$blkvol" --target-path "$btarget"
check csi unstage "$blkvol" --staging-path "$bstage"
for d in /sys/block/dm-*; do
    [[ -e $d ]] && fail "device-mapper device ${d##*/} ($(cat "$d/dm/name")) left after unstaging"
done
vdrive_stop
vdrive_start "$VM_WORK/d" --node-id vm --pool none
check csi stage "$fsvol" --staging-path "$stage"
check csi publish "$fsvol" --staging-path "$stage" --target-path "$target"
check csi stage "$blkvol" --staging-path "$bstage" --block
check csi publish "$blkvol" --staging-path "$bstage" --target-path "$btarget" --block
[[ $(sha256sum <"$target/pattern" | cut -d' ' -f1) == "$sha_fs" ]] || fail "the file on the ext4 volume changed"
read_at_boundaries "$blkvol" "$btarget" pattern

step "a staged device survives an all-in-one restart (found by name, table checked)"
vdrive_stop
vdrive_start "$VM_WORK/d" --node-id vm --pool none
check csi stats "$fsvol" --path "$target"
check csi stats "$blkvol" --path "$btarget"

step "expansion that cannot grow in place: a new extent, the filesystem grown online"
# The block volume's parts were placed right after the ext4 volume's, and a
# QLC-only volume now takes the space right after the block volume's last (QLC)
# part: growing either must add a part elsewhere.
filler=$(create_volume filler --size 4Gi --param tlc=0 --param qlc=1 --param driveCores=1 --param minDriveGiB=1)
show_extents "$filler"
before=$(extents "$fsvol" | wc -l)
fs_before=$(df -k "$target" | awk 'NR == 2 {print $2}')
check csi expand-volume "$fsvol" --size 20Gi
check csi node-expand "$fsvol" --volume-path "$target" --staging-path "$stage" --size 20Gi
show_extents "$fsvol"
after=$(extents "$fsvol" | wc -l)
((after > before)) || fail "the volume grew in place ($before parts before, $after after) although its neighbour took the space: the test set-up is wrong"
check_table "$fsvol"
[[ $(blockdev --getsize64 "$(findmnt -n -o SOURCE "$stage")") == $((20 << 30)) ]] || fail "the device did not grow to 20 GiB"
fs_after=$(df -k "$target" | awk 'NR == 2 {print $2}')
((fs_after > fs_before + 7 * 1024 * 1024)) || fail "the filesystem did not grow online: $fs_before KiB before, $fs_after KiB after"
[[ $(sha256sum <"$target/pattern" | cut -d' ' -f1) == "$sha_fs" ]] || fail "the file changed when the volume grew"
dd if=/dev/urandom of="$target/more" bs=1M count=16 2>/dev/null || fail "cannot write to the grown filesystem"
check csi expand-volume "$blkvol" --size 16Gi
check csi node-expand "$blkvol" --volume-path "$btarget" --staging-path "$bstage" --size 16Gi
[[ $(blockdev --getsize64 "$btarget") == $((16 << 30)) ]] || fail "the block volume did not grow to 16 GiB"
read_at_boundaries "$blkvol" "$btarget" pattern quiet

step "delete: every extent reads zeros"
check csi unpublish "$fsvol" --target-path "$target"
check csi unstage "$fsvol" --staging-path "$stage"
check csi unpublish "$blkvol" --target-path "$btarget"
check csi unstage "$blkvol" --staging-path "$bstage"
for vol in "$fsvol" "$blkvol" "$filler"; do
    extents "$vol" >"$VM_WORK/extents.$vol"
    check csi delete-volume "$vol"
    check_zeroed "$VM_WORK/extents.$vol"
done
[[ $(csi list-volumes) == "no volumes" ]] || fail "volumes left after delete: $(csi list-volumes)"

step "stop"
vdrive_stop
rm -f pattern
cleanup_check "$VM_WORK"
pass
