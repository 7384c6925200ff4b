#!/usr/bin/env bash
# A benchmark, not a test (tests/vm/run leaves bench-* out unless named):
# fio through a staged dm block volume against the same byte range of the raw
# emulated NVMe drive, in alternating pairs. Under emulation absolute figures
# mean nothing; the ratio says what the dm layer costs.
#   4k random read, queue depth 32, and 1 MiB sequential read; BENCH_PAIRS
#   pairs (default 3) of BENCH_SECONDS each (default 10).
# vm-needs: fio
# shellcheck source-path=SCRIPTDIR source=lib.sh
. /vm/guest/lib.sh
# shellcheck source-path=SCRIPTDIR source=lib-volumes.sh
. /vm/guest/lib-volumes.sh

pairs=${BENCH_PAIRS:-3}
secs=${BENCH_SECONDS:-10}
vm_sign_drives
vdrive_start "$VM_WORK/d" --node-id vm --pool none
vol=$(create_volume bench --size 4Gi --block --param tlc=1 --param qlc=0 --param driveCores=1 --param minDriveGiB=1)
read -r drive offset size _type <<<"$(extents "$vol")"
check csi stage "$vol" --staging-path "$VM_WORK/stage" --block
check csi publish "$vol" --staging-path "$VM_WORK/stage" --target-path "$VM_WORK/dev" --block
echo "volume $vol: $VM_WORK/dev over $drive at byte $offset, $size bytes"
# Fill the range, so reads are not answered from holes of the sparse file.
check fio --name=fill --filename="$VM_WORK/dev" --rw=write --bs=1M --direct=1 --size="$size" --output=/dev/null

# run NAME FILE OFFSET RW BS DEPTH: prints IOPS.
run() {
    fio --name="$1" --filename="$2" --offset="$3" --size="$size" --rw="$4" --bs="$5" \
        --iodepth="$6" --ioengine=libaio --direct=1 --time_based --runtime="$secs" \
        --output-format=terse --terse-version=3 | awk -F';' '{ print $8 }'
}
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
for workload in "randread 4k 32" "read 1M 4"; do
    read -r rw bs depth <<<"$workload"
    ratios=()
    for ((i = 1; i <= pairs; i++)); do
        vd=$(run vdrive "$VM_WORK/dev" 0 "$rw" "$bs" "$depth")
        raw=$(run raw "$drive" "$offset" "$rw" "$bs" "$depth")
        ratio=$(awk -v a="$vd" -v b="$raw" 'BEGIN { printf "%.3f", (b > 0 ? a / b : 0) }')
        echo "$rw $bs qd$depth pair $i: vdrive $vd IOPS, raw $raw IOPS, ratio $ratio"
        ratios+=("$ratio")
    done
    echo "RESULT $rw $bs qd$depth: median ratio vdrive/raw $(printf '%s\n' "${ratios[@]}" | median)"
done

check csi unpublish "$vol" --target-path "$VM_WORK/dev"
check csi unstage "$vol" --staging-path "$VM_WORK/stage"
check csi delete-volume "$vol"
vdrive_stop
cleanup_check "$VM_WORK"
pass
