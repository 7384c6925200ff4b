//! CSI v1 bindings generated from proto/csi.proto at build time.
//!
//! Messages are prost types, `google.protobuf.*` maps to `prost_types`, and
//! every service has a `*_server` module (trait + tonic server) and a
//! `*_client` module. Server trait methods default to UNIMPLEMENTED.

tonic::include_proto!("csi.v1");

#[cfg(test)]
mod tests {
    //! Wire facts checked against the upstream CSI spec: if one of these
    //! fails, kubelet and csi-sanity would no longer understand us.

    use prost::Message;

    use super::*;

    #[test]
    fn create_volume_name_is_field_1_string() {
        let req = CreateVolumeRequest {
            name: "x".into(),
            ..Default::default()
        };
        assert_eq!(req.encode_to_vec(), [0x0a, 0x01, b'x']);
    }

    #[test]
    fn node_stage_staging_target_path_is_field_3() {
        let req = NodeStageVolumeRequest {
            staging_target_path: "/s".into(),
            ..Default::default()
        };
        // (3 << 3) | length-delimited = 0x1a
        assert_eq!(req.encode_to_vec(), [0x1a, 0x02, b'/', b's']);
    }

    #[test]
    fn node_publish_paths_and_readonly() {
        let req = NodePublishVolumeRequest {
            volume_id: "v".into(),
            staging_target_path: "s".into(),
            target_path: "t".into(),
            readonly: true,
            ..Default::default()
        };
        assert_eq!(
            req.encode_to_vec(),
            [0x0a, 1, b'v', 0x1a, 1, b's', 0x22, 1, b't', 0x30, 1]
        );
    }

    #[test]
    fn volume_capability_oneof_and_access_mode() {
        use volume_capability::access_mode::Mode;
        use volume_capability::{AccessMode, AccessType, BlockVolume, MountVolume};

        let block = VolumeCapability {
            access_type: Some(AccessType::Block(BlockVolume {})),
            access_mode: None,
        };
        assert_eq!(block.encode_to_vec(), [0x0a, 0x00]);

        let mount = VolumeCapability {
            access_type: Some(AccessType::Mount(MountVolume {
                fs_type: "xfs".into(),
                ..Default::default()
            })),
            access_mode: Some(AccessMode {
                mode: Mode::SingleNodeWriter as i32,
            }),
        };
        assert_eq!(
            mount.encode_to_vec(),
            [
                0x12, 0x05, 0x0a, 0x03, b'x', b'f', b's', 0x1a, 0x02, 0x08, 0x01
            ]
        );

        // What a Go client sends for a block + MULTI_NODE_MULTI_WRITER cap.
        let decoded = VolumeCapability::decode(&[0x0a, 0x00, 0x1a, 0x02, 0x08, 0x05][..])
            .expect("valid VolumeCapability bytes");
        assert_eq!(decoded.access_type, Some(AccessType::Block(BlockVolume {})));
        assert_eq!(
            decoded.access_mode.map(|m| m.mode()),
            Some(Mode::MultiNodeMultiWriter)
        );
        assert_eq!(Mode::SingleNodeSingleWriter as i32, 6);
        assert_eq!(Mode::SingleNodeMultiWriter as i32, 7);
    }

    #[test]
    fn plugin_capability_service_types() {
        use plugin_capability::service::Type;

        assert_eq!(Type::Unknown as i32, 0);
        assert_eq!(Type::ControllerService as i32, 1);
        assert_eq!(Type::VolumeAccessibilityConstraints as i32, 2);
        assert_eq!(Type::GroupControllerService as i32, 3);
        assert_eq!(Type::ControllerService.as_str_name(), "CONTROLLER_SERVICE");

        let cap = PluginCapability {
            r#type: Some(plugin_capability::Type::Service(
                plugin_capability::Service {
                    r#type: Type::VolumeAccessibilityConstraints as i32,
                },
            )),
        };
        assert_eq!(cap.encode_to_vec(), [0x0a, 0x02, 0x08, 0x02]);
    }

    #[test]
    fn controller_capability_rpc_types() {
        use controller_service_capability::rpc::Type;

        let expected = [
            (Type::CreateDeleteVolume, 1, "CREATE_DELETE_VOLUME"),
            (Type::PublishUnpublishVolume, 2, "PUBLISH_UNPUBLISH_VOLUME"),
            (Type::ListVolumes, 3, "LIST_VOLUMES"),
            (Type::GetCapacity, 4, "GET_CAPACITY"),
            (Type::CreateDeleteSnapshot, 5, "CREATE_DELETE_SNAPSHOT"),
            (Type::ListSnapshots, 6, "LIST_SNAPSHOTS"),
            (Type::CloneVolume, 7, "CLONE_VOLUME"),
            (Type::PublishReadonly, 8, "PUBLISH_READONLY"),
            (Type::ExpandVolume, 9, "EXPAND_VOLUME"),
            (Type::GetVolume, 12, "GET_VOLUME"),
            (Type::SingleNodeMultiWriter, 13, "SINGLE_NODE_MULTI_WRITER"),
            (Type::ModifyVolume, 14, "MODIFY_VOLUME"),
            (Type::GetSnapshot, 15, "GET_SNAPSHOT"),
        ];
        for (ty, number, name) in expected {
            assert_eq!(ty as i32, number, "{name}");
            assert_eq!(ty.as_str_name(), name);
        }

        let cap = ControllerServiceCapability {
            r#type: Some(controller_service_capability::Type::Rpc(
                controller_service_capability::Rpc {
                    r#type: Type::ExpandVolume as i32,
                },
            )),
        };
        assert_eq!(cap.encode_to_vec(), [0x0a, 0x02, 0x08, 0x09]);
    }

    #[test]
    fn node_capability_rpc_types() {
        use node_service_capability::rpc::Type;

        assert_eq!(Type::StageUnstageVolume as i32, 1);
        assert_eq!(Type::GetVolumeStats as i32, 2);
        assert_eq!(Type::ExpandVolume as i32, 3);
        assert_eq!(Type::SingleNodeMultiWriter as i32, 5);
        assert_eq!(Type::VolumeMountGroup as i32, 6);
        assert_eq!(Type::GetVolumeStats.as_str_name(), "GET_VOLUME_STATS");
    }

    #[test]
    fn sizes_are_signed_varints() {
        let range = CapacityRange {
            required_bytes: 1,
            limit_bytes: 300,
        };
        assert_eq!(range.encode_to_vec(), [0x08, 0x01, 0x10, 0xac, 0x02]);

        let info = NodeGetInfoResponse {
            node_id: "n".into(),
            max_volumes_per_node: 3,
            accessible_topology: None,
        };
        assert_eq!(info.encode_to_vec(), [0x0a, 1, b'n', 0x10, 3]);
    }

    #[test]
    fn maps_are_string_string_entries() {
        let req = DeleteVolumeRequest {
            volume_id: String::new(),
            secrets: [("k".to_string(), "v".to_string())].into(),
        };
        // field 2 holding an entry {key = 1: "k", value = 2: "v"}
        assert_eq!(
            req.encode_to_vec(),
            [0x12, 0x06, 0x0a, 0x01, b'k', 0x12, 0x01, b'v']
        );
    }

    #[test]
    fn snapshot_creation_time_is_a_timestamp() {
        let snap = Snapshot {
            creation_time: Some(prost_types::Timestamp {
                seconds: 1,
                nanos: 0,
            }),
            ready_to_use: true,
            ..Default::default()
        };
        assert_eq!(snap.encode_to_vec(), [0x22, 0x02, 0x08, 0x01, 0x28, 0x01]);
    }

    #[test]
    fn probe_ready_is_a_bool_wrapper() {
        let resp = ProbeResponse { ready: Some(true) };
        assert_eq!(resp.encode_to_vec(), [0x0a, 0x02, 0x08, 0x01]);
    }

    #[test]
    fn service_names_match_the_spec() {
        assert_eq!(identity_server::SERVICE_NAME, "csi.v1.Identity");
        assert_eq!(controller_server::SERVICE_NAME, "csi.v1.Controller");
        assert_eq!(node_server::SERVICE_NAME, "csi.v1.Node");
    }
}
