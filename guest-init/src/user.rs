//! `user` of an exec, Docker's way: `name`, `uid`, `name:group`, `uid:gid`, looked up in the
//! guest's /etc/passwd and /etc/group (the sandbox's own view), with supplementary groups.

use std::path::Path;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UserError {
    #[error("user '{0}': no such user in /etc/passwd")]
    NoUser(String),
    #[error("group '{0}': no such group in /etc/group")]
    NoGroup(String),
}

/// Who a process runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub name: Option<String>,
    pub home: Option<String>,
}

struct Passwd {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

fn passwd(text: &str) -> Vec<Passwd> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 6).then_some(())?;
            Some(Passwd {
                name: f[0].into(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f[5].into(),
            })
        })
        .collect()
}

/// (name, gid, members)
fn groups(text: &str) -> Vec<(String, u32, Vec<String>)> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 3).then_some(())?;
            let members = f
                .get(3)
                .map(|m| {
                    m.split(',')
                        .filter(|s| !s.is_empty())
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default();
            Some((f[0].into(), f[2].parse().ok()?, members))
        })
        .collect()
}

/// Resolves `spec` against the text of /etc/passwd and /etc/group.
pub fn resolve_with(
    spec: &str,
    passwd_text: &str,
    group_text: &str,
) -> Result<Identity, UserError> {
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let users = passwd(passwd_text);
    let grps = groups(group_text);
    let entry = match u.parse::<u32>() {
        Ok(uid) => users.iter().find(|p| p.uid == uid),
        Err(_) => Some(
            users
                .iter()
                .find(|p| p.name == u)
                .ok_or_else(|| UserError::NoUser(u.into()))?,
        ),
    };
    let uid = match entry {
        Some(p) => p.uid,
        None => u.parse().map_err(|_| UserError::NoUser(u.into()))?,
    };
    let gid = match g {
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => grps
                .iter()
                .find(|(n, _, _)| n == g)
                .map(|(_, gid, _)| *gid)
                .ok_or_else(|| UserError::NoGroup(g.into()))?,
        },
        // A uid without an entry runs with gid 0, as Docker does.
        None => entry.map(|p| p.gid).unwrap_or(0),
    };
    let mut extra = vec![gid];
    if let Some(p) = entry {
        for (_, id, members) in &grps {
            if members.iter().any(|m| m == &p.name) && !extra.contains(id) {
                extra.push(*id);
            }
        }
    }
    Ok(Identity {
        uid,
        gid,
        groups: extra,
        name: entry.map(|p| p.name.clone()),
        home: entry.map(|p| p.home.clone()),
    })
}

/// Resolves `spec` against the guest's own files.
pub fn resolve(spec: &str) -> Result<Identity, UserError> {
    let read = |p: &str| std::fs::read_to_string(Path::new(p)).unwrap_or_default();
    resolve_with(spec, &read("/etc/passwd"), &read("/etc/group"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\nbad line\n";
    const G: &str = "root:x:0:\napp:x:1000:\nstaff:x:50:app,other\n";

    #[test]
    fn users_resolve_as_docker_does() {
        let app = resolve_with("app", P, G).unwrap();
        assert_eq!(
            (app.uid, app.gid, app.groups.clone()),
            (1000, 1000, vec![1000, 50])
        );
        assert_eq!(app.home.as_deref(), Some("/home/app"));
        assert_eq!(resolve_with("1000", P, G).unwrap().gid, 1000);
        let anon = resolve_with("4242", P, G).unwrap();
        assert_eq!((anon.uid, anon.gid, anon.name), (4242, 0, None));
        assert_eq!(resolve_with("app:staff", P, G).unwrap().gid, 50);
        assert_eq!(resolve_with("4242:77", P, G).unwrap().gid, 77);
        assert_eq!(
            resolve_with("nobody", P, G),
            Err(UserError::NoUser("nobody".into()))
        );
        assert_eq!(
            resolve_with("app:wheel", P, G),
            Err(UserError::NoGroup("wheel".into()))
        );
    }
}
