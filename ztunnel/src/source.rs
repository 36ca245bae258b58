//! Local adapter for the YAML directory source: reads every `*.yaml`/`*.yml` under a
//! directory into `common` resources and polls for changes.
//!
//! Stop-gap until `common` publishes its directory source (with validation, file/field error
//! reporting and `notify`-based hot reload); the app only needs "a list of resources, again
//! whenever it changes", so swapping this out touches [`crate::app`] only.

use common::resource::Resource;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Errors reading the directory.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: document {doc}: {source}")]
    Yaml {
        path: PathBuf,
        doc: usize,
        #[source]
        source: serde_yaml::Error,
    },
}

fn files(dir: &Path) -> Result<Vec<PathBuf>, SourceError> {
    let rd = std::fs::read_dir(dir).map_err(|source| SourceError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut v: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    v.sort();
    Ok(v)
}

/// A fingerprint of the directory (names + mtimes + sizes) to detect changes.
pub fn fingerprint(dir: &Path) -> Vec<(PathBuf, SystemTime, u64)> {
    files(dir)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| {
            let m = std::fs::metadata(&p).ok()?;
            Some((p, m.modified().ok()?, m.len()))
        })
        .collect()
}

/// Loads all resources; documents of kinds the mesh does not read are skipped.
pub fn load_dir(dir: &Path) -> Result<Vec<Resource>, SourceError> {
    let mut out = vec![];
    for path in files(dir)? {
        let text = std::fs::read_to_string(&path).map_err(|source| SourceError::Io {
            path: path.clone(),
            source,
        })?;
        for (i, doc) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let v = serde_yaml::Value::deserialize(doc).map_err(|source| SourceError::Yaml {
                path: path.clone(),
                doc: i,
                source,
            })?;
            if v.is_null() {
                continue;
            }
            let kind = v
                .get("kind")
                .and_then(|k| k.as_str())
                .unwrap_or_default()
                .to_string();
            let api = v
                .get("apiVersion")
                .and_then(|k| k.as_str())
                .unwrap_or_default()
                .to_string();
            if common::resource::Kind::from_api(&api, &kind).is_none() {
                continue;
            }
            let mut v = v;
            if kind == "Gateway" && api.starts_with("networking.istio.io") {
                // The resource enum tags the Istio Gateway apart from the Gateway API one.
                continue;
            }
            if let Some(m) = v.as_mapping_mut() {
                m.remove("apiVersion");
            }
            match Resource::deserialize(v) {
                Ok(r) => out.push(r),
                Err(source) => {
                    return Err(SourceError::Yaml {
                        path: path.clone(),
                        doc: i,
                        source,
                    })
                }
            }
        }
    }
    Ok(out)
}
