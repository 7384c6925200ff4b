//! A seeded chaos run against `vdrive all-in-one` on simulated drives: random
//! creates, stages, publishes, unpublishes, unstages, expansions and deletes,
//! some of them given up by their caller after a few milliseconds (the driver
//! goes on with the work) and some cut short by a SIGKILL of the driver, which is
//! then started again on the same state dir. The test keeps a model of every
//! volume; a call whose outcome it cannot know leaves the volume "pending", and
//! the next call on that volume first retries the pending one until it answers
//! (only OK, or ABORTED while the first one still runs, is acceptable). After
//! every restart and at the end the test converges and checks: ListVolumes is
//! the model, no extent is booked twice; every deleted volume's extents read
//! zeros; and after everything is deleted and the driver stopped, the drives'
//! data areas read zeros and no loop device or mount of the test is left.
//!
//! Now and then one or two simulated drives go away: their volumes are taken
//! down and their loop devices detached, while the driver runs (for a few
//! steps) or while it is down (then it is started again on them). Meanwhile a
//! stage, delete or expansion of a volume on such a drive must be refused with
//! FAILED_PRECONDITION naming the drive, and a refused delete keeps its claims;
//! a CreateVolume may be refused for lack of room on the drives left.
//! The drives come back at whatever loop devices are free, two of them at each
//! other's, and the driver must find each where it is now.
//!
//! The model, the calls and the checks live in `support::chaos`, shared with
//! the run against a cluster (`tests/e2e_chaos.rs`).
//!
//! `VDRIVE_CHAOS_SEED` (default [`DEFAULT_SEED`]) replays a run;
//! `VDRIVE_CHAOS_OPS` (default [`DEFAULT_OPS`]) sets its length:
//! `VDRIVE_CHAOS_OPS=2000 cargo test --test chaos -- --nocapture`.
//!
//! Needs root and /dev/loop-control; without them it is skipped (with a message).

use std::path::PathBuf;
use std::time::Instant;

use tonic::transport::Channel;

mod support;

use support::chaos::{Bed, Chaos, Rng, assert_nothing_left, env_or};
use support::driver::Driver;
use vdrive::csi::proto::controller_client::ControllerClient;
use vdrive::csi::proto::node_client::NodeClient;

const DEFAULT_SEED: u64 = 20_240_917;
const DEFAULT_OPS: usize = 300;
/// Three 32 GiB drives: room for every volume the run keeps at once.
const DRIVES: &str = "tlc:32x2,qlc:32x1";

impl Bed for Driver {
    fn controller(&self) -> ControllerClient<Channel> {
        Driver::controller(self)
    }

    fn node(&self) -> NodeClient<Channel> {
        Driver::node(self)
    }

    fn staging_path(&self, volume_id: &str) -> PathBuf {
        Driver::staging_path(self, volume_id)
    }

    fn target_path(&self, volume_id: &str) -> PathBuf {
        Driver::target_path(self, volume_id)
    }

    fn drives_dir(&self) -> PathBuf {
        self.state_dir().join("simulated-drives")
    }

    fn kill(&mut self, _rng: &mut Rng) -> &'static str {
        Driver::kill(self);
        "driver killed"
    }

    async fn revive(&mut self) {
        self.spawn().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn chaos_keeps_the_ledger_the_drives_and_the_node_consistent() {
    let seed: u64 = env_or("VDRIVE_CHAOS_SEED", DEFAULT_SEED);
    let ops: usize = env_or("VDRIVE_CHAOS_OPS", DEFAULT_OPS);
    eprintln!(
        "chaos: seed {seed}, {ops} operations (replay: VDRIVE_CHAOS_SEED={seed} VDRIVE_CHAOS_OPS={ops} cargo test --test chaos)"
    );
    // A rescan every second: a drive detached while the driver runs is marked
    // missing, and found again once it is back, within the run.
    let Some(driver) = Driver::start_with(
        "chaos",
        DRIVES,
        &["--unsafe-loop-block-volumes", "--rescan-interval", "1"],
    )
    .await
    else {
        return;
    };
    let started = Instant::now();
    let mut chaos = Chaos::new(driver, seed, true);
    chaos.run(ops).await;

    // (4) Stopped, the driver leaves no device or mount behind.
    let status = chaos.bed.stop().expect("the driver was running");
    assert!(
        status.success(),
        "{} the driver exited with {status}",
        chaos.at()
    );
    assert_nothing_left(&chaos.bed.dir, &chaos.at());
    eprintln!(
        "chaos: seed {seed}, {ops} operations in {:.1?}: {:?}",
        started.elapsed(),
        chaos.stats
    );
}
