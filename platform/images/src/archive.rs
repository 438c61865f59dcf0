//! Images from local files: an OCI image layout directory (`oci-layout`, `index.json`,
//! `blobs/sha256/`) and a `docker save` tarball (`manifest.json` naming a config and layer
//! tars). Every blob is copied into the cache through its digest check; the archive is hostile
//! input like any registry answer.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::blobs::Digest;
use crate::manifest::{self, Descriptor, Document, IndexEntry, ManifestError};
use crate::pull::{now_s, PullError};
use crate::source;
use crate::store::{ImageRecord, ImageStore};

const REF_NAME: &str = "org.opencontainers.image.ref.name";

fn arch_err(what: impl Into<String>, detail: impl ToString) -> PullError {
    PullError::Archive {
        what: what.into(),
        detail: detail.to_string(),
    }
}

/// Copies `src` into the cache as `d` (checked).
fn import_file(
    store: &ImageStore,
    src: &Path,
    d: &Digest,
    size: Option<u64>,
) -> Result<(), PullError> {
    if store.blobs.has(d) {
        return Ok(());
    }
    let tmp = store.blobs.temp_path("import");
    let copy = (|| -> io::Result<()> {
        let mut from = File::open(src)?;
        let mut to = File::create(&tmp)?;
        io::copy(&mut from, &mut to)?;
        to.sync_all()
    })();
    if let Err(e) = copy {
        let _ = std::fs::remove_file(&tmp);
        return Err(arch_err(src.display().to_string(), e));
    }
    store.blobs.commit(&tmp, d, size)?;
    Ok(())
}

/// Imports the image `tag` (or the only one) of the OCI layout at `dir`.
pub fn oci_layout(
    store: &ImageStore,
    dir: &Path,
    tag: Option<&str>,
    max: Option<u64>,
) -> Result<ImageRecord, PullError> {
    let what = format!("oci:{}", dir.display());
    let layout: serde_json::Value = std::fs::read(dir.join("oci-layout"))
        .map_err(|e| arch_err(&what, format!("not an OCI layout (oci-layout: {e})")))
        .and_then(|b| {
            serde_json::from_slice(&b).map_err(|e| arch_err(&what, format!("oci-layout: {e}")))
        })?;
    if layout.get("imageLayoutVersion").and_then(|v| v.as_str()) != Some("1.0.0") {
        return Err(arch_err(&what, "unsupported imageLayoutVersion (1.0.0 is)"));
    }
    let blob = |d: &Digest| dir.join("blobs/sha256").join(d.hex());
    let read_checked = |d: &Digest| -> Result<Vec<u8>, PullError> {
        let b = std::fs::read(blob(d)).map_err(|e| arch_err(&what, format!("blob {d}: {e}")))?;
        let actual = Digest::of(&b);
        if &actual != d {
            return Err(crate::blobs::BlobError::Mismatch {
                expected: d.clone(),
                actual,
            }
            .into());
        }
        Ok(b)
    };
    #[derive(Deserialize)]
    struct Idx {
        manifests: Vec<IndexEntry>,
    }
    let idx: Idx = std::fs::read(dir.join("index.json"))
        .map_err(|e| arch_err(&what, format!("index.json: {e}")))
        .and_then(|b| {
            serde_json::from_slice(&b).map_err(|e| arch_err(&what, format!("index.json: {e}")))
        })?;
    let entry = match tag {
        Some(t) => idx
            .manifests
            .iter()
            .find(|e| e.annotations.get(REF_NAME).map(String::as_str) == Some(t))
            .ok_or_else(|| arch_err(&what, format!("no image tagged '{t}' in index.json")))?,
        None if idx.manifests.len() == 1 => &idx.manifests[0],
        None => {
            return Err(arch_err(
                &what,
                format!(
                    "{} images in index.json; name one as oci:DIR:TAG",
                    idx.manifests.len()
                ),
            ))
        }
    };
    let image = match tag {
        Some(t) => format!("{what}:{t}"),
        None => what.clone(),
    };
    let merr = |source: ManifestError| PullError::Manifest {
        image: image.clone(),
        source,
    };
    let mut bytes = read_checked(&entry.digest)?;
    let m = loop {
        match manifest::parse(&bytes, Some(&entry.media_type)).map_err(merr)? {
            Document::Manifest(m) => break m,
            Document::Index(i) => {
                let e = manifest::pick_amd64(&i).map_err(merr)?;
                bytes = read_checked(&e.digest)?;
            }
        }
    };
    let total: u64 = m.layers.iter().map(|l| l.size).sum::<u64>() + m.config.size;
    if let Some(limit) = max.filter(|l| total > *l) {
        return Err(PullError::TooLarge { size: total, limit });
    }
    let config_bytes = read_checked(&m.config.digest)?;
    let config = manifest::parse_config(&config_bytes, &m).map_err(merr)?;
    store.blobs.put(&config_bytes)?;
    for l in &m.layers {
        import_file(
            store,
            &blob(&l.digest),
            &l.digest,
            (l.size > 0).then_some(l.size),
        )?;
    }
    let id = store.blobs.put(&bytes)?;
    let name = entry
        .annotations
        .get(REF_NAME)
        .and_then(|n| {
            if n.contains('/') || n.contains(':') {
                source::normalize_name(n)
            } else {
                None
            }
        })
        .or_else(|| {
            let base = dir.file_name()?.to_string_lossy().to_lowercase();
            source::normalize_name(&format!("localhost/{base}:{}", tag.unwrap_or("latest")))
        });
    Ok(ImageRecord {
        id,
        names: name.into_iter().collect(),
        source: image,
        config_digest: m.config.digest.clone(),
        size: total + bytes.len() as u64,
        layers: m.layers,
        config,
        pulled_at: now_s(),
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SaveEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// A member name of the archive, made relative and free of `.`; None for anything that
/// would climb out (`..`, absolute).
fn clean(name: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in name.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            _ => return None,
        }
    }
    Some(out)
}

/// Imports the image of a `docker save` tarball (the first, or the one tagged `name`).
pub fn docker_archive(
    store: &ImageStore,
    file: &Path,
    name: Option<&str>,
    max: Option<u64>,
) -> Result<ImageRecord, PullError> {
    let what = format!("docker-archive:{}", file.display());
    let open = || -> Result<tar::Archive<File>, PullError> {
        Ok(tar::Archive::new(
            File::open(file).map_err(|e| arch_err(&what, e))?,
        ))
    };
    // Pass 1: manifest.json and the symlinks some docker versions use for shared layers.
    let mut links: HashMap<PathBuf, PathBuf> = HashMap::new();
    let mut manifest_json = None;
    let mut ar = open()?;
    for e in ar.entries().map_err(|e| arch_err(&what, e))? {
        let mut e = e.map_err(|e| arch_err(&what, e))?;
        let Some(p) = e.path().ok().and_then(|p| clean(&p)) else {
            continue;
        };
        if e.header().entry_type().is_symlink() {
            if let Some(t) = e.link_name().ok().flatten() {
                let parent = p.parent().unwrap_or(Path::new(""));
                // Resolve `..` lexically inside the archive.
                let mut r = PathBuf::new();
                for c in parent.join(&t).components() {
                    match c {
                        Component::Normal(x) => r.push(x),
                        Component::ParentDir => {
                            r.pop();
                        }
                        _ => {}
                    }
                }
                links.insert(p, r);
            }
        } else if p == Path::new("manifest.json") {
            let mut b = vec![];
            e.by_ref()
                .take(16 << 20)
                .read_to_end(&mut b)
                .map_err(|e| arch_err(&what, e))?;
            manifest_json = Some(b);
        }
    }
    let entries: Vec<SaveEntry> = serde_json::from_slice(
        &manifest_json
            .ok_or_else(|| arch_err(&what, "no manifest.json: not a docker save archive"))?,
    )
    .map_err(|e| arch_err(&what, format!("manifest.json: {e}")))?;
    let want = name.map(|n| source::normalize_name(n).unwrap_or_else(|| n.to_string()));
    let entry = match &want {
        Some(n) => entries
            .iter()
            .find(|e| {
                e.repo_tags
                    .iter()
                    .flatten()
                    .any(|t| source::normalize_name(t).as_deref() == Some(n.as_str()))
            })
            .ok_or_else(|| arch_err(&what, format!("no image tagged {n}")))?,
        None => entries
            .first()
            .ok_or_else(|| arch_err(&what, "manifest.json lists no image"))?,
    };
    let resolve = |s: &str| -> Option<PathBuf> {
        let mut p = clean(Path::new(s))?;
        for _ in 0..8 {
            match links.get(&p) {
                Some(t) => p = t.clone(),
                None => break,
            }
        }
        Some(p)
    };
    let config_path = resolve(&entry.config).ok_or_else(|| arch_err(&what, "bad config path"))?;
    let layer_paths: Vec<PathBuf> = entry
        .layers
        .iter()
        .map(|l| resolve(l).ok_or_else(|| arch_err(&what, format!("bad layer path {l}"))))
        .collect::<Result<_, _>>()?;
    // Pass 2: stream the wanted members into the cache, hashing as they go.
    let mut got: HashMap<PathBuf, (Digest, u64)> = HashMap::new();
    let mut total = 0u64;
    let mut ar = open()?;
    for e in ar.entries().map_err(|e| arch_err(&what, e))? {
        let mut e = e.map_err(|e| arch_err(&what, e))?;
        if !e.header().entry_type().is_file() {
            continue;
        }
        let Some(p) = e.path().ok().and_then(|p| clean(&p)) else {
            continue;
        };
        if p != config_path && !layer_paths.contains(&p) {
            continue;
        }
        total += e.size();
        if let Some(limit) = max.filter(|l| total > *l) {
            return Err(PullError::TooLarge { size: total, limit });
        }
        let tmp = store.blobs.temp_path("archive");
        let res = (|| -> io::Result<(Digest, u64)> {
            let mut out = File::create(&tmp)?;
            let mut h = Sha256::new();
            let mut buf = vec![0u8; 1 << 20];
            let mut n = 0u64;
            loop {
                let k = e.read(&mut buf)?;
                if k == 0 {
                    break;
                }
                h.update(&buf[..k]);
                out.write_all(&buf[..k])?;
                n += k as u64;
            }
            out.sync_all()?;
            Ok((Digest::from_hasher(h), n))
        })();
        let (d, n) = match res {
            Ok(v) => v,
            Err(err) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(arch_err(&what, format!("{}: {err}", p.display())));
            }
        };
        store.blobs.commit(&tmp, &d, None)?;
        got.insert(p, (d, n));
    }
    let find = |p: &PathBuf| {
        got.get(p)
            .cloned()
            .ok_or_else(|| arch_err(&what, format!("{} is missing", p.display())))
    };
    let (config_digest, config_size) = find(&config_path)?;
    let mut layers = vec![];
    for p in &layer_paths {
        let (d, n) = find(p)?;
        layers.push(Descriptor {
            media_type: "application/vnd.oci.image.layer.v1.tar".into(),
            digest: d,
            size: n,
        });
    }
    // The manifest docker save does not have, made the OCI way so the image has an id.
    let m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": manifest::OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config_size},
        "layers": layers,
    });
    let mbytes = serde_json::to_vec(&m).expect("serializes");
    let Document::Manifest(parsed) =
        manifest::parse(&mbytes, None).map_err(|source| PullError::Manifest {
            image: what.clone(),
            source,
        })?
    else {
        unreachable!("made as a manifest")
    };
    let config_bytes = store.blobs.read(&config_digest)?;
    let config =
        manifest::parse_config(&config_bytes, &parsed).map_err(|source| PullError::Manifest {
            image: what.clone(),
            source,
        })?;
    // Layers in a docker save are uncompressed: their digests are the config's diff_ids.
    for (l, id) in parsed.layers.iter().zip(&config.diff_ids) {
        if l.digest.as_str() != id {
            return Err(arch_err(
                &what,
                format!(
                    "layer {} does not match the config's diff_id {id}",
                    l.digest
                ),
            ));
        }
    }
    let id = store.blobs.put(&mbytes)?;
    let names = match want {
        Some(n) => vec![n],
        None => entry
            .repo_tags
            .iter()
            .flatten()
            .filter_map(|t| source::normalize_name(t))
            .collect(),
    };
    Ok(ImageRecord {
        id,
        names,
        source: what,
        config_digest,
        size: layers.iter().map(|l| l.size).sum::<u64>() + config_size + mbytes.len() as u64,
        layers: parsed.layers,
        config,
        pulled_at: now_s(),
    })
}
