//! The OCI (and Docker schema 2) documents an image is made of: manifests, indexes (manifest
//! lists) and image configs, read leniently (unknown fields ignored) and checked strictly
//! (digests, media types, the layer count against the config's `diff_ids`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::blobs::Digest;
use crate::unpack::Compression;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// What a pull asks a registry for.
pub const ACCEPTED: &[&str] = &[OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST];

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("the manifest is not valid JSON: {0}")]
    Json(#[source] serde_json::Error),
    #[error("the image config is not valid JSON: {0}")]
    ConfigJson(#[source] serde_json::Error),
    #[error("unsupported manifest type '{0}' (OCI image manifests and indexes and Docker schema 2 are supported)")]
    MediaType(String),
    #[error("layer {digest} has media type '{media_type}', which is not an image layer (tar, tar+gzip or tar+zstd)")]
    LayerType { digest: Digest, media_type: String },
    #[error("no linux/amd64 image in the index (it has: {0})")]
    NoPlatform(String),
    #[error("the image is for {os}/{arch}, not linux/amd64")]
    WrongPlatform { os: String, arch: String },
    #[error("the manifest lists {layers} layers but the config's rootfs has {diff_ids} diff_ids")]
    LayerCount { layers: usize, diff_ids: usize },
    #[error("the manifest has no layers")]
    NoLayers,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: Digest,
    #[serde(default)]
    pub size: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct IndexEntry {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: Digest,
    #[serde(default)]
    pub platform: Option<Platform>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    #[serde(rename = "mediaType", default)]
    pub media_type: Option<String>,
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Index {
    pub manifests: Vec<IndexEntry>,
}

/// A document fetched by a manifest reference.
#[derive(Debug, Clone)]
pub enum Document {
    Manifest(Manifest),
    Index(Index),
}

#[derive(Deserialize)]
struct Probe {
    #[serde(rename = "schemaVersion", default)]
    schema_version: Option<i64>,
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<serde_json::Value>,
}

/// Parses a manifest or an index; `content_type` is the registry's Content-Type, if any.
pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<Document, ManifestError> {
    let probe: Probe = serde_json::from_slice(bytes).map_err(ManifestError::Json)?;
    let mt = probe
        .media_type
        .clone()
        .or_else(|| content_type.map(str::to_string))
        .unwrap_or_default();
    if probe.schema_version == Some(1) || mt.contains("manifest.v1+") && mt.contains("docker") {
        return Err(ManifestError::MediaType(if mt.is_empty() {
            "Docker schema 1".into()
        } else {
            mt
        }));
    }
    let is_index = match mt.as_str() {
        OCI_INDEX | DOCKER_LIST => true,
        OCI_MANIFEST | DOCKER_MANIFEST => false,
        "" | "application/json" | "application/octet-stream" => probe.manifests.is_some(),
        other => return Err(ManifestError::MediaType(other.into())),
    };
    if is_index {
        Ok(Document::Index(
            serde_json::from_slice(bytes).map_err(ManifestError::Json)?,
        ))
    } else {
        let m: Manifest = serde_json::from_slice(bytes).map_err(ManifestError::Json)?;
        if m.layers.is_empty() {
            return Err(ManifestError::NoLayers);
        }
        for l in &m.layers {
            compression(&l.media_type).map_err(|NotALayer| ManifestError::LayerType {
                digest: l.digest.clone(),
                media_type: l.media_type.clone(),
            })?;
        }
        Ok(Document::Manifest(m))
    }
}

/// The linux/amd64 entry of an index.
pub fn pick_amd64(index: &Index) -> Result<&IndexEntry, ManifestError> {
    index
        .manifests
        .iter()
        .find(|e| {
            e.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
        })
        .ok_or_else(|| {
            let have: Vec<String> = index
                .manifests
                .iter()
                .map(|e| match &e.platform {
                    Some(p) => format!("{}/{}", p.os, p.architecture),
                    None => "no platform".into(),
                })
                .collect();
            ManifestError::NoPlatform(if have.is_empty() {
                "nothing".into()
            } else {
                have.join(", ")
            })
        })
}

/// A layer media type's compression (`Err` for anything that is not a layer).
/// Returned for a media type that is not an image layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotALayer;

pub fn compression(media_type: &str) -> Result<Option<Compression>, NotALayer> {
    let mt = media_type.trim();
    if mt.is_empty() {
        return Ok(None);
    }
    let base = mt
        .strip_prefix("application/vnd.oci.image.layer.nondistributable.v1.")
        .or_else(|| mt.strip_prefix("application/vnd.oci.image.layer.v1."));
    if let Some(rest) = base {
        return match rest {
            "tar" => Ok(Some(Compression::None)),
            "tar+gzip" => Ok(Some(Compression::Gzip)),
            "tar+zstd" => Ok(Some(Compression::Zstd)),
            _ => Err(NotALayer),
        };
    }
    match mt {
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => {
            Ok(Some(Compression::Gzip))
        }
        "application/vnd.docker.image.rootfs.diff.tar" => Ok(Some(Compression::None)),
        "application/vnd.docker.image.rootfs.diff.tar.zstd" => Ok(Some(Compression::Zstd)),
        _ => Err(NotALayer),
    }
}

/// What `docker run` takes from an image config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunConfig {
    #[serde(default)]
    pub entrypoint: Vec<String>,
    #[serde(default)]
    pub cmd: Vec<String>,
    /// `KEY=value` strings, in order.
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub working_dir: String,
    #[serde(default)]
    pub user: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub exposed_ports: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct RawRunConfig {
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
}

#[derive(Deserialize)]
struct RawRootfs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

#[derive(Deserialize)]
struct RawConfig {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
    #[serde(default)]
    config: Option<RawRunConfig>,
    #[serde(default)]
    rootfs: Option<RawRootfs>,
    #[serde(default)]
    created: Option<String>,
}

/// The parts of an image config we use.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    pub architecture: String,
    pub os: String,
    pub created: Option<String>,
    pub diff_ids: Vec<String>,
    pub run: RunConfig,
}

/// Parses an image config and checks it against the manifest that names it.
pub fn parse_config(bytes: &[u8], manifest: &Manifest) -> Result<ImageConfig, ManifestError> {
    let raw: RawConfig = serde_json::from_slice(bytes).map_err(ManifestError::ConfigJson)?;
    if raw.os != "linux" || raw.architecture != "amd64" {
        return Err(ManifestError::WrongPlatform {
            os: raw.os,
            arch: raw.architecture,
        });
    }
    let diff_ids = raw.rootfs.map(|r| r.diff_ids).unwrap_or_default();
    if diff_ids.len() != manifest.layers.len() {
        return Err(ManifestError::LayerCount {
            layers: manifest.layers.len(),
            diff_ids: diff_ids.len(),
        });
    }
    let c = raw.config.unwrap_or_default();
    Ok(ImageConfig {
        architecture: raw.architecture,
        os: raw.os,
        created: raw.created,
        diff_ids,
        run: RunConfig {
            entrypoint: c.entrypoint.unwrap_or_default(),
            cmd: c.cmd.unwrap_or_default(),
            env: c.env.unwrap_or_default(),
            working_dir: c.working_dir.unwrap_or_default(),
            user: c.user.unwrap_or_default(),
            labels: c.labels.unwrap_or_default(),
            exposed_ports: c.exposed_ports.unwrap_or_default().into_keys().collect(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn manifests_and_indexes_are_told_apart() {
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"x","digest":"{}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+zstd","digest":"{}","size":3}}],"extra":1}}"#,
            d('a'),
            d('b')
        );
        let Document::Manifest(m) = parse(m.as_bytes(), None).unwrap() else {
            panic!()
        };
        assert_eq!(
            compression(&m.layers[0].media_type),
            Ok(Some(Compression::Zstd))
        );
        let i = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"digest":"{}","platform":{{"os":"linux","architecture":"arm64"}}}},{{"digest":"{}","platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#,
            d('c'),
            d('e')
        );
        let Document::Index(i) = parse(i.as_bytes(), Some(DOCKER_LIST)).unwrap() else {
            panic!()
        };
        assert_eq!(pick_amd64(&i).unwrap().digest.as_str(), d('e'));
        let arm = Index {
            manifests: vec![i.manifests[0].clone()],
        };
        let e = pick_amd64(&arm).unwrap_err().to_string();
        assert!(e.contains("linux/arm64"), "{e}");
    }

    #[test]
    fn bad_documents_are_named() {
        assert!(matches!(parse(b"{", None), Err(ManifestError::Json(_))));
        let helm = format!(
            r#"{{"schemaVersion":2,"config":{{"digest":"{}"}},"layers":[{{"mediaType":"application/vnd.cncf.helm.chart.content.v1.tar+gzip","digest":"{}"}}]}}"#,
            d('a'),
            d('b')
        );
        let e = parse(helm.as_bytes(), Some(OCI_MANIFEST))
            .unwrap_err()
            .to_string();
        assert!(e.contains("helm") && e.contains(&d('b')), "{e}");
        let v1 = br#"{"schemaVersion":1,"fsLayers":[]}"#;
        assert!(matches!(parse(v1, None), Err(ManifestError::MediaType(_))));
        let m = Manifest {
            media_type: None,
            config: Descriptor {
                media_type: String::new(),
                digest: d('a').parse().unwrap(),
                size: 0,
            },
            layers: vec![],
        };
        let arm = br#"{"architecture":"arm64","os":"linux","rootfs":{"diff_ids":[]}}"#;
        assert!(matches!(
            parse_config(arm, &m),
            Err(ManifestError::WrongPlatform { .. })
        ));
        let ok = br#"{"architecture":"amd64","os":"linux","rootfs":{"diff_ids":[]},"config":{"Entrypoint":["/bin/sh","-c"],"Cmd":null,"Env":["A=1"],"WorkingDir":"/w","User":"1000:1000","ExposedPorts":{"80/tcp":{}}}}"#;
        let c = parse_config(ok, &m).unwrap();
        assert_eq!(c.run.entrypoint, ["/bin/sh", "-c"]);
        assert!(c.run.cmd.is_empty());
        assert_eq!(
            (c.run.working_dir.as_str(), c.run.user.as_str()),
            ("/w", "1000:1000")
        );
        assert_eq!(c.run.exposed_ports, ["80/tcp"]);
    }
}
