//! A simulated node's registry against another node's drive bound at the loop
//! device its own drive had. The test binds a drive at one chosen loop device
//! number, which any other test attaching a loop device at the same moment
//! could take first: it runs alone in a test binary of its own.

mod support;

use std::fs;
use std::path::Path;

use support::devices::{root, simulate};
use vdrive::node::{DriveRegistry, loopdev};

/// Binds `image` at exactly `device`; false if that device is taken.
fn bind_at(device: &Path, image: &Path) -> bool {
    std::process::Command::new("losetup")
        .arg(device)
        .arg(image)
        .status()
        .unwrap()
        .success()
}

#[test]
fn a_simulated_node_never_takes_another_drive_bound_where_its_own_was() {
    if !root() {
        return;
    }
    let (ours_sim, ours) = simulate("tlc:1x1");
    let (theirs_sim, theirs) = simulate("tlc:1x1");
    let our_image = fs::canonicalize(ours_sim.path().join("sim-tlc-0.img")).unwrap();
    let their_image = fs::canonicalize(theirs_sim.path().join("sim-tlc-0.img")).unwrap();
    let (our_uuid, their_uuid) = (ours[0].signature.uuid, theirs[0].signature.uuid);
    let registry = DriveRegistry::only(ours.clone());
    // Our drive goes away, and another simulated node's drive is bound at the
    // loop device ours had (anyone on the machine may take a free one).
    let device = ours[0].path.clone();
    loopdev::detach(&device).unwrap();
    loopdev::detach(&theirs[0].path).unwrap();
    assert!(
        bind_at(&device, &their_image),
        "{} was taken before the test could bind the other drive there",
        device.display()
    );
    let found: Vec<_> = registry.rescan().iter().map(|d| d.signature.uuid).collect();
    assert!(
        !found.contains(&their_uuid),
        "another node's drive at {} was taken for this node's: {found:?}",
        device.display()
    );
    assert!(registry.find(&their_uuid).is_none());
    assert!(registry.find(&our_uuid).is_none(), "ours is detached");
    // Ours comes back at another loop device: found there.
    let back = loopdev::attach(&our_image, 0, 0).unwrap();
    assert_ne!(back, device);
    let found = registry.find(&our_uuid).expect("our drive, back");
    assert_eq!(fs::canonicalize(&found.path).unwrap(), back);
}
