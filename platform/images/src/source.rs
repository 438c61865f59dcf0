//! Where an image comes from, as the user writes it:
//! - `REF` or `docker://REF`: a registry (`host[:port]/repo[:tag][@sha256:...]`; no host means
//!   Docker Hub, no tag means `latest`, as `docker pull` reads it);
//! - `oci:DIR[:TAG]`: an OCI image layout directory (`skopeo copy ... oci:DIR:TAG` makes one);
//! - `docker-archive:FILE[:NAME:TAG]`: a `docker save` tarball.

use std::path::{Path, PathBuf};

use oci_client::Reference;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("'{input}' is not an image reference: {reason}")]
    BadReference { input: String, reason: String },
    #[error("{0}: no such file or directory")]
    Missing(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Registry(Reference),
    OciLayout { dir: PathBuf, tag: Option<String> },
    DockerArchive { file: PathBuf, name: Option<String> },
}

impl Source {
    pub fn parse(input: &str) -> Result<Source, SourceError> {
        let input = input.trim();
        if let Some(rest) = input.strip_prefix("oci:") {
            // A tag is the part after the last ':' when what is before it is a directory.
            if let Some((dir, tag)) = rest.rsplit_once(':') {
                if !tag.contains('/') && Path::new(dir).is_dir() {
                    return Ok(Source::OciLayout {
                        dir: dir.into(),
                        tag: Some(tag.into()),
                    });
                }
            }
            if !Path::new(rest).is_dir() {
                return Err(SourceError::Missing(rest.into()));
            }
            return Ok(Source::OciLayout {
                dir: rest.into(),
                tag: None,
            });
        }
        if let Some(rest) = input.strip_prefix("docker-archive:") {
            if Path::new(rest).is_file() {
                return Ok(Source::DockerArchive {
                    file: rest.into(),
                    name: None,
                });
            }
            for (i, _) in rest.match_indices(':') {
                if Path::new(&rest[..i]).is_file() {
                    let name = normalize_name(&rest[i + 1..]).ok_or_else(|| {
                        SourceError::BadReference {
                            input: rest[i + 1..].into(),
                            reason: "not a NAME:TAG".into(),
                        }
                    })?;
                    return Ok(Source::DockerArchive {
                        file: rest[..i].into(),
                        name: Some(name),
                    });
                }
            }
            return Err(SourceError::Missing(rest.into()));
        }
        let r = input.strip_prefix("docker://").unwrap_or(input);
        r.parse::<Reference>()
            .map(Source::Registry)
            .map_err(|e| SourceError::BadReference {
                input: input.into(),
                reason: e.to_string(),
            })
    }

    /// How the source is shown and recorded.
    pub fn describe(&self) -> String {
        match self {
            Source::Registry(r) => r.whole(),
            Source::OciLayout { dir, tag } => match tag {
                Some(t) => format!("oci:{}:{t}", dir.display()),
                None => format!("oci:{}", dir.display()),
            },
            Source::DockerArchive { file, .. } => format!("docker-archive:{}", file.display()),
        }
    }
}

/// The canonical name of an image reference (`busybox` → `docker.io/library/busybox:latest`,
/// `127.0.0.1:5000/x` → `127.0.0.1:5000/x:latest`), or None if it is not one. A reference by
/// digest only has no name.
pub fn normalize_name(s: &str) -> Option<String> {
    let r: Reference = s.strip_prefix("docker://").unwrap_or(s).parse().ok()?;
    let tag = r.tag().unwrap_or("latest");
    if r.digest().is_some() && r.tag().is_none() {
        return None;
    }
    Some(format!("{}/{}:{tag}", r.registry(), r.repository()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_as_docker_does() {
        assert_eq!(
            normalize_name("busybox").as_deref(),
            Some("docker.io/library/busybox:latest")
        );
        assert_eq!(
            normalize_name("127.0.0.1:5000/edge").as_deref(),
            Some("127.0.0.1:5000/edge:latest")
        );
        assert_eq!(
            normalize_name("docker://localhost:5000/a/b:v1").as_deref(),
            Some("localhost:5000/a/b:v1")
        );
        assert!(normalize_name("repo/UPPER").is_none() && normalize_name("a b").is_none());
        let Source::Registry(r) = Source::parse("127.0.0.1:5000/x:t").unwrap() else {
            panic!()
        };
        assert_eq!(
            (r.registry(), r.repository(), r.tag()),
            ("127.0.0.1:5000", "x", Some("t"))
        );
        assert!(matches!(
            Source::parse("bad ref!"),
            Err(SourceError::BadReference { .. })
        ));
        assert!(matches!(
            Source::parse("oci:/nonexistent/dir"),
            Err(SourceError::Missing(_))
        ));
        let tmp = std::env::temp_dir();
        let s = Source::parse(&format!("oci:{}:v2", tmp.display())).unwrap();
        assert_eq!(
            s,
            Source::OciLayout {
                dir: tmp.clone(),
                tag: Some("v2".into())
            }
        );
        assert!(matches!(
            Source::parse("docker-archive:/nonexistent.tar"),
            Err(SourceError::Missing(_))
        ));
    }
}
