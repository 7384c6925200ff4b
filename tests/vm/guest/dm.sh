#!/usr/bin/env bash
# vdrive's device-mapper module (src/node/dm.rs) on a kernel that has
# device-mapper: tests/dm.rs, whose tests the host's cargo test lists as
# ignored because its kernel has none, run here for real.
# vm-needs: test:dm
# shellcheck source-path=SCRIPTDIR source=lib.sh
. /vm/guest/lib.sh

bin=$(vm_test_bin dm)
check "$bin" --ignored --test-threads=1
cleanup_check "$VM_WORK"
pass
