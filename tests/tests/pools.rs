//! Warm pools (issue #13) on a real `tartarusd` with real jailed VMMs of the `base` Linux
//! template: a pool fills with restored, paused sandboxes hidden from the API; a create takes
//! one (resumed, the caller's, with its labels and timeout) and the pool refills; creates the
//! pool cannot serve take the normal path; pools yield to creates under the daemon's limits,
//! drain under host memory pressure and go with their template.

use std::time::Duration;

use serde_json::Value;
use tartarus_tests::platform::{alive, wait_until, Daemon};

fn pool(d: &Daemon) -> Value {
    d.json("GET", "/templates/base/pool", None, 200)
}

fn ready(d: &Daemon) -> u64 {
    pool(d)["ready"].as_u64().unwrap()
}

#[test]
#[cfg_attr(
    tartarus_skip_linux_tests,
    ignore = "Linux lane turned off with TARTARUS_LINUX_TESTS=0; pass --ignored to run it"
)]
fn a_pool_serves_creates_and_refills() {
    let d = Daemon::start("pools", &["--max-sandboxes", "4"]);
    d.build_base("base");
    // Bad settings are refused with the field named.
    let (code, text) = d.curl(
        "PUT",
        "/templates/base/pool",
        Some(r#"{"min": 3, "max": 2}"#),
    );
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("min"), "{text}");
    let (code, text) = d.curl("PUT", "/templates/nosuch/pool", Some(r#"{"max": 1}"#));
    assert_eq!(code, 404, "{text}");
    let (code, _) = d.curl("PUT", "/templates/base/pool", Some(r#"{"max": 1, "x": 1}"#));
    assert_eq!(code, 400);

    let o = d.cli_ok(&["pool", "set", "base", "--min", "2", "--max", "3"]);
    assert!(o.contains("base"), "{o}");
    assert!(
        wait_until(Duration::from_secs(60), || ready(&d) == 2),
        "{}",
        pool(&d)
    );
    // Pooled sandboxes are nobody's yet: not listed.
    let list = d.json("GET", "/sandboxes", None, 200);
    assert_eq!(list["items"].as_array().unwrap().len(), 0, "{list}");

    // A create takes one: resumed, with the caller's labels and timeout; it works.
    let sb = d.json(
        "POST",
        "/sandboxes",
        Some(r#"{"template": "base", "labels": {"team": "qa"}, "timeout_s": 600}"#),
        201,
    );
    assert_eq!(sb["from_pool"], true, "{sb}");
    assert_eq!(sb["state"], "running", "{sb}");
    assert_eq!(sb["labels"]["team"], "qa");
    assert_eq!(sb["timeout_s"], 600);
    let id = sb["id"].as_str().unwrap().to_string();
    assert!(alive(sb["pid"].as_i64().unwrap() as i32));
    assert_eq!(
        d.cli_ok(&["exec", &id, "--", "echo", "from-the-pool"]),
        "from-the-pool\n"
    );
    let p = pool(&d);
    assert_eq!(p["claims"], 1, "{p}");
    // ... and the pool refills (to min or beyond: any demand seen raises the target by one
    // at least, up to max).
    assert!(
        wait_until(Duration::from_secs(60), || ready(&d) >= 2),
        "{}",
        pool(&d)
    );
    // The claimed sandbox's timeout runs from its claim.
    let t = d.json(
        "POST",
        "/sandboxes",
        Some(r#"{"template": "base", "timeout_s": 2}"#),
        201,
    );
    assert_eq!(t["from_pool"], true);
    let tid = t["id"].as_str().unwrap().to_string();
    assert!(wait_until(Duration::from_secs(20), || d.sandbox(&tid)
        ["state"]
        == "stopped"));
    d.cli_ok(&["rm", &tid]);

    // A create the pool does not serve (networking) takes the normal path.
    let n = d.json(
        "POST",
        "/sandboxes",
        Some(r#"{"template": "base", "network": "nat"}"#),
        201,
    );
    assert_eq!(n["from_pool"], false, "{n}");
    // The daemon's limit (4) counts the pool's ready sandboxes last: this create evicts one.
    assert!(wait_until(Duration::from_secs(60), || ready(&d) >= 1));
    let e = d.json(
        "POST",
        "/sandboxes",
        Some(r#"{"template": "base", "network": "nat"}"#),
        201,
    );
    assert_eq!(e["from_pool"], false, "{e}");
    let list = d.json("GET", "/sandboxes", None, 200);
    assert_eq!(list["items"].as_array().unwrap().len(), 3, "{list}");
    for s in [&n, &e] {
        d.cli_ok(&["rm", s["id"].as_str().unwrap()]);
    }

    // The CLI's view; removing the pool drains it.
    let ls = d.cli_ok(&["pool", "ls"]);
    assert!(ls.contains("base") && ls.contains("READY"), "{ls}");
    d.cli_ok(&["pool", "rm", "base"]);
    let (code, _) = d.curl("GET", "/templates/base/pool", None);
    assert_eq!(code, 404);
    d.cli_ok(&["rm", &id]);
    assert!(
        wait_until(Duration::from_secs(30), || d.leftovers().is_empty()),
        "{:?}",
        d.leftovers()
    );

    // A pool whose template is deleted drains and goes.
    d.cli_ok(&["pool", "set", "base", "--min", "1", "--max", "1"]);
    assert!(wait_until(Duration::from_secs(60), || ready(&d) == 1));
    d.cli_ok(&["template", "rm", "base"]);
    assert!(wait_until(Duration::from_secs(30), || {
        d.json("GET", "/pools", None, 200)["items"]
            .as_array()
            .unwrap()
            .is_empty()
            && d.leftovers().is_empty()
    }));
}

#[test]
#[cfg_attr(
    tartarus_skip_linux_tests,
    ignore = "Linux lane turned off with TARTARUS_LINUX_TESTS=0; pass --ignored to run it"
)]
fn pools_drain_under_host_memory_pressure() {
    // A reserve larger than any host's memory: the host is always "short".
    let d = Daemon::start("pools-pressure", &["--pool-reserve-mib", "100000000"]);
    d.build_base("base");
    d.cli_ok(&["pool", "set", "base", "--min", "2", "--max", "2"]);
    assert!(wait_until(Duration::from_secs(10), || pool(&d)
        ["memory_pressure"]
        == true));
    std::thread::sleep(Duration::from_secs(2));
    let p = pool(&d);
    assert_eq!(
        (p["target"].as_u64(), p["ready"].as_u64()),
        (Some(0), Some(0)),
        "{p}"
    );
    // Creates still work, the normal way, and count as a miss.
    let sb = d.json("POST", "/sandboxes", Some(r#"{"template": "base"}"#), 201);
    assert_eq!(sb["from_pool"], false);
    assert_eq!(pool(&d)["misses"], 1);
}
