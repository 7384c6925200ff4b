#!/usr/bin/env bash
# The drive-sharing spec's example layouts, each a real block volume on the
# emulated NVMe drives through the dm backend, one after another (together
# they exceed the drives): created, staged, written at every boundary between
# its virtual drives, expanded (or, for the fixed-size class, refused), read
# back, deleted, and its extents read zeros. No pool: each exceeds one server's
# share of a pool.
#   - TLC only, 8000 GiB over 4 cores: 4 virtual drives of 2000 GiB;
#   - 12000 GiB at tlc 4 : qlc 1 over 6 cores: 9600 GiB of TLC and 2400 GiB of
#     QLC, at least 6 virtual drives of each type;
#   - fixed numDrives 6 × driveCapacity 1000: 6 TLC virtual drives of 1000 GiB.
# shellcheck source-path=SCRIPTDIR source=lib.sh
. /vm/guest/lib.sh
# shellcheck source-path=SCRIPTDIR source=lib-volumes.sh
. /vm/guest/lib-volumes.sh

GIB=$((1 << 30))
vm_sign_drives
vdrive_start "$VM_WORK/d" --node-id vm --pool none
dd if=/dev/urandom of=pattern bs=1M count=24 2>/dev/null

# type_sum VOL TYPE: GiB of that type; type_count VOL TYPE: how many parts.
type_sum() { extents "$1" | awk -v t="$2" '$4 == t { s += $3 } END { print s / 1073741824 }'; }
type_count() { extents "$1" | awk -v t="$2" '$4 == t' | wc -l; }

# layout NAME SIZE-GIB EXPAND-TO-GIB|fixed CLASS-PARAMS...
layout() {
    local name=$1 gib=$2 grow=$3 vol stage target
    shift 3
    step "$name: $gib GiB with $*"
    vol=$(create_volume "$name" --size "${gib}Gi" --block "$@")
    show_extents "$vol"
    check_layout "$name" "$vol"
    stage=$VM_WORK/$name/stage target=$VM_WORK/$name/target/dev
    check csi stage "$vol" --staging-path "$stage" --block
    check csi publish "$vol" --staging-path "$stage" --target-path "$target" --block
    check_table "$vol"
    [[ $(blockdev --getsize64 "$target") == $((gib * GIB)) ]] || fail "$name is $(blockdev --getsize64 "$target") bytes, not $gib GiB"
    write_at_boundaries "$vol" "$target" pattern
    if [[ $grow == fixed ]]; then
        local out
        if out=$(csi expand-volume "$vol" --size "$((gib + 100))Gi" 2>&1); then
            fail "a fixed-size volume (numDrives × driveCapacity) was expanded: $out"
        fi
        echo "refused as it should be: $out"
        grep -q "numDrives" <<<"$out" || fail "the refusal does not say the class is fixed-size (numDrives × driveCapacity): $out"
    else
        check csi expand-volume "$vol" --size "${grow}Gi"
        check csi node-expand "$vol" --volume-path "$target" --staging-path "$stage" --size "${grow}Gi"
        [[ $(blockdev --getsize64 "$target") == $((grow * GIB)) ]] || fail "$name did not grow to $grow GiB"
        check_table "$vol"
        show_extents "$vol"
    fi
    read_at_boundaries "$vol" "$target" pattern
    check csi unpublish "$vol" --target-path "$target"
    check csi unstage "$vol" --staging-path "$stage"
    extents "$vol" >"$VM_WORK/extents.$name"
    check csi delete-volume "$vol"
    check_zeroed "$VM_WORK/extents.$name"
}

# check_layout NAME VOL: the virtual drives the spec's example gives.
check_layout() {
    local vol=$2
    case $1 in
        tlc-8000)
            [[ $(extents "$vol" | awk '{print $3 / 1073741824, $4}' | tr '\n' ' ') == "2000 tlc 2000 tlc 2000 tlc 2000 tlc " ]] ||
                fail "8000 GiB TLC over 4 cores is not 4 TLC virtual drives of 2000 GiB"
            ;;
        mixed-12000)
            (($(type_sum "$vol" tlc) == 9600 && $(type_sum "$vol" qlc) == 2400)) ||
                fail "12000 GiB at 4:1 is not 9600 GiB of TLC and 2400 GiB of QLC"
            (($(type_count "$vol" tlc) >= 6 && $(type_count "$vol" qlc) >= 6)) ||
                fail "driveCores 6 asks at least 6 virtual drives of each type"
            extents "$vol" | awk '$3 < 384 * 1073741824 { exit 1 }' || fail "a virtual drive is below the 384 GiB minimum"
            ;;
        fixed-6x1000)
            [[ $(extents "$vol" | awk '{print $3 / 1073741824, $4}' | tr '\n' ' ') == "1000 tlc 1000 tlc 1000 tlc 1000 tlc 1000 tlc 1000 tlc " ]] ||
                fail "numDrives 6 × driveCapacity 1000 is not 6 TLC virtual drives of 1000 GiB"
            ;;
    esac
}

layout tlc-8000 8000 8100 --param tlc=1 --param qlc=0 --param driveCores=4
layout mixed-12000 12000 12100 --param tlc=4 --param qlc=1 --param driveCores=6
layout fixed-6x1000 6000 fixed --param numDrives=6 --param driveCapacity=1000

[[ $(csi list-volumes) == "no volumes" ]] || fail "volumes left after delete: $(csi list-volumes)"
vdrive_stop
rm -f pattern
cleanup_check "$VM_WORK"
pass
