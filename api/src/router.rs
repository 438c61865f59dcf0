//! Routing: a method, a path and a body become a typed [`VmmAction`], or the fault message of a
//! 400 Bad Request.
//!
//! The routes and their bodies follow Firecracker's wire format. The path may carry a trailing
//! slash and a query string; both are ignored. Bodies are parsed strictly (unknown fields are
//! refused) and checked with the `validate` method of their model, so the VMM thread only ever
//! sees well-formed values. `PATCH /machine-config` is the exception: whether an update is valid
//! depends on the current configuration, which only the VMM knows (see
//! [`MachineConfig::apply`](crate::models::MachineConfig::apply)).

use serde::de::DeserializeOwned;

use crate::models::{
    ActionInfo, BlockDeviceConfig, BlockDeviceUpdate, BootSourceConfig, LoggerConfig,
    MachineConfig, MachineConfigUpdate, MetricsConfig, NetworkInterfaceConfig,
    NetworkInterfaceUpdate, SnapshotCreateParams, SnapshotLoadParams, VmStateUpdate, VmmAction,
    VsockDeviceConfig,
};

/// Every route served, as (method, path).
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/"),
    ("GET", "/version"),
    ("GET", "/machine-config"),
    ("PUT", "/machine-config"),
    ("PATCH", "/machine-config"),
    ("PUT", "/boot-source"),
    ("PUT", "/actions"),
    ("GET", "/vm/config"),
    ("PUT", "/logger"),
    ("PUT", "/metrics"),
    ("PATCH", "/vm"),
    ("PUT", "/drives/{drive_id}"),
    ("PATCH", "/drives/{drive_id}"),
    ("PUT", "/network-interfaces/{iface_id}"),
    ("PATCH", "/network-interfaces/{iface_id}"),
    ("PUT", "/snapshot/create"),
    ("PUT", "/snapshot/load"),
    ("PUT", "/vsock"),
];

/// Turns one HTTP request into a [`VmmAction`].
///
/// On error, the `String` is the `fault_message` of a 400 response. The messages are:
/// - `Invalid request method and/or path: <METHOD> <path>` for an unknown route;
/// - `Empty PUT request.` / `Empty PATCH request.` when a body is required but absent;
/// - `GET request cannot have a body.`;
/// - `Invalid <body> body: <serde explanation>` for malformed JSON, wrong types, unknown or
///   missing fields, where `<body>` is `machine-config`, `boot-source`, `actions`, `logger` or
///   `metrics`;
/// - `Invalid <body>: <field> ...` when the values do not pass validation.
pub fn parse_request(method: &str, path: &str, body: &[u8]) -> Result<VmmAction, String> {
    // The query string carries nothing for us; a fragment is never sent by clients, but dropping
    // it costs nothing.
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let route = match path.strip_suffix('/') {
        Some(stripped) if !stripped.is_empty() => stripped,
        _ => path,
    };
    let has_body = !body.iter().all(u8::is_ascii_whitespace);

    if let Some(id) = route.strip_prefix("/drives/") {
        return drive_request(method, path, id, body);
    }
    if let Some(id) = route.strip_prefix("/network-interfaces/") {
        return net_request(method, path, id, body);
    }

    let action = match (method, route) {
        ("GET", "/") => VmmAction::GetInstanceInfo,
        ("GET", "/version") => VmmAction::GetVersion,
        ("GET", "/machine-config") => VmmAction::GetMachineConfig,
        ("GET", "/vm/config") => VmmAction::GetVmConfig,
        ("PUT", "/machine-config") => {
            let config: MachineConfig = parse_body(method, "machine-config", body)?;
            config.validate()?;
            VmmAction::PutMachineConfig(config)
        }
        ("PATCH", "/machine-config") => {
            let update: MachineConfigUpdate = parse_body(method, "machine-config", body)?;
            VmmAction::PatchMachineConfig(update)
        }
        ("PUT", "/boot-source") => {
            let config: BootSourceConfig = parse_body(method, "boot-source", body)?;
            config.validate()?;
            VmmAction::PutBootSource(config)
        }
        ("PUT", "/actions") => {
            let info: ActionInfo = parse_body(method, "actions", body)?;
            VmmAction::Action(info.action_type)
        }
        ("PUT", "/logger") => {
            let config: LoggerConfig = parse_body(method, "logger", body)?;
            config.validate()?;
            VmmAction::PutLogger(config)
        }
        ("PUT", "/metrics") => {
            let config: MetricsConfig = parse_body(method, "metrics", body)?;
            config.validate()?;
            VmmAction::PutMetrics(config)
        }
        ("PUT", "/snapshot/create") => {
            let params: SnapshotCreateParams = parse_body(method, "snapshot/create", body)?;
            params.validate()?;
            VmmAction::CreateSnapshot(params)
        }
        ("PUT", "/snapshot/load") => {
            let params: SnapshotLoadParams = parse_body(method, "snapshot/load", body)?;
            params.validate()?;
            VmmAction::LoadSnapshot(params)
        }
        ("PUT", "/vsock") => {
            let config: VsockDeviceConfig = parse_body(method, "vsock", body)?;
            config.validate()?;
            VmmAction::PutVsock(config)
        }
        ("PATCH", "/vm") => {
            let update: VmStateUpdate = parse_body(method, "vm", body)?;
            VmmAction::PatchVmState(update.state)
        }
        _ => {
            return Err(format!(
                "Invalid request method and/or path: {method} {path}"
            ))
        }
    };

    if method == "GET" && has_body {
        return Err("GET request cannot have a body.".to_string());
    }
    Ok(action)
}

fn net_request(method: &str, path: &str, id: &str, body: &[u8]) -> Result<VmmAction, String> {
    if id.is_empty() || id.contains('/') {
        return Err(format!(
            "Invalid request method and/or path: {method} {path}"
        ));
    }
    let check_id = |body_id: &str| {
        if body_id == id {
            Ok(())
        } else {
            Err(format!(
                "Invalid network interface: the path names interface '{id}' but the body names '{body_id}'"
            ))
        }
    };
    match method {
        "PUT" => {
            let cfg: NetworkInterfaceConfig = parse_body(method, "network interface", body)?;
            check_id(&cfg.iface_id)?;
            cfg.validate()?;
            Ok(VmmAction::PutNetworkInterface(cfg))
        }
        "PATCH" => {
            let upd: NetworkInterfaceUpdate = parse_body(method, "network interface", body)?;
            check_id(&upd.iface_id)?;
            upd.validate()?;
            Ok(VmmAction::PatchNetworkInterface(upd))
        }
        _ => Err(format!(
            "Invalid request method and/or path: {method} {path}"
        )),
    }
}

fn drive_request(method: &str, path: &str, id: &str, body: &[u8]) -> Result<VmmAction, String> {
    if id.is_empty() || id.contains('/') {
        return Err(format!(
            "Invalid request method and/or path: {method} {path}"
        ));
    }
    let check_id = |body_id: &str| {
        if body_id == id {
            Ok(())
        } else {
            Err(format!(
                "Invalid drive: the path names drive '{id}' but the body names '{body_id}'"
            ))
        }
    };
    match method {
        "PUT" => {
            let cfg: BlockDeviceConfig = parse_body(method, "drive", body)?;
            check_id(&cfg.drive_id)?;
            cfg.validate()?;
            Ok(VmmAction::PutDrive(cfg))
        }
        "PATCH" => {
            let upd: BlockDeviceUpdate = parse_body(method, "drive", body)?;
            check_id(&upd.drive_id)?;
            if upd.path_on_host.as_deref() == Some("") {
                return Err("Invalid drive: path_on_host must not be empty".into());
            }
            if let Some(r) = &upd.rate_limiter {
                r.validate("drive")?;
            }
            Ok(VmmAction::PatchDrive(upd))
        }
        _ => Err(format!(
            "Invalid request method and/or path: {method} {path}"
        )),
    }
}

/// Parses the JSON body of a PUT or PATCH request, naming the body in the error.
fn parse_body<T: DeserializeOwned>(method: &str, name: &str, body: &[u8]) -> Result<T, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(format!("Empty {method} request."));
    }
    // serde maps a JSON array onto a struct field by field; only objects are valid bodies.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(format!("Invalid {name} body: expected a JSON object"));
    }
    serde_json::from_slice(body).map_err(|e| format!("Invalid {name} body: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{ActionType, LogLevel};

    fn ok(method: &str, path: &str, body: &str) -> VmmAction {
        parse_request(method, path, body.as_bytes())
            .unwrap_or_else(|e| panic!("{method} {path} {body}: {e}"))
    }

    fn err(method: &str, path: &str, body: &str) -> String {
        match parse_request(method, path, body.as_bytes()) {
            Ok(a) => panic!("{method} {path} {body}: expected an error, got {a:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn every_route_is_routed_and_in_the_openapi_spec() {
        let spec = include_str!("../openapi.yaml");
        let paths_end = spec.find("\ncomponents:").expect("components section");
        for (method, path) in ROUTES {
            let e = parse_request(method, path, b"").err().unwrap_or_default();
            assert!(
                !e.starts_with("Invalid request method"),
                "{method} {path}: {e}"
            );

            let key = format!("\n  {path}:\n");
            let start = spec
                .find(&key)
                .unwrap_or_else(|| panic!("{path} not in openapi.yaml"));
            let rest = &spec[start + key.len()..paths_end];
            let block = &rest[..rest.find("\n  /").unwrap_or(rest.len())];
            let op = format!("\n    {}:\n", method.to_ascii_lowercase());
            assert!(
                format!("\n{block}").contains(&op),
                "{method} {path} not in openapi.yaml"
            );
        }
    }

    #[test]
    fn get_routes() {
        assert_eq!(ok("GET", "/", ""), VmmAction::GetInstanceInfo);
        assert_eq!(ok("GET", "/version", ""), VmmAction::GetVersion);
        assert_eq!(
            ok("GET", "/machine-config", ""),
            VmmAction::GetMachineConfig
        );
        assert_eq!(ok("GET", "/vm/config", ""), VmmAction::GetVmConfig);
    }

    #[test]
    fn trailing_slash_and_query_are_ignored() {
        assert_eq!(ok("GET", "/version/", ""), VmmAction::GetVersion);
        assert_eq!(ok("GET", "/version?x=1", ""), VmmAction::GetVersion);
        assert_eq!(ok("GET", "/vm/config/?a=b&c", ""), VmmAction::GetVmConfig);
        assert_eq!(ok("GET", "/?", ""), VmmAction::GetInstanceInfo);
        assert_eq!(
            ok("PUT", "/metrics/?q", r#"{"metrics_path":"m"}"#),
            VmmAction::PutMetrics(MetricsConfig {
                metrics_path: "m".into()
            })
        );
    }

    #[test]
    fn put_machine_config() {
        let a = ok(
            "PUT",
            "/machine-config",
            r#"{"vcpu_count": 2, "mem_size_mib": 256, "smt": false, "track_dirty_pages": true}"#,
        );
        assert_eq!(
            a,
            VmmAction::PutMachineConfig(MachineConfig {
                vcpu_count: 2,
                mem_size_mib: 256,
                smt: false,
                track_dirty_pages: true,
                ..Default::default()
            })
        );
        // Optional fields default.
        let a = ok(
            "PUT",
            "/machine-config",
            r#"{"vcpu_count":1,"mem_size_mib":64}"#,
        );
        assert_eq!(
            a,
            VmmAction::PutMachineConfig(MachineConfig {
                vcpu_count: 1,
                mem_size_mib: 64,
                ..Default::default()
            })
        );
    }

    #[test]
    fn put_machine_config_is_validated() {
        let e = err(
            "PUT",
            "/machine-config",
            r#"{"vcpu_count":0,"mem_size_mib":64}"#,
        );
        assert!(e.starts_with("Invalid machine-config:"), "{e}");
        assert!(e.contains("vcpu_count"), "{e}");
        let e = err(
            "PUT",
            "/machine-config",
            r#"{"vcpu_count":33,"mem_size_mib":64}"#,
        );
        assert!(e.contains("vcpu_count"), "{e}");
        let e = err(
            "PUT",
            "/machine-config",
            r#"{"vcpu_count":1,"mem_size_mib":0}"#,
        );
        assert!(e.contains("mem_size_mib"), "{e}");
        let e = err(
            "PUT",
            "/machine-config",
            r#"{"vcpu_count":3,"mem_size_mib":64,"smt":true}"#,
        );
        assert!(e.contains("smt"), "{e}");
    }

    #[test]
    fn patch_machine_config_is_not_validated_here() {
        assert_eq!(
            ok("PATCH", "/machine-config", r#"{"vcpu_count": 4}"#),
            VmmAction::PatchMachineConfig(MachineConfigUpdate {
                vcpu_count: Some(4),
                ..Default::default()
            })
        );
        // The VMM decides, knowing the current config.
        assert_eq!(
            ok("PATCH", "/machine-config", r#"{"vcpu_count": 0}"#),
            VmmAction::PatchMachineConfig(MachineConfigUpdate {
                vcpu_count: Some(0),
                ..Default::default()
            })
        );
        assert_eq!(
            ok("PATCH", "/machine-config", "{}"),
            VmmAction::PatchMachineConfig(MachineConfigUpdate::default())
        );
        let e = err("PATCH", "/machine-config", r#"{"vcpus": 4}"#);
        assert!(
            e.starts_with("Invalid machine-config body: unknown field `vcpus`"),
            "{e}"
        );
    }

    #[test]
    fn put_boot_source() {
        assert_eq!(
            ok(
                "PUT",
                "/boot-source",
                r#"{"kernel_image_path":"/k","initrd_path":"/i","boot_args":"console=ttyS0"}"#
            ),
            VmmAction::PutBootSource(BootSourceConfig {
                kernel_image_path: "/k".into(),
                initrd_path: Some("/i".into()),
                boot_args: Some("console=ttyS0".into()),
            })
        );
        assert_eq!(
            ok("PUT", "/boot-source", r#"{"kernel_image_path":"/k"}"#),
            VmmAction::PutBootSource(BootSourceConfig {
                kernel_image_path: "/k".into(),
                initrd_path: None,
                boot_args: None,
            })
        );
        let e = err("PUT", "/boot-source", r#"{"kernel_image_path":""}"#);
        assert_eq!(
            e,
            "Invalid boot-source: kernel_image_path must not be empty"
        );
        let e = err("PUT", "/boot-source", r#"{"boot_args":"x"}"#);
        assert!(
            e.starts_with("Invalid boot-source body: missing field `kernel_image_path`"),
            "{e}"
        );
    }

    #[test]
    fn put_actions() {
        for (name, t) in [
            ("InstanceStart", ActionType::InstanceStart),
            ("SendCtrlAltDel", ActionType::SendCtrlAltDel),
            ("FlushMetrics", ActionType::FlushMetrics),
        ] {
            let body = format!(r#"{{"action_type":"{name}"}}"#);
            assert_eq!(ok("PUT", "/actions", &body), VmmAction::Action(t));
        }
        let e = err("PUT", "/actions", r#"{"action_type":"Reboot"}"#);
        assert!(
            e.starts_with("Invalid actions body: unknown variant `Reboot`"),
            "{e}"
        );
        let e = err("PUT", "/actions", "{}");
        assert!(e.contains("missing field `action_type`"), "{e}");
    }

    #[test]
    fn put_logger() {
        assert_eq!(
            ok(
                "PUT",
                "/logger",
                r#"{"log_path":"/l","level":"Debug","show_level":true,"show_log_origin":false,"module":"vmm"}"#
            ),
            VmmAction::PutLogger(LoggerConfig {
                log_path: Some("/l".into()),
                level: Some(LogLevel::Debug),
                show_level: Some(true),
                show_log_origin: Some(false),
                module: Some("vmm".into()),
            })
        );
        assert_eq!(
            ok("PUT", "/logger", r#"{"level":"Warning"}"#),
            VmmAction::PutLogger(LoggerConfig {
                level: Some(LogLevel::Warning),
                ..Default::default()
            })
        );
        let e = err("PUT", "/logger", r#"{"log_path":""}"#);
        assert!(e.starts_with("Invalid logger: log_path"), "{e}");
        let e = err("PUT", "/logger", r#"{"level":"Loud"}"#);
        assert!(
            e.starts_with("Invalid logger body: unknown variant `Loud`"),
            "{e}"
        );
    }

    #[test]
    fn put_metrics() {
        assert_eq!(
            ok("PUT", "/metrics", r#"{"metrics_path":"/m.fifo"}"#),
            VmmAction::PutMetrics(MetricsConfig {
                metrics_path: "/m.fifo".into()
            })
        );
        let e = err("PUT", "/metrics", r#"{"metrics_path":""}"#);
        assert_eq!(e, "Invalid metrics: metrics_path must not be empty");
        let e = err("PUT", "/metrics", "{}");
        assert!(
            e.starts_with("Invalid metrics body: missing field `metrics_path`"),
            "{e}"
        );
    }

    #[test]
    fn unknown_path_or_method() {
        assert_eq!(
            err("PUT", "/foo", "{}"),
            "Invalid request method and/or path: PUT /foo"
        );
        assert_eq!(
            err("GET", "/foo?x=1", ""),
            "Invalid request method and/or path: GET /foo"
        );
        assert_eq!(
            err("DELETE", "/machine-config", ""),
            "Invalid request method and/or path: DELETE /machine-config"
        );
        assert_eq!(
            err("GET", "/boot-source", ""),
            "Invalid request method and/or path: GET /boot-source"
        );
        assert_eq!(
            err("PATCH", "/boot-source", "{}"),
            "Invalid request method and/or path: PATCH /boot-source"
        );
        assert_eq!(
            err("PUT", "/", "{}"),
            "Invalid request method and/or path: PUT /"
        );
        assert_eq!(
            err("get", "/version", ""),
            "Invalid request method and/or path: get /version"
        );
        assert_eq!(
            err("GET", "", ""),
            "Invalid request method and/or path: GET "
        );
        assert!(parse_request("GET", "/vm", b"").is_err());
        assert!(parse_request("GET", "/version//", b"").is_err());
    }

    #[test]
    fn empty_bodies() {
        assert_eq!(err("PUT", "/machine-config", ""), "Empty PUT request.");
        assert_eq!(err("PUT", "/boot-source", " \r\n"), "Empty PUT request.");
        assert_eq!(err("PUT", "/actions", ""), "Empty PUT request.");
        assert_eq!(err("PUT", "/logger", ""), "Empty PUT request.");
        assert_eq!(err("PUT", "/metrics", ""), "Empty PUT request.");
        assert_eq!(err("PATCH", "/machine-config", ""), "Empty PATCH request.");
    }

    #[test]
    fn get_with_body_is_refused() {
        assert_eq!(
            err("GET", "/version", "{}"),
            "GET request cannot have a body."
        );
        // Whitespace counts as no body.
        assert_eq!(ok("GET", "/version", "\r\n"), VmmAction::GetVersion);
    }

    #[test]
    fn malformed_json() {
        let e = err("PUT", "/machine-config", "{");
        assert!(
            e.starts_with("Invalid machine-config body: EOF while parsing"),
            "{e}"
        );
        let e = err("PUT", "/boot-source", "not json");
        assert!(e.starts_with("Invalid boot-source body: expected"), "{e}");
        let e = err("PUT", "/metrics", r#"{"metrics_path":"m"} trailing"#);
        assert!(
            e.starts_with("Invalid metrics body: trailing characters"),
            "{e}"
        );
        let e = err("PUT", "/actions", "[1, 2]");
        assert!(e.starts_with("Invalid actions body: "), "{e}");
        let e = err("PUT", "/logger", "\u{0}");
        assert!(e.starts_with("Invalid logger body:"), "{e}");
        // Not UTF-8 at all.
        let e = parse_request("PUT", "/metrics", &[0xff, 0xfe, 0x00]).unwrap_err();
        assert!(e.starts_with("Invalid metrics body:"), "{e}");
    }

    #[test]
    fn wrong_types_and_ranges() {
        let e = err(
            "PUT",
            "/machine-config",
            r#"{"vcpu_count":"2","mem_size_mib":64}"#,
        );
        assert!(
            e.starts_with("Invalid machine-config body: invalid type: string \"2\", expected u8"),
            "{e}"
        );
        let e = err(
            "PUT",
            "/machine-config",
            r#"{"vcpu_count":300,"mem_size_mib":64}"#,
        );
        assert!(e.contains("invalid value: integer `300`"), "{e}");
        let e = err(
            "PUT",
            "/machine-config",
            r#"{"vcpu_count":-1,"mem_size_mib":64}"#,
        );
        assert!(e.contains("invalid value: integer `-1`"), "{e}");
        let e = err(
            "PUT",
            "/machine-config",
            r#"{"vcpu_count":1,"mem_size_mib":64,"smt":"yes"}"#,
        );
        assert!(e.contains("expected a boolean"), "{e}");
        let e = err("PUT", "/boot-source", r#"{"kernel_image_path":7}"#);
        assert!(
            e.contains("invalid type: integer `7`, expected a string"),
            "{e}"
        );
    }

    #[test]
    fn snapshot_bodies() {
        let a = ok(
            "PUT",
            "/snapshot/create",
            r#"{"snapshot_type": "Diff", "snapshot_path": "/s", "mem_file_path": "/m"}"#,
        );
        assert!(
            matches!(a, VmmAction::CreateSnapshot(p) if p.snapshot_type == crate::models::SnapshotType::Diff)
        );
        let a = ok(
            "PUT",
            "/snapshot/create",
            r#"{"snapshot_path": "/s", "mem_file_path": "/m", "version": "1.0.0"}"#,
        );
        assert!(
            matches!(a, VmmAction::CreateSnapshot(p) if p.snapshot_type == crate::models::SnapshotType::Full)
        );
        let e = err(
            "PUT",
            "/snapshot/create",
            r#"{"snapshot_path": "/s", "mem_file_path": "/s"}"#,
        );
        assert!(e.contains("must differ"), "{e}");
        let e = err(
            "PUT",
            "/snapshot/create",
            r#"{"snapshot_type": "Half", "snapshot_path": "/s", "mem_file_path": "/m"}"#,
        );
        assert!(e.contains("Half"), "{e}");
        let a = ok(
            "PUT",
            "/snapshot/load",
            r#"{"snapshot_path": "/s", "mem_backend": {"backend_type": "Uffd", "backend_path": "/m"}, "resume_vm": true}"#,
        );
        assert!(matches!(a, VmmAction::LoadSnapshot(p) if p.resume_vm));
        ok(
            "PUT",
            "/snapshot/load",
            r#"{"snapshot_path": "/s", "mem_file_path": "/m"}"#,
        );
        let e = err("PUT", "/snapshot/load", r#"{"snapshot_path": "/s"}"#);
        assert!(e.contains("mem_backend"), "{e}");
        let e = err(
            "PUT",
            "/snapshot/load",
            r#"{"snapshot_path": "/s", "mem_file_path": "/m", "mem_backend": {"backend_type": "File", "backend_path": "/m"}}"#,
        );
        assert!(e.contains("not both"), "{e}");
        let e = err(
            "PUT",
            "/snapshot/load",
            r#"{"snapshot_path": "/s", "mem_file_path": "/m", "prefetch": {"working_set_path": "/w"}}"#,
        );
        assert!(e.contains("Uffd"), "{e}");
    }

    #[test]
    fn vsock_route() {
        let a = parse_request(
            "PUT",
            "/vsock",
            br#"{"guest_cid": 3, "uds_path": "/tmp/v.sock"}"#,
        )
        .unwrap();
        assert!(matches!(a, VmmAction::PutVsock(v) if v.guest_cid == 3));
        let a = parse_request(
            "PUT",
            "/vsock",
            br#"{"vsock_id": "vsock0", "guest_cid": 52, "uds_path": "/v"}"#,
        )
        .unwrap();
        assert!(matches!(a, VmmAction::PutVsock(v) if v.vsock_id.is_some()));
        for cid in [0, 1, 2] {
            let body = format!(r#"{{"guest_cid": {cid}, "uds_path": "/v"}}"#);
            let e = parse_request("PUT", "/vsock", body.as_bytes()).unwrap_err();
            assert!(e.contains("guest_cid") && e.contains("reserved"), "{e}");
        }
        let e = parse_request("PUT", "/vsock", br#"{"guest_cid": 3, "uds_path": ""}"#).unwrap_err();
        assert!(e.contains("uds_path"), "{e}");
        let e = parse_request("PUT", "/vsock", br#"{"guest_cid": 3}"#).unwrap_err();
        assert!(e.contains("Invalid vsock body"), "{e}");
        let e =
            parse_request("PUT", "/vsock", br#"{"guest_cid": -3, "uds_path": "/v"}"#).unwrap_err();
        assert!(e.contains("Invalid vsock body"), "{e}");
    }

    #[test]
    fn drive_routes() {
        let a = ok(
            "PUT",
            "/drives/rootfs",
            r#"{"drive_id": "rootfs", "path_on_host": "/d", "is_root_device": true, "io_engine": "Async", "cache_type": "Writeback"}"#,
        );
        assert!(matches!(a, VmmAction::PutDrive(d) if d.is_root_device));
        let e = err(
            "PUT",
            "/drives/a",
            r#"{"drive_id": "b", "path_on_host": "/d", "is_root_device": false}"#,
        );
        assert!(e.contains("'a'") && e.contains("'b'"), "{e}");
        let e = err(
            "PUT",
            "/drives/a",
            r#"{"drive_id": "a", "path_on_host": "/d"}"#,
        );
        assert!(e.contains("is_root_device"), "{e}");
        let e = err(
            "PUT",
            "/drives/a%2f",
            r#"{"drive_id": "a%2f", "path_on_host": "/d", "is_root_device": false}"#,
        );
        assert!(e.contains("drive_id"), "{e}");
        let a = ok(
            "PATCH",
            "/drives/a",
            r#"{"drive_id": "a", "rate_limiter": {"ops": {"size": 100, "refill_time": 1000}}}"#,
        );
        assert!(matches!(a, VmmAction::PatchDrive(_)));
        let e = err(
            "PATCH",
            "/drives/a",
            r#"{"drive_id": "a", "rate_limiter": {"ops": {"size": 100, "refill_time": 0}}}"#,
        );
        assert!(e.contains("refill_time"), "{e}");
        assert!(err("GET", "/drives/a", "").contains("Invalid request method"));
        assert!(err("PUT", "/drives/", "{}").contains("Invalid request method"));
    }

    #[test]
    fn network_interface_routes() {
        let a = ok(
            "PUT",
            "/network-interfaces/eth0",
            r#"{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:ac:10:00:02",
                "rx_rate_limiter": {"bandwidth": {"size": 1000, "refill_time": 100}}}"#,
        );
        assert!(matches!(a, VmmAction::PutNetworkInterface(n) if n.host_dev_name == "tap0"));
        let e = err(
            "PUT",
            "/network-interfaces/eth0",
            r#"{"iface_id": "eth1", "host_dev_name": "tap0"}"#,
        );
        assert!(e.contains("'eth0'") && e.contains("'eth1'"), "{e}");
        let e = err(
            "PUT",
            "/network-interfaces/eth0",
            r#"{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "nope"}"#,
        );
        assert!(e.contains("guest_mac"), "{e}");
        let e = err(
            "PUT",
            "/network-interfaces/eth0",
            r#"{"iface_id": "eth0", "host_dev_name": "tap0", "mtu": 9000}"#,
        );
        assert!(e.contains("unknown field"), "{e}");
        let a = ok(
            "PATCH",
            "/network-interfaces/eth0",
            r#"{"iface_id": "eth0", "tx_rate_limiter": {"ops": {"size": 10, "refill_time": 1000}}}"#,
        );
        assert!(matches!(a, VmmAction::PatchNetworkInterface(_)));
        let e = err(
            "PATCH",
            "/network-interfaces/eth0",
            r#"{"iface_id": "eth0", "tx_rate_limiter": {"ops": {"size": 10, "refill_time": 0}}}"#,
        );
        assert!(
            e.contains("tx_rate_limiter") && e.contains("refill_time"),
            "{e}"
        );
        assert!(err("GET", "/network-interfaces/eth0", "").contains("Invalid request method"));
        assert!(err("PUT", "/network-interfaces/", "{}").contains("Invalid request method"));
    }

    #[test]
    fn arrays_are_not_bodies() {
        let e = err("PUT", "/machine-config", "[1, 64]");
        assert_eq!(e, "Invalid machine-config body: expected a JSON object");
        let e = err("PATCH", "/vm", r#""Paused""#);
        assert_eq!(e, "Invalid vm body: expected a JSON object");
        assert_eq!(
            ok("PATCH", "/vm", r#"{"state": "Paused"}"#),
            VmmAction::PatchVmState(crate::models::RequestedVmState::Paused)
        );
    }

    #[test]
    fn unknown_and_missing_fields() {
        let e = err(
            "PUT",
            "/machine-config",
            r#"{"vcpu_count":1,"mem_size_mib":64,"foo":1}"#,
        );
        assert!(
            e.starts_with("Invalid machine-config body: unknown field `foo`, expected one of"),
            "{e}"
        );
        assert!(e.contains("at line 1 column"), "{e}");
        let e = err("PUT", "/machine-config", r#"{"vcpu_count":1}"#);
        assert!(
            e.starts_with("Invalid machine-config body: missing field `mem_size_mib`"),
            "{e}"
        );
        let e = err("PUT", "/logger", r#"{"path":"/x"}"#);
        assert!(
            e.starts_with("Invalid logger body: unknown field `path`"),
            "{e}"
        );
        let e = err(
            "PUT",
            "/actions",
            r#"{"action_type":"InstanceStart","extra":true}"#,
        );
        assert!(
            e.starts_with("Invalid actions body: unknown field `extra`"),
            "{e}"
        );
    }
}
