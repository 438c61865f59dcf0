//! The PID 1 reaper ([`Reaper::global`]) in a process of its own (this test binary, made a
//! child subreaper so that orphans come to it as they come to PID 1).

use std::process::Command;
use std::time::{Duration, Instant};

use guest_init::reaper::Reaper;

/// Context switches of this process's thread named `name`.
fn switches(name: &str) -> u64 {
    for t in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let status = std::fs::read_to_string(t.path().join("status")).unwrap();
        return status
            .lines()
            .filter(|l| l.contains("ctxt_switches:"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum();
    }
    panic!("no thread named {name}");
}

/// Zombie children of this process.
fn zombies() -> Vec<String> {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| {
            // pid (comm) state ppid ...
            let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
            let f: Vec<&str> = rest.split_whitespace().collect();
            f.len() > 1 && f[0] == "Z" && f[1] == me
        })
        .collect()
}

fn run(reaper: &Reaper, script: &str) -> Option<i32> {
    let (_child, rx) = reaper
        .spawn(|| Command::new("/bin/sh").arg("-c").arg(script).spawn())
        .unwrap();
    rx.recv_timeout(Duration::from_secs(10))
        .expect("no exit status within 10 s")
        .code()
}

#[test]
fn the_reaper_sleeps_without_children_and_wakes_for_a_spawn() {
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes an integer flag and touches no memory.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(r, 0);
    let reaper = Reaper::global().unwrap();
    for round in 0..3 {
        // Idle, no children: the reaper thread does not wake up.
        std::thread::sleep(Duration::from_millis(200));
        let before = switches("reaper");
        std::thread::sleep(Duration::from_secs(1));
        let woke = switches("reaper") - before;
        assert!(
            woke <= 1,
            "round {round}: the idle reaper woke {woke} times in 1 s"
        );
        // A spawn wakes it: the status arrives at once.
        let t0 = Instant::now();
        assert_eq!(
            run(&reaper, &format!("exit {}", round + 3)),
            Some(round + 3)
        );
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    }
    // An orphan (the child's own child, left behind) is reaped too.
    assert_eq!(run(&reaper, "sleep 0.3 & exit 0"), Some(0));
    std::thread::sleep(Duration::from_millis(800));
    assert!(zombies().is_empty(), "zombies left: {:?}", zombies());
}
