use super::*;

fn request(name: &str) -> CreateVm {
    CreateVm {
        name: name.to_string(),
        image: "ubuntu22".into(),
        server_type: Some("cx21".into()),
        cpu: None,
        memory: None,
        storage: 50,
        namespace: None,
    }
}

fn invalid(result: Result<Resolved, VmError>) -> String {
    match result {
        Err(VmError::Invalid(message)) => message,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn the_seeds_request_resolves_with_its_explicit_sizes() {
    let mut seed = request("test-vm");
    seed.cpu = Some(2);
    seed.memory = Some(4);
    seed.namespace = Some("default".into());
    let resolved = resolve(&seed, &Catalog::default()).expect("the seed's request");
    assert_eq!(resolved.id(), "default.test-vm");
    assert_eq!(
        (resolved.cpu, resolved.memory, resolved.storage),
        (2, 4, 50)
    );
    assert_eq!(resolved.image.format.as_deref(), Some("qcow2"));
}

#[test]
fn a_server_type_gives_defaults_that_explicit_values_override() {
    let mut big = request("a");
    big.server_type = Some("cx41".into());
    let resolved = resolve(&big, &Catalog::default()).expect("cx41");
    assert_eq!((resolved.cpu, resolved.memory), (4, 16));
    big.memory = Some(64);
    let resolved = resolve(&big, &Catalog::default()).expect("cx41 with more memory");
    assert_eq!((resolved.cpu, resolved.memory), (4, 64));

    let mut bare = request("b");
    bare.server_type = None;
    let message = invalid(resolve(&bare, &Catalog::default()));
    assert!(
        message.contains("server_type (one of cx11, cx21"),
        "{message}"
    );
    bare.cpu = Some(1);
    bare.memory = Some(1);
    assert!(resolve(&bare, &Catalog::default()).is_ok());
    bare.cpu = Some(0);
    assert_eq!(
        invalid(resolve(&bare, &Catalog::default())),
        "cpu: must be at least 1"
    );
}

#[test]
fn unknown_catalog_entries_list_the_known_ones() {
    let mut r = request("a");
    r.image = "windows".into();
    match resolve(&r, &Catalog::default()) {
        Err(err @ VmError::UnknownImage { .. }) => {
            let message = err.to_string();
            assert!(message.contains("debian12, ubuntu22"), "{message}");
            assert!(message.contains("--vm-images"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let mut r = request("a");
    r.server_type = Some("huge".into());
    match resolve(&r, &Catalog::default()) {
        Err(err @ VmError::UnknownServerType { .. }) => {
            assert!(err.to_string().contains("cx11, cx21, cx31, cx41, cx51"))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn names_and_namespaces_are_dns_labels() {
    for bad in ["", "Test", "a_b", "-a", "a-", "a.b", &"x".repeat(64)] {
        let message = invalid(resolve(&request(bad), &Catalog::default()));
        assert!(message.starts_with("name: "), "{bad:?}: {message}");
    }
    let mut r = request("ok-1");
    r.namespace = Some("Team".into());
    assert!(invalid(resolve(&r, &Catalog::default())).starts_with("namespace: "));
    assert!(resolve(&request(&"x".repeat(63)), &Catalog::default()).is_ok());
}

#[test]
fn storage_is_a_sane_size() {
    for bad in [0, MAX_STORAGE_GB + 1, u64::MAX] {
        let mut r = request("a");
        r.storage = bad;
        assert!(invalid(resolve(&r, &Catalog::default())).starts_with("storage: "));
    }
}

#[test]
fn ids_are_namespace_dot_name() {
    assert_eq!(vm_id("default", "test-vm"), "default.test-vm");
    assert_eq!(
        parse_vm_id("team-a.web-1"),
        Ok(("team-a".into(), "web-1".into()))
    );
    for bad in ["nodot", "a.b.c", ".a", "a.", "A.b", "a/b.c"] {
        assert_eq!(
            parse_vm_id(bad),
            Err(VmError::NotFound { id: bad.into() }),
            "{bad}"
        );
    }
}

#[test]
fn a_catalog_file_replaces_images_and_optionally_server_types() {
    let catalog = Catalog::parse(
        br#"{"images": {"base": {"source": "/srv/base.qcow2", "format": "qcow2"},
                        "web": {"source": "http://127.0.0.1:9/web.raw"}}}"#,
    )
    .expect("a catalog");
    assert_eq!(catalog.image_names(), "base, web");
    assert_eq!(catalog.server_type_names(), "cx11, cx21, cx31, cx41, cx51");
    let catalog =
        Catalog::parse(br#"{"images": {}, "server_types": {"small": {"cpu": 1, "memory": 1}}}"#)
            .expect("a catalog");
    assert_eq!(catalog.image_names(), "none");
    assert_eq!(catalog.server_type_names(), "small");

    for (bad, says) in [
        (
            r#"{"images": {"a": {"source": "relative.img"}}}"#,
            "neither an absolute path",
        ),
        (
            r#"{"images": {"a": {"source": "ftp://x/a.img"}}}"#,
            "neither an absolute path",
        ),
        (
            r#"{"images": {"a": {"source": "/a", "format": "vmdk"}}}"#,
            "not raw or qcow2",
        ),
        (
            r#"{"images": {}, "server_types": {"z": {"cpu": 0, "memory": 1}}}"#,
            "at least 1",
        ),
        (r#"{"images": {}, "sizes": {}}"#, "unknown field `sizes`"),
        (
            r#"{"images": {"a": {"source": "/a", "sha": "x"}}}"#,
            "unknown field `sha`",
        ),
    ] {
        let err = Catalog::parse(bad.as_bytes()).expect_err(bad);
        assert!(err.contains(says), "{bad}: {err}");
    }
}

#[test]
fn csi_failures_map_to_vm_errors() {
    use tonic::Status;
    let cases = [
        (Status::invalid_argument("x"), "invalid_request"),
        (Status::resource_exhausted("x"), "insufficient_storage"),
        (Status::out_of_range("x"), "insufficient_storage"),
        (Status::not_found("x"), "not_found"),
        (Status::aborted("x"), "busy"),
        (Status::failed_precondition("x"), "failed_precondition"),
        (Status::unavailable("x"), "unavailable"),
        (Status::internal("x"), "internal"),
    ];
    for (status, kind) in cases {
        assert_eq!(VmError::from_csi("a.b", &status).kind(), kind, "{status:?}");
    }
}
