#!/usr/bin/env bash
# The CSI conformance suite (csi-sanity) against `vdrive all-in-one` on the
# signed NVMe drives, once with mount volumes and once with block volumes, each
# on freshly signed drives with a fresh state dir, as csi-sanity/run does on
# simulated drives.
#
# Test volumes are of a class whose every volume has several virtual drives on
# several drives, through the dm backend: tlc 4 : qlc 1 over 3 cores (at least 3
# TLC and 3 QLC parts), 20 GiB (csi-sanity's default 10 GiB leaves QLC 2 GiB, too
# little for 3 parts of 1 GiB) and 40 GiB when expanded; no pool (this node is in
# none). The host's SANITY_PARAMS (a YAML file) replaces the parameters,
# SANITY_MODES (default "mount block") picks the access types and SANITY_ARGS
# adds csi-sanity arguments (e.g. --ginkgo.focus=...).
# vm-needs: csi-sanity
# shellcheck source-path=SCRIPTDIR source=lib.sh
. /vm/guest/lib.sh

[[ -n ${VM_CSI_SANITY:-} ]] ||
    fail "csi-sanity is not in the guest: tests/vm/run builds it with Go (install Go 1.26, see scripts/install-deps)"

params=${SANITY_PARAMS:-}
if [[ -z $params ]]; then
    params=$VM_WORK/params.yaml
    cat >"$params" <<'EOF'
tlc: "4"
qlc: "1"
driveCores: "3"
minDriveGiB: "1"
EOF
fi
echo "test volume parameters ($params):"
cat "$params"

read -r -a modes <<<"${SANITY_MODES:-mount block}"
read -r -a extra <<<"--csi.testvolumesize=$((20 << 30)) --csi.testvolumeexpandsize=$((40 << 30)) ${SANITY_ARGS:-}"
failed=()
for i in "${!modes[@]}"; do
    mode=${modes[i]}
    step "csi-sanity, access type $mode"
    # Each access type on freshly signed drives; the first finds them blank.
    ((i == 0)) || vm_blank_drives
    vm_sign_drives
    dir=$VM_WORK/$mode
    vdrive_start "$dir" --node-id "vm-$mode" --pool none
    start=$SECONDS
    status=0
    "$VM_CSI_SANITY" --csi.endpoint="unix://$dir/csi.sock" \
        --csi.stagingdir="$dir/staging" --csi.mountdir="$dir/mount" \
        --csi.testvolumeparameters="$params" \
        --csi.testvolumeaccesstype="$mode" \
        --ginkgo.no-color "${extra[@]}" >"$dir/sanity.log" 2>&1 || status=$?
    echo "csi-sanity ($mode) took $((SECONDS - start)) s"
    grep -E '^(Ran [0-9]+ of [0-9]+ Specs|SUCCESS!|FAIL!)' "$dir/sanity.log" || true
    vdrive_stop
    if ((status != 0)); then
        failed+=("$mode")
        echo "== csi-sanity ($mode) failed; its failures and the driver's log follow"
        grep -E '^\s*\[FAIL\]|^  \[FAILED\]|Expected|to equal|to be' "$dir/sanity.log" | head -60 || true
        tail -n 60 "$dir/vdrive.log"
    fi
    cleanup_check "$VM_WORK"
done
((${#failed[@]} == 0)) || fail "csi-sanity failed with access type ${failed[*]}"
pass
