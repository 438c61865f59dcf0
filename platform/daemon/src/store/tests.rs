use super::*;

#[test]
fn rfc3339_known_points() {
    assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
    assert_eq!(rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
    assert_eq!(rfc3339(1_796_460_000_000), "2026-12-05T08:40:00.000Z");
}

fn row(id: &str) -> SandboxRow {
    SandboxRow {
        id: id.into(),
        tenant: "acme".into(),
        state: SandboxState::Creating,
        template: "base".into(),
        snapshot: None,
        pid: None,
        pid_start: None,
        uid: 1000,
        vcpus: 1,
        memory_mib: 128,
        network: NetworkMode::None,
        timeout_s: Some(5),
        labels: [("a".to_string(), "b".to_string())].into(),
        created_ms: 1,
        create_ms: None,
        restore_ms: None,
        reason: None,
        template_dir: "/t".into(),
        net_index: None,
        idle_timeout_s: Some(30),
        hibernated_ms: None,
        hibernated_bytes: None,
        memory_freed_kib: None,
        wake_ms: None,
        wakes: 0,
        pool: None,
        from_pool: false,
    }
}

#[test]
fn sandbox_rows_round_trip_and_survive_reopen() {
    let dir = std::env::temp_dir().join(format!("tartarusd-store-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("state.db");
    {
        let s = Store::open(&db).unwrap();
        s.insert_sandbox(&row("sb-1")).unwrap();
        s.set_sandbox_running("sb-1", 42, 7, 1.5, 0.5).unwrap();
        s.set_sandbox_state("sb-1", SandboxState::Paused, None)
            .unwrap();
    }
    let s = Store::open(&db).unwrap();
    let r = s.sandbox(&TenantScope::All, "sb-1").unwrap().unwrap();
    assert_eq!(
        (r.state, r.pid, r.pid_start),
        (SandboxState::Paused, Some(42), Some(7))
    );
    assert_eq!(r.labels.get("a").map(String::as_str), Some("b"));
    assert_eq!(r.idle_timeout_s, Some(30));
    s.set_sandbox_hibernated("sb-1", 4096, 100).unwrap();
    let r = s.sandbox(&TenantScope::All, "sb-1").unwrap().unwrap();
    assert_eq!(
        (r.state, r.pid, r.hibernated_bytes, r.memory_freed_kib),
        (SandboxState::Hibernated, None, Some(4096), Some(100))
    );
    assert!(r.hibernated_ms.is_some());
    s.set_sandbox_woken("sb-1", 43, 8, 2.5).unwrap();
    let r = s.sandbox(&TenantScope::All, "sb-1").unwrap().unwrap();
    assert_eq!(
        (r.state, r.pid, r.wake_ms, r.wakes, r.hibernated_ms),
        (SandboxState::Running, Some(43), Some(2.5), 1, None)
    );
    // The memory given back stays readable after the wake.
    assert_eq!(r.memory_freed_kib, Some(100));
    s.set_sandbox_state("sb-1", SandboxState::Paused, None)
        .unwrap();
    let r = s.sandbox(&TenantScope::All, "sb-1").unwrap().unwrap();
    assert_eq!((r.pid, r.pid_start), (Some(43), Some(8)));
    s.set_sandbox_state("sb-1", SandboxState::Failed, Some("gone"))
        .unwrap();
    let r = s.sandbox(&TenantScope::All, "sb-1").unwrap().unwrap();
    assert_eq!((r.pid, r.reason.as_deref()), (None, Some("gone")));
    assert_eq!(s.template_dir_users("/t").unwrap(), 1);
    s.delete_sandbox("sb-1").unwrap();
    assert!(s.sandbox(&TenantScope::All, "sb-1").unwrap().is_none());
    let e = s
        .add_event(Event {
            id: 0,
            time: String::new(),
            kind: "sandbox.deleted".into(),
            tenant: "acme".into(),
            sandbox: Some("sb-1".into()),
            template: None,
            snapshot: None,
            state: None,
            message: None,
        })
        .unwrap();
    assert_eq!(
        s.events_since(&TenantScope::All, e.id - 1, 10).unwrap(),
        vec![e]
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn queries_are_scoped_to_the_tenant() {
    let dir =
        std::env::temp_dir().join(format!("tartarusd-scope-{}", crate::fsutil::random_hex(4)));
    std::fs::create_dir_all(&dir).unwrap();
    let s = Store::open(&dir.join("state.db")).unwrap();
    s.insert_sandbox(&row("sb-a")).unwrap();
    let acme = TenantScope::parse("acme").unwrap();
    let evil = TenantScope::parse("evil").unwrap();
    assert!(s.sandbox(&acme, "sb-a").unwrap().is_some());
    assert!(s.sandbox(&evil, "sb-a").unwrap().is_none());
    assert_eq!(s.sandboxes(&evil).unwrap().len(), 0);
    assert_eq!(s.sandboxes(&TenantScope::All).unwrap().len(), 1);
    let spec = StoredSpec {
        kernel: "k".into(),
        rootfs: "r".into(),
        boot_args: String::new(),
        vcpus: 1,
        memory_mib: 1,
        disk_mib: 1,
        env: Default::default(),
        warmup: vec![],
        image: None,
        rootfs_key: None,
        runtime: None,
    };
    // The same name in two tenants and the host: three templates.
    for t in ["acme", "evil", HOST_TENANT] {
        s.put_template(t, "py", TemplateState::Ready, &spec, &format!("/d/{t}"))
            .unwrap();
    }
    s.put_template("acme", "mine", TemplateState::Ready, &spec, "/d/m")
        .unwrap();
    let names = |scope: &TenantScope| -> Vec<(String, String)> {
        s.templates(scope)
            .unwrap()
            .into_iter()
            .map(|t| (t.api.tenant, t.api.name))
            .collect()
    };
    let evil_sees = names(&evil);
    assert!(!evil_sees.iter().any(|(t, _)| t == "acme"), "{evil_sees:?}");
    assert_eq!(evil_sees.len(), 2, "own py + the host's py: {evil_sees:?}");
    assert_eq!(names(&TenantScope::All).len(), 4);
    assert_eq!(s.template("acme", "py").unwrap().unwrap().dir, "/d/acme");
    s.delete_template("acme", "py").unwrap();
    assert!(s.template("evil", "py").unwrap().is_some());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_database_of_the_first_schema_is_migrated_and_its_rows_become_the_hosts() {
    let dir = std::env::temp_dir().join(format!("tartarusd-mig-{}", crate::fsutil::random_hex(4)));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("state.db");
    {
        let c = Connection::open(&db).unwrap();
        c.execute_batch(
            "CREATE TABLE templates (name TEXT PRIMARY KEY, state TEXT NOT NULL, spec TEXT NOT NULL,
                dir TEXT NOT NULL, created_ms INTEGER NOT NULL, build_ms INTEGER,
                snapshot_bytes INTEGER, error TEXT);
             CREATE TABLE sandboxes (id TEXT PRIMARY KEY, state TEXT NOT NULL, template TEXT NOT NULL,
                template_dir TEXT NOT NULL, snapshot TEXT, pid INTEGER, pid_start INTEGER,
                uid INTEGER NOT NULL, vcpus INTEGER NOT NULL, memory_mib INTEGER NOT NULL,
                network TEXT NOT NULL, timeout_s INTEGER, labels TEXT NOT NULL,
                created_ms INTEGER NOT NULL, create_ms REAL, restore_ms REAL, reason TEXT,
                net_index INTEGER);
             CREATE TABLE snapshots (id TEXT PRIMARY KEY, sandbox TEXT NOT NULL, template TEXT NOT NULL,
                template_dir TEXT NOT NULL, dir TEXT NOT NULL, vcpus INTEGER NOT NULL,
                memory_mib INTEGER NOT NULL, created_ms INTEGER NOT NULL, size_bytes INTEGER NOT NULL);
             CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, time_ms INTEGER NOT NULL,
                kind TEXT NOT NULL, sandbox TEXT, template TEXT, snapshot TEXT, state TEXT, message TEXT);
             INSERT INTO templates VALUES ('base', 'ready', '{\"kernel\":\"k\",\"rootfs\":\"r\",\"boot_args\":\"\",\"vcpus\":1,\"memory_mib\":128,\"disk_mib\":64,\"env\":{},\"warmup\":[]}', '/t', 1, 5, 6, NULL);
             INSERT INTO sandboxes VALUES ('sb-old', 'running', 'base', '/t', NULL, 7, 8, 900000, 1, 128, 'none', NULL, '{}', 1, 1.0, 1.0, NULL, NULL);
             INSERT INTO events (time_ms, kind, sandbox) VALUES (1, 'sandbox.created', 'sb-old');",
        )
        .unwrap();
    }
    let s = Store::open(&db).unwrap();
    let t = s.template(HOST_TENANT, "base").unwrap().unwrap();
    assert_eq!((t.api.tenant.as_str(), t.api.build_ms), ("*", Some(5)));
    let r = s.sandbox(&TenantScope::All, "sb-old").unwrap().unwrap();
    assert_eq!((r.tenant.as_str(), r.pid), ("*", Some(7)));
    assert_eq!((r.idle_timeout_s, r.wakes), (None, 0));
    // A tenant does not see the host's sandboxes or events.
    let acme = TenantScope::parse("acme").unwrap();
    assert!(s.sandbox(&acme, "sb-old").unwrap().is_none());
    assert!(s.events_since(&acme, 0, 10).unwrap().is_empty());
    assert_eq!(s.events_since(&TenantScope::All, 0, 10).unwrap().len(), 1);
    drop(s);
    // Opening again is a no-op; a newer schema is refused.
    drop(Store::open(&db).unwrap());
    Connection::open(&db)
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    assert!(matches!(
        Store::open(&db),
        Err(StoreError::TooNew { found: 99, .. })
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_schema_1_database_gains_the_hibernation_columns() {
    let dir = std::env::temp_dir().join(format!("tartarusd-mig1-{}", crate::fsutil::random_hex(4)));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("state.db");
    {
        // Schema 1 as the previous daemon made it: its sandboxes table, then version 1.
        let c = Connection::open(&db).unwrap();
        c.execute_batch(
            "CREATE TABLE sandboxes (id TEXT PRIMARY KEY, tenant TEXT NOT NULL DEFAULT '*',
                state TEXT NOT NULL, template TEXT NOT NULL, template_dir TEXT NOT NULL,
                snapshot TEXT, pid INTEGER, pid_start INTEGER, uid INTEGER NOT NULL,
                vcpus INTEGER NOT NULL, memory_mib INTEGER NOT NULL, network TEXT NOT NULL,
                timeout_s INTEGER, labels TEXT NOT NULL, created_ms INTEGER NOT NULL,
                create_ms REAL, restore_ms REAL, reason TEXT, net_index INTEGER);
             INSERT INTO sandboxes VALUES ('sb-v1', 'acme', 'running', 'base', '/t', NULL, 7, 8,
                900000, 1, 128, 'none', NULL, '{}', 1, 1.0, 1.0, NULL, NULL);
             PRAGMA user_version = 1;",
        )
        .unwrap();
    }
    let s = Store::open(&db).unwrap();
    let r = s.sandbox(&TenantScope::All, "sb-v1").unwrap().unwrap();
    assert_eq!((r.tenant.as_str(), r.pid, r.wakes), ("acme", Some(7), 0));
    s.set_sandbox_hibernated("sb-v1", 1, 2).unwrap();
    let r = s.sandbox(&TenantScope::All, "sb-v1").unwrap().unwrap();
    assert_eq!(r.state, SandboxState::Hibernated);
    let v: i64 = s
        .with(|c| Ok(c.query_row("PRAGMA user_version", [], |r| r.get(0))?))
        .unwrap();
    assert_eq!(v, schema::VERSION);
    std::fs::remove_dir_all(&dir).unwrap();
}
