//! Istio resources, typed as Istio's API defines them (field names, nesting, enums).
//!
//! Unknown fields are not rejected by serde here: the loader records every ignored field and
//! warns about it by name, so a field that is valid upstream but not implemented is never a
//! silent no-op. Fields we read but do not act on yet are typed as [`Unimplemented`] so the
//! validator can name them too.

pub mod networking;
pub mod security;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `selector` / `workloadSelector`: `matchLabels` over pod labels.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

impl WorkloadSelector {
    /// True when every selector label is present with the same value.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k).is_some_and(|lv| lv == v))
    }
}

/// A field Istio accepts that this mesh parses but does not act on yet. Kept as raw YAML so
/// `/config_dump` still shows it; the validator warns, naming the field.
pub type Unimplemented = serde_yaml::Value;
