#!/usr/bin/env bash
# A VM's disk through the pool API on a production kernel: all-in-one in the vm
# pool on the signed NVMe drives (dm backend) takes a VM request over HTTP,
# writes its raw image into a device-mapper disk, and reports it Ready; the disk
# holds the image byte for byte, grows online while staged, and after delete
# its extents read zeros; nothing is left behind.
# shellcheck source-path=SCRIPTDIR source=lib.sh
. /vm/guest/lib.sh
# shellcheck source-path=SCRIPTDIR source=lib-volumes.sh
. /vm/guest/lib-volumes.sh

# One HTTP/1.1 request to the API over bash's /dev/tcp (busybox wget has no
# DELETE): http METHOD PATH [JSON] sets STATUS and BODY.
http() {
    local body=${3:-} reply
    exec 3<>/dev/tcp/127.0.0.1/8080 || fail "cannot connect to the pool API"
    printf '%s /api/v1%s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s' \
        "$1" "$2" "${#body}" "$body" >&3
    reply=$(cat <&3)
    exec 3<&-
    STATUS=$(head -n 1 <<<"$reply" | awk '{print $2}')
    BODY=${reply#*$'\r\n\r\n'}
    echo "$1 $2 -> $STATUS"
}
# The value of "KEY" in BODY, a string or a number (its last occurrence).
field() { sed -n "s/.*\"$1\":\"\{0,1\}\([^\",}]*\).*/\1/p" <<<"$BODY" | head -n 1; }

step "all-in-one in the vm pool on the signed NVMe drives, its API on loopback"
vm_sign_drives
# A raw image: a boot sector, then data well past the first MiB.
dd if=/dev/urandom of="$VM_WORK/image.raw" bs=1M count=12 2>/dev/null
printf '{"images": {"base": {"source": "%s", "format": "raw"}}}\n' "$VM_WORK/image.raw" >"$VM_WORK/catalog.json"
vdrive_start "$VM_WORK/d" --node-id vm --pool vm --api-address 127.0.0.1:8080 \
    --vm-images "$VM_WORK/catalog.json"
grep -q "dm backend" "$VM_WORK/d/vdrive.log" || fail "all-in-one did not choose the dm backend"

step "POST /api/v1/vms: Provisioning, then Ready"
http POST /vms '{"name": "test-vm", "image": "base", "server_type": "cx21", "storage": 2}'
[[ $STATUS == 201 && $(field status) == Provisioning ]] || fail "a new VM is not 201 Provisioning: $BODY"
for ((i = 0; i < 600; i++)); do
    http GET /vms/default.test-vm >/dev/null
    [[ $STATUS == 200 ]] || fail "GET /vms/default.test-vm: $STATUS $BODY"
    [[ $(field status) == Provisioning ]] || break
    sleep 0.2
done
[[ $(field status) == Ready ]] || fail "the VM is not Ready: $BODY"
vol=$(field volume_id)
[[ -n $vol ]] || fail "the Ready VM names no disk: $BODY"
for d in /sys/block/dm-*; do
    [[ -e $d ]] && fail "provisioning left device-mapper device ${d##*/} staged"
done

step "the disk is a dm device holding the image byte for byte"
stage=$VM_WORK/stage target=$VM_WORK/target/dev
check csi stage "$vol" --staging-path "$stage" --block
check csi publish "$vol" --staging-path "$stage" --target-path "$target" --block
check_table "$vol"
cmp -n $((12 << 20)) "$target" "$VM_WORK/image.raw" || fail "the disk does not hold the image"
cmp -n $((1 << 20)) "$target" /dev/zero $((12 << 20)) 0 || fail "the disk holds more than the image"

step "resize while staged: the dm device grows online"
http POST /vms/default.test-vm/resize '{"new_size_gb": 4}'
[[ $STATUS == 200 && $(field storage) == 4 ]] || fail "the VM did not grow: $STATUS $BODY"
[[ $(blockdev --getsize64 "$target") == $((4 << 30)) ]] ||
    fail "the staged disk is $(blockdev --getsize64 "$target") bytes, not 4 GiB"
check_table "$vol"
cmp -n $((12 << 20)) "$target" "$VM_WORK/image.raw" || fail "the grown disk lost its image"

step "delete: the disk is erased and freed"
check csi unpublish "$vol" --target-path "$target"
check csi unstage "$vol" --staging-path "$stage"
extents "$vol" >"$VM_WORK/extents"
http DELETE /vms/default.test-vm
[[ $STATUS == 200 && $(field disk) == deleted ]] || fail "DELETE: $STATUS $BODY"
http GET /vms/default.test-vm
[[ $STATUS == 404 ]] || fail "the deleted VM is still there: $STATUS $BODY"
csi list-volumes | grep -q "$vol" && fail "the deleted VM's disk is still a volume"
check_zeroed "$VM_WORK/extents"
vdrive_stop
cleanup_check "$VM_WORK"
pass
