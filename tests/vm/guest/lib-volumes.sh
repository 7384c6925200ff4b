# shellcheck shell=bash
# Helpers for scenarios that take volumes through `vdrive csi` against the
# all-in-one that lib.sh's vdrive_start started in $VM_WORK/d (or at
# $VDRIVE_ENDPOINT), and check what is on the drives underneath.
#   csi ARGS...                  vdrive csi against that endpoint
#   create_volume NAME ARGS...   creates, prints the volume id
#   extents VOL                  one line per virtual drive, in device order:
#                                "DRIVE-DEVICE OFFSET-BYTES SIZE-BYTES TYPE"
#   show_extents VOL             the same, for the log
#   dm_name_of DEVICE            the dm name of a device-mapper device
#   check_table VOL              the dm table of vdrive-VOL is exactly its extents
#   write_at_boundaries VOL DEV PATTERN   8 MiB slices of PATTERN at the start,
#                                across every boundary between parts, at the end
#   read_at_boundaries VOL DEV PATTERN    the same slices read back and compared
#   check_zeroed FILE            the extents listed in FILE (as `extents` prints
#                                them) read zeros at their start, middle and end

VDRIVE_ENDPOINT=${VDRIVE_ENDPOINT:-unix://$VM_WORK/d/csi.sock}
HEADER_BYTES=$((1 << 20))
SLICE=$((8 << 20))

csi() { vdrive csi --endpoint "$VDRIVE_ENDPOINT" "$@"; }

create_volume() {
    local out
    out=$(csi create-volume "$@" 2>&1) || fail "create-volume $*: $out"
    [[ $out =~ ^created\ ([^ ]+)\  ]] || fail "unexpected create-volume answer: $out"
    echo "${BASH_REMATCH[1]}"
}

# The device of the signed drive with uuid $1, from `vdrive sign show`'s
# listing in $2 (read once per call of `extents`: each vdrive run is slow under
# emulation).
_drive_path() {
    local path
    path=$(grep -F "$1" <<<"$2" | awk '{print $1}' | head -n 1)
    [[ -n $path ]] || fail "no signed drive $1 on this machine"
    echo "$path"
}

extents() {
    local json drives drive off size type
    json=$(csi list-volumes --json) || fail "list-volumes --json failed: $json"
    drives=$(vdrive sign show) || fail "vdrive sign show failed: $drives"
    # The pretty JSON lists each extent's keys in order: virtual, drive, type,
    # offsetGiB, sizeGiB.
    awk -v id="$1" '
        /"id":/        { v = $2; gsub(/[",]/, "", v); cur = v }
        cur != id      { next }
        /"drive":/     { drive = $2; gsub(/[",]/, "", drive) }
        /"type":/      { type = $2; gsub(/[",]/, "", type) }
        /"offsetGiB":/ { off = $2; gsub(/,/, "", off) }
        /"sizeGiB":/   { size = $2; gsub(/,/, "", size); print drive, off, size, type }
    ' <<<"$json" | while read -r drive off size type; do
        echo "$(_drive_path "$drive" "$drives") $((HEADER_BYTES + (off << 30))) $((size << 30)) $type"
    done
}

show_extents() {
    echo "volume $1:"
    extents "$1" | awk '{ printf "  %s at %d GiB + 1 MiB, %d GiB, %s\n", $1, ($2 - 1048576) / 1073741824, $3 / 1073741824, $4 }'
}

# "MAJ:MIN" of a block device.
_dev_number() {
    local mm
    mm=$(stat -L -c '%t:%T' "$1") || fail "cannot stat $1"
    echo "$((16#${mm%%:*})):$((16#${mm##*:}))"
}

dm_name_of() {
    local mm
    mm=$(_dev_number "$1") || return 1
    cat "/sys/dev/block/$mm/dm/name" 2>/dev/null
}

check_table() {
    local vol=$1 want got start=0 drive off size _type
    want=$(extents "$vol" | while read -r drive off size _type; do
        echo "$start $((size / 512)) linear $(_dev_number "$drive") $((off / 512))"
        start=$((start + size / 512))
    done)
    got=$(dmsetup table "vdrive-$vol") || fail "no device-mapper device vdrive-$vol"
    if [[ $got != "$want" ]]; then
        echo "dm table of vdrive-$vol:" >&2
        echo "$got" >&2
        echo "its extents in the ledger, as a table:" >&2
        echo "$want" >&2
        fail "the device's table is not the volume's extents"
    fi
    echo "vdrive-$vol: table matches its $(wc -l <<<"$want") extents"
}

# Byte offsets on the volume where slices go: start, every boundary - 4 MiB, end.
_slice_offsets() {
    # (No process substitution: the guest has no /dev/fd.)
    extents "$1" | awk -v slice="$SLICE" '
        { size[NR] = $3; total += $3 }
        END {
            print 0
            for (i = 1; i < NR; i++) { at += size[i]; printf "%.0f\n", at - slice / 2 }
            printf "%.0f\n", total - slice
        }'
    return 0
}

write_at_boundaries() {
    local vol=$1 dev=$2 pattern=$3 at i=0
    _slice_offsets "$vol" >"$VM_WORK/offsets.$vol"
    while read -r at; do
        dd if="$pattern" of="$dev" bs=1M skip=$(((i % 3) * 8)) seek=$((at >> 20)) count=8 \
            conv=notrunc oflag=direct 2>/dev/null || fail "cannot write to $dev at $at"
        i=$((i + 1))
    done <"$VM_WORK/offsets.$vol"
    echo "wrote $i slices to $dev, across each boundary between its parts"
}

read_at_boundaries() {
    local vol=$1 dev=$2 pattern=$3 at i=0
    while read -r at; do
        dd if="$dev" of="$VM_WORK/slice" bs=1M skip=$((at >> 20)) count=8 iflag=direct 2>/dev/null ||
            fail "cannot read $dev at $at"
        dd if="$pattern" of="$VM_WORK/want" bs=1M skip=$(((i % 3) * 8)) count=8 2>/dev/null
        cmp -s "$VM_WORK/slice" "$VM_WORK/want" || fail "the bytes at $at of $dev are not what was written there"
        i=$((i + 1))
    done <"$VM_WORK/offsets.$vol"
    rm -f "$VM_WORK/slice" "$VM_WORK/want"
    [[ ${4:-} == quiet ]] || echo "read $i slices back from $dev: all as written"
}

check_zeroed() {
    local drive off size _type at n=0
    while read -r drive off size _type; do
        for at in "$off" $((off + (size / 2 >> 20 << 20))) $((off + size - SLICE)); do
            dd if="$drive" of="$VM_WORK/slice" bs=1M skip=$((at >> 20)) count=8 iflag=direct 2>/dev/null ||
                fail "cannot read $drive at $at"
            cmp -s -n "$SLICE" "$VM_WORK/slice" /dev/zero || fail "$drive does not read zeros at byte $at after delete"
            n=$((n + 1))
        done
    done <"$1"
    rm -f "$VM_WORK/slice"
    echo "$n samples of $(wc -l <"$1") deleted extents read zeros"
}
