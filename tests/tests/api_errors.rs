//! Bad input over the API: every case answers 400 with a `fault_message` that names the field or
//! the problem, and the VMM keeps serving afterwards.

use std::path::Path;

use serde_json::{json, Value};
use tartarus_tests::{guests, GuestReport, Response, Vmm, GUEST_TIMEOUT};

const MEM_MIB: u64 = 64;

/// Asserts a 400 whose fault message contains one of `any_of` (case-insensitive), then that the
/// VMM still answers `GET /`. Returns the fault message.
fn expect_fault(vmm: &Vmm, what: &str, r: Response, any_of: &[&str]) -> String {
    assert_eq!(r.status, 400, "{what}: expected 400, got {r}");
    let msg = r
        .fault_message()
        .unwrap_or_else(|| panic!("{what}: 400 without a JSON fault_message: {r}"))
        .to_string();
    assert!(!msg.trim().is_empty(), "{what}: empty fault_message");
    let lower = msg.to_lowercase();
    assert!(
        any_of.iter().any(|w| lower.contains(&w.to_lowercase())),
        "{what}: fault_message {msg:?} mentions none of {any_of:?}"
    );
    let after = vmm.get("/");
    assert_eq!(after.status, 200, "{what}: GET / afterwards -> {after}");
    msg
}

fn machine_config(vcpus: Value, mem: Value) -> Value {
    json!({"vcpu_count": vcpus, "mem_size_mib": mem})
}

#[test]
fn malformed_json() {
    let vmm = Vmm::start_api();
    let r = vmm.put_raw("/machine-config", r#"{"vcpu_count": 1, "mem_size_mib": "#);
    expect_fault(
        &vmm,
        "truncated JSON",
        r,
        &["json", "eof", "parse", "deserializ", "expected"],
    );
    let r = vmm.put_raw("/boot-source", "kernel_image_path=/x");
    expect_fault(
        &vmm,
        "not JSON",
        r,
        &["json", "expected", "parse", "deserializ"],
    );
    let r = vmm.put_raw("/actions", "{action_type: InstanceStart}");
    expect_fault(
        &vmm,
        "unquoted keys",
        r,
        &["json", "key", "expected", "parse", "deserializ"],
    );
    assert_eq!(vmm.state(), "Not started");
}

#[test]
fn wrong_types() {
    let vmm = Vmm::start_api();
    let r = vmm.put("/machine-config", &machine_config(json!("two"), json!(64)));
    // serde names the type problem; naming the field is better still.
    expect_fault(
        &vmm,
        "vcpu_count: \"two\"",
        r,
        &["vcpu_count", "invalid type"],
    );
    let r = vmm.put("/machine-config", &machine_config(json!(1), json!(-5)));
    expect_fault(
        &vmm,
        "mem_size_mib: -5",
        r,
        &["mem_size_mib", "invalid value", "invalid type"],
    );
    let r = vmm.put("/machine-config", &machine_config(json!(300), json!(64)));
    expect_fault(
        &vmm,
        "vcpu_count: 300",
        r,
        &["vcpu_count", "invalid value", "out of range"],
    );
    let r = vmm.put("/boot-source", &json!({"kernel_image_path": 42}));
    expect_fault(
        &vmm,
        "kernel_image_path: 42",
        r,
        &["kernel_image_path", "invalid type"],
    );
    let r = vmm.put("/actions", &json!({"action_type": "Explode"}));
    expect_fault(
        &vmm,
        "action_type Explode",
        r,
        &["action_type", "unknown variant", "explode"],
    );
    let r = vmm.put("/machine-config", &json!("vcpu_count=1"));
    expect_fault(
        &vmm,
        "string body",
        r,
        &["invalid type", "machine", "expected"],
    );
}

#[test]
fn unknown_and_missing_fields() {
    let vmm = Vmm::start_api();
    let r = vmm.put(
        "/machine-config",
        &json!({"vcpu_count": 1, "mem_size_mib": 64, "cpu_template": "T2"}),
    );
    expect_fault(&vmm, "unknown field cpu_template", r, &["cpu_template"]);
    let r = vmm.put(
        "/boot-source",
        &json!({"kernel_image_path": guests().hello_elf, "bootargs": "x"}),
    );
    expect_fault(&vmm, "misspelt bootargs", r, &["bootargs"]);
    let r = vmm.put("/machine-config", &json!({"vcpu_count": 1}));
    expect_fault(&vmm, "missing mem_size_mib", r, &["mem_size_mib"]);
    let r = vmm.put("/boot-source", &json!({"boot_args": "x"}));
    expect_fault(&vmm, "missing kernel_image_path", r, &["kernel_image_path"]);
    let r = vmm.patch("/machine-config", &json!({"vcpus": 2}));
    expect_fault(&vmm, "PATCH unknown field", r, &["vcpus"]);
}

#[test]
fn vcpu_and_memory_limits() {
    let vmm = Vmm::start_api();
    let r = vmm.put("/machine-config", &machine_config(json!(0), json!(64)));
    expect_fault(&vmm, "vcpu_count 0", r, &["vcpu_count"]);
    let r = vmm.put("/machine-config", &machine_config(json!(33), json!(64)));
    expect_fault(&vmm, "vcpu_count 33", r, &["vcpu_count"]);
    let r = vmm.put("/machine-config", &machine_config(json!(1), json!(0)));
    expect_fault(&vmm, "mem_size_mib 0", r, &["mem_size_mib"]);
    let r = vmm.put(
        "/machine-config",
        &json!({"vcpu_count": 3, "mem_size_mib": 64, "smt": true}),
    );
    expect_fault(&vmm, "smt with 3 vCPUs", r, &["smt"]);
    // The boundaries are accepted.
    vmm.put_ok("/machine-config", &machine_config(json!(32), json!(64)));
    vmm.put_ok("/machine-config", &machine_config(json!(1), json!(1)));
    // A rejected PUT leaves the previous configuration in place.
    let r = vmm.put("/machine-config", &machine_config(json!(0), json!(64)));
    expect_fault(&vmm, "vcpu_count 0 again", r, &["vcpu_count"]);
    let mc = vmm.get_json("/machine-config");
    assert_eq!(mc["vcpu_count"], json!(1), "{mc}");
    assert_eq!(mc["mem_size_mib"], json!(1), "{mc}");
}

#[test]
fn missing_or_unreadable_kernel() {
    let vmm = Vmm::start_api();
    let dir = vmm.dir().to_path_buf();
    let problems = ["kernel", "no such file", "not found", "exist"];

    let missing = dir.join("no-such-kernel");
    let r = vmm.put("/boot-source", &json!({ "kernel_image_path": missing }));
    expect_fault(&vmm, "missing kernel file", r, &problems);

    // Tests run as root, so chmod 000 would not stop the VMM: use a directory and a dangling
    // symlink instead.
    let r = vmm.put("/boot-source", &json!({ "kernel_image_path": dir }));
    expect_fault(&vmm, "kernel is a directory", r, &["kernel", "directory"]);

    let link = dir.join("dangling");
    std::os::unix::fs::symlink(dir.join("gone"), &link).unwrap();
    let r = vmm.put("/boot-source", &json!({ "kernel_image_path": link }));
    expect_fault(&vmm, "kernel is a dangling symlink", r, &problems);

    let r = vmm.put(
        "/boot-source",
        &json!({"kernel_image_path": guests().hello_elf, "initrd_path": dir.join("no-initrd")}),
    );
    if r.status == 204 {
        // Checking the initrd only at start is acceptable; then the start must fail.
        let r = vmm.action("InstanceStart");
        expect_fault(&vmm, "InstanceStart with missing initrd", r, &["initrd"]);
    } else {
        expect_fault(
            &vmm,
            "missing initrd",
            r,
            &["initrd", "no such file", "not found"],
        );
    }
    assert_eq!(vmm.state(), "Not started");
}

#[test]
fn instance_start_without_boot_source() {
    let vmm = Vmm::start_api();
    let r = vmm.action("InstanceStart");
    expect_fault(
        &vmm,
        "InstanceStart without boot source",
        r,
        &["kernel", "boot"],
    );
    assert_eq!(vmm.state(), "Not started");
}

#[test]
fn kernel_neither_elf_nor_bzimage_then_good_kernel_boots() {
    let mut vmm = Vmm::start_api();
    let junk = vmm.dir().join("junk-kernel");
    // Deterministic pseudo-random bytes (xorshift), 64 KiB, not starting with an ELF magic.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let bytes: Vec<u8> = (0..65536)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    assert_ne!(&bytes[..4], b"\x7fELF");
    std::fs::write(&junk, &bytes).unwrap();

    vmm.put_ok("/machine-config", &machine_config(json!(1), json!(MEM_MIB)));
    let r = vmm.put("/boot-source", &json!({ "kernel_image_path": junk }));
    if r.status == 400 {
        // Refusing the image at PUT time is fine too, as long as it says why.
        expect_fault(
            &vmm,
            "junk kernel at PUT",
            r,
            &["kernel", "elf", "bzimage", "image"],
        );
    } else {
        assert_eq!(r.status, 204, "PUT boot-source junk -> {r}");
        let r = vmm.action("InstanceStart");
        expect_fault(
            &vmm,
            "InstanceStart with junk kernel",
            r,
            &["kernel", "elf", "bzimage", "image", "load"],
        );
    }
    assert_eq!(vmm.state(), "Not started");

    vmm.put_ok(
        "/boot-source",
        &json!({"kernel_image_path": guests().hello_elf, "boot_args": "second=try"}),
    );
    vmm.start();
    let out = vmm.wait_success();
    GuestReport::parse(&out)
        .check("second=try", MEM_MIB, 1)
        .unwrap_or_else(|e| panic!("boot after a failed InstanceStart: {e}"));
}

#[test]
fn truncated_elf_is_refused() {
    // An ELF header that promises segments beyond the end of the file.
    let vmm = Vmm::start_api();
    let elf = std::fs::read(&guests().hello_elf).unwrap();
    let cut = vmm.dir().join("truncated.elf");
    std::fs::write(&cut, &elf[..elf.len().min(80)]).unwrap();
    vmm.put_ok("/machine-config", &machine_config(json!(1), json!(MEM_MIB)));
    let r = vmm.put("/boot-source", &json!({ "kernel_image_path": cut }));
    if r.status == 204 {
        let r = vmm.action("InstanceStart");
        expect_fault(
            &vmm,
            "truncated ELF",
            r,
            &["kernel", "elf", "image", "load", "read"],
        );
    } else {
        expect_fault(&vmm, "truncated ELF at PUT", r, &["kernel", "elf", "image"]);
    }
    assert_eq!(vmm.state(), "Not started");
}

/// Starts the wait_cad guest, runs `f` while it is running, then resets it.
fn with_running_guest(f: impl FnOnce(&Vmm)) {
    let mut vmm = Vmm::start_api();
    vmm.configure(1, MEM_MIB, &guests().hello_elf, "wait_cad");
    vmm.start();
    vmm.wait_for_output("waiting for ctrl-alt-del", GUEST_TIMEOUT);
    f(&vmm);
    assert_eq!(vmm.state(), "Running");
    let r = vmm.action("SendCtrlAltDel");
    assert_eq!(r.status, 204, "SendCtrlAltDel -> {r}");
    vmm.wait_success();
}

#[test]
fn instance_start_twice() {
    with_running_guest(|vmm| {
        let r = vmm.action("InstanceStart");
        expect_fault(
            vmm,
            "second InstanceStart",
            r,
            &["running", "started", "state"],
        );
    });
}

#[test]
fn configuration_after_start() {
    with_running_guest(|vmm| {
        let r = vmm.put("/machine-config", &machine_config(json!(2), json!(MEM_MIB)));
        expect_fault(vmm, "PUT machine-config after start", r, &["running"]);
        let r = vmm.patch("/machine-config", &json!({"vcpu_count": 2}));
        expect_fault(vmm, "PATCH machine-config after start", r, &["running"]);
        let r = vmm.put(
            "/boot-source",
            &json!({"kernel_image_path": guests().hello_elf}),
        );
        expect_fault(vmm, "PUT boot-source after start", r, &["running"]);
        // Reading the configuration is still allowed.
        let mc = vmm.get_json("/machine-config");
        assert_eq!(mc["vcpu_count"], json!(1), "{mc}");
    });
}

#[test]
fn ctrl_alt_del_before_start() {
    let vmm = Vmm::start_api();
    let r = vmm.action("SendCtrlAltDel");
    expect_fault(
        &vmm,
        "SendCtrlAltDel before start",
        r,
        &["not started", "state", "running"],
    );
}

#[test]
fn oversized_body() {
    let vmm = Vmm::start_api();
    // 60 KiB: a valid body padded with spaces beyond the 51200-byte default limit.
    let body = pad_json(&machine_config(json!(1), json!(MEM_MIB)), 60 * 1024);
    let r = vmm.put_raw("/machine-config", &body);
    expect_fault(
        &vmm,
        "60 KiB body",
        r,
        &["larger than the limit", "payload", "size"],
    );
    // Exactly at the limit is fine.
    let body = pad_json(&machine_config(json!(1), json!(MEM_MIB)), 51200);
    let r = vmm.put_raw("/machine-config", &body);
    assert_eq!(r.status, 204, "51200-byte body -> {r}");
}

#[test]
fn larger_payload_limit_from_cli() {
    let vmm = Vmm::builder()
        .arg("--http-api-max-payload-size")
        .arg("100000")
        .spawn();
    vmm.wait_for_socket();
    let body = pad_json(&machine_config(json!(2), json!(MEM_MIB)), 60 * 1024);
    let r = vmm.put_raw("/machine-config", &body);
    assert_eq!(r.status, 204, "60 KiB body with a 100000-byte limit -> {r}");
    let body = pad_json(&machine_config(json!(1), json!(MEM_MIB)), 120 * 1024);
    let r = vmm.put_raw("/machine-config", &body);
    expect_fault(
        &vmm,
        "120 KiB body",
        r,
        &["larger than the limit", "payload", "size"],
    );
    assert_eq!(vmm.get_json("/machine-config")["vcpu_count"], json!(2));
}

fn pad_json(v: &Value, size: usize) -> String {
    let s = v.to_string();
    assert!(s.len() < size);
    let mut out = String::with_capacity(size);
    out.push_str(&s[..s.len() - 1]);
    out.push_str(&" ".repeat(size - s.len()));
    out.push('}');
    assert_eq!(out.len(), size);
    out
}

#[test]
fn unknown_path_and_method() {
    let vmm = Vmm::start_api();
    let r = vmm.get("/no/such/thing");
    expect_fault(
        &vmm,
        "GET unknown path",
        r,
        &["invalid request method and/or path"],
    );
    let r = vmm.put(
        "/machine-configs",
        &machine_config(json!(1), json!(MEM_MIB)),
    );
    expect_fault(
        &vmm,
        "PUT unknown path",
        r,
        &["invalid request method and/or path"],
    );
    let r = vmm.request("DELETE", "/machine-config", None);
    assert!(
        r.status == 400 || r.status == 405,
        "DELETE /machine-config: expected 400 or 405, got {r}"
    );
    assert!(
        r.fault_message().is_some(),
        "DELETE /machine-config: no fault_message: {r}"
    );
    let r = vmm.request("PATCH", "/boot-source", Some(b"{}"));
    assert!(
        r.status == 400 || r.status == 405,
        "PATCH /boot-source: expected 400 or 405, got {r}"
    );
    assert_eq!(vmm.get("/").status, 200);
}

#[test]
fn empty_body() {
    let vmm = Vmm::start_api();
    let r = vmm.request("PUT", "/machine-config", Some(b""));
    expect_fault(
        &vmm,
        "PUT machine-config empty body",
        r,
        &["body", "empty", "eof", "json"],
    );
    let r = vmm.request("PUT", "/actions", None);
    expect_fault(
        &vmm,
        "PUT actions without body",
        r,
        &["body", "empty", "eof", "json", "content-length"],
    );
    let r = vmm.request("PUT", "/boot-source", Some(b"{}"));
    expect_fault(&vmm, "PUT boot-source {}", r, &["kernel_image_path"]);
}

#[test]
fn garbage_requests_do_not_kill_the_server() {
    let vmm = Vmm::start_api();
    for raw in [
        &b"this is not http\r\n\r\n"[..],
        b"GET / HTTP/9.9\r\n\r\n",
        b"PUT /machine-config HTTP/1.1\r\nContent-Length: nope\r\n\r\n{}",
    ] {
        // The server may answer 400 or drop the connection; either way it must keep serving.
        if let Ok(r) = tartarus_tests::http::raw_request(vmm.socket_path(), raw) {
            assert!(r.status >= 400, "{:?} -> {r}", String::from_utf8_lossy(raw));
        }
        assert_eq!(
            vmm.get("/").status,
            200,
            "after {:?}",
            String::from_utf8_lossy(raw)
        );
    }
    // A client that connects and goes away without a request.
    drop(std::os::unix::net::UnixStream::connect(vmm.socket_path()).unwrap());
    // A client that sends half a request and goes away.
    {
        use std::io::Write;
        let mut s = std::os::unix::net::UnixStream::connect(vmm.socket_path()).unwrap();
        s.write_all(b"PUT /machine-config HTTP/1.1\r\nContent-Length: 100\r\n\r\n{")
            .unwrap();
    }
    assert_eq!(vmm.get("/").status, 200);
}

#[test]
fn errors_leave_the_vm_bootable() {
    // After a string of rejected requests, a correct configuration still boots.
    let mut vmm = Vmm::start_api();
    let _ = vmm.put_raw("/machine-config", "{");
    let _ = vmm.put("/machine-config", &machine_config(json!(0), json!(0)));
    let _ = vmm.put(
        "/boot-source",
        &json!({"kernel_image_path": "/nonexistent"}),
    );
    let _ = vmm.action("InstanceStart");
    assert_eq!(vmm.state(), "Not started");
    vmm.configure(2, MEM_MIB, Path::new(&guests().hello_elf), "after=errors");
    vmm.start();
    let out = vmm.wait_success();
    GuestReport::parse(&out)
        .check("after=errors", MEM_MIB, 2)
        .unwrap_or_else(|e| panic!("{e}"));
}
