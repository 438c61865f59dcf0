//! Recovery after a daemon (re)start: VMMs that still run and answer are taken over again,
//! hibernations cut short are finished, the rest is marked failed, and jails and network
//! namespaces that nothing refers to are removed.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tartarus_auth::TenantScope;
use tartarus_types::SandboxState;

use crate::daemon::{Live, Shared};
use crate::fsutil;
use crate::sandbox::{is_live, kill_jail_vmm, teardown, watch};
use crate::vmm;

/// After a (re)start: take over VMMs that still run and answer, mark the rest failed, and
/// remove jails nothing refers to.
pub async fn recover(d: &Shared) {
    let rows = d.store.sandboxes(&TenantScope::All).unwrap_or_default();
    let mut keep = HashSet::new();
    for row in rows.iter().filter(|r| is_live(r.state)) {
        let id = &row.id;
        let alive = match (row.pid, row.pid_start) {
            (Some(pid), Some(start)) => vmm::same_process(pid, start),
            _ => false,
        };
        let answers = if !alive {
            None
        } else {
            vmm::api(
                &d.cfg.jail(id).api_sock(),
                "GET",
                "/",
                None,
                Duration::from_secs(5),
            )
            .await
            .ok()
            .and_then(|v| v.get("state").and_then(|s| s.as_str()).map(str::to_string))
        };
        // A create or wake cut short after its snapshot loaded has a VMM that runs the guest:
        // it is taken over too (one that had not loaded yet answers "Not started").
        let restored = |s: &str| s == "Running" || s == "Paused";
        match (row.state, answers) {
            (SandboxState::Running | SandboxState::Paused, Some(vm_state))
            | (SandboxState::Creating, Some(vm_state))
                if row.state != SandboxState::Creating || restored(&vm_state) =>
            {
                let state = if vm_state == "Paused" {
                    SandboxState::Paused
                } else {
                    SandboxState::Running
                };
                if state != row.state {
                    let _ = d.store.set_sandbox_state(id, state, None);
                }
                if row.state == SandboxState::Creating {
                    // A wake's leftovers (its snapshot links): the VMM runs from the jail.
                    let _ = fsutil::remove_tree(&crate::hibernate::hib_dir(d, id));
                }
                let live = Arc::new(Live::default());
                d.set_live(id, live.clone());
                watch(d, id, live);
                d.metrics.readopted.inc();
                keep.insert(id.clone());
                tracing::info!(
                    "sandbox {id}: re-adopted the running VMM (pid {:?})",
                    row.pid
                );
            }
            (_, None) if crate::hibernate::complete(&crate::hibernate::hib_dir(d, id)) => {
                // A hibernation (or the start of a wake) cut short: the snapshot is whole
                // and the guest has not run since.
                teardown(d, id).await;
                let bytes = fsutil::allocated_bytes(&crate::hibernate::hib_dir(d, id));
                let _ = d.store.set_sandbox_hibernated(id, bytes, 0);
                tracing::info!("sandbox {id}: hibernated (finished after a daemon restart)");
            }
            (state, _) => {
                let reason = if state == SandboxState::Creating {
                    "The daemon stopped while the sandbox was being created".to_string()
                } else if alive {
                    "The VMM stopped answering while the daemon was down".to_string()
                } else {
                    "The VMM exited while the daemon was down".to_string()
                };
                tracing::info!("sandbox {id}: {reason}");
                d.metrics.fail("lost");
                teardown(d, id).await;
                let _ = fsutil::remove_tree(&crate::hibernate::hib_dir(d, id));
                d.set_state(id, SandboxState::Failed, Some(&reason));
            }
        }
    }
    // Jails of nothing we know (a build or create cut short by SIGKILL before its row).
    let base = d.cfg.launcher.jail_dir.join(vmm::EXEC_NAME);
    let mut orphan_jails = Vec::new();
    if let Ok(rd) = std::fs::read_dir(&base) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if keep.contains(&name) {
                continue;
            }
            let jail = d.cfg.jail(&name);
            kill_jail_vmm(&jail).await;
            tracing::info!("removing the orphaned jail {name}");
            orphan_jails.push(name.clone());
            let _ = vmm::cleanup_jail(&jail, d.cfg.launcher.cgroup_version);
        }
    }
    // Network namespaces of this daemon's sandboxes that are gone (namespaces are host-wide:
    // only ids from this daemon's own store or jail directory are touched).
    let ours: HashSet<String> = d
        .store
        .sandboxes(&TenantScope::All)
        .unwrap_or_default()
        .into_iter()
        .map(|r| r.id)
        .chain(orphan_jails)
        .collect();
    // Hibernated sandboxes keep theirs for their wake.
    let hibernated: HashSet<String> = d
        .store
        .sandboxes(&TenantScope::All)
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.state == SandboxState::Hibernated)
        .map(|r| r.id)
        .collect();
    for id in crate::netns::existing() {
        if ours.contains(&id) && !keep.contains(&id) && !hibernated.contains(&id) {
            tracing::info!("removing the orphaned network namespace of {id}");
            crate::netns::remove(&id);
        }
    }
    d.refresh_gauges();
}
