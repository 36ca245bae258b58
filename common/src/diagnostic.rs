//! Findings about configuration: what the loader, the validator and the analyzer report, each
//! naming the file, line, resource and field it is about, with a stable code in the spirit of
//! `istioctl analyze` so users can search for it and scripts can match on it.

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

/// How bad a finding is. Errors keep a configuration from being served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Severity {
    Error,
    Warning,
    Info,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "Error",
            Severity::Warning => "Warning",
            Severity::Info => "Info",
        })
    }
}

/// A stable finding code and its name. Codes from `istioctl analyze` keep their numbers;
/// findings istioctl has no code for use the `IST09xx` range, which Istio does not use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Code {
    pub id: &'static str,
    pub name: &'static str,
}

/// The codes this mesh emits.
pub mod codes {
    use super::Code;

    /// A resource names a host, subset, waypoint or other object that does not exist.
    pub const REFERENCED_RESOURCE_NOT_FOUND: Code = Code {
        id: "IST0101",
        name: "ReferencedResourceNotFound",
    };
    /// Malformed YAML, wrong types, missing required fields, out-of-range values.
    pub const SCHEMA_VALIDATION_ERROR: Code = Code {
        id: "IST0106",
        name: "SchemaValidationError",
    };
    /// Two mesh VirtualServices for one host: Istio uses only one of them.
    pub const CONFLICTING_VIRTUAL_SERVICE_HOSTS: Code = Code {
        id: "IST0109",
        name: "ConflictingMeshGatewayVirtualServiceHosts",
    };
    /// A workload selector matches no pod.
    pub const NO_MATCHING_WORKLOADS: Code = Code {
        id: "IST0127",
        name: "NoMatchingWorkloadsFound",
    };
    /// A deprecated field that still works.
    pub const DEPRECATED: Code = Code {
        id: "IST0002",
        name: "Deprecated",
    };
    /// An object whose apiVersion/kind the mesh does not read; skipped.
    pub const UNKNOWN_KIND: Code = Code {
        id: "IST0901",
        name: "UnknownKind",
    };
    /// A field Istio's schema does not have (typo?) or this mesh does not know; ignored.
    pub const UNKNOWN_FIELD: Code = Code {
        id: "IST0902",
        name: "UnknownField",
    };
    /// A valid Istio field this mesh parses but does not act on yet.
    pub const NOT_IMPLEMENTED: Code = Code {
        id: "IST0903",
        name: "NotImplemented",
    };
    /// The same `kind namespace/name` defined twice.
    pub const DUPLICATE_RESOURCE: Code = Code {
        id: "IST0904",
        name: "DuplicateResource",
    };
    /// Route weights that do not add up to 100 (the loader warns and normalizes as current
    /// Istio does; the analyzer reports it as an error, as older Istio rejected it).
    pub const WEIGHTS_NOT_100: Code = Code {
        id: "IST0905",
        name: "RouteWeightsNotSumTo100",
    };
}

/// One finding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    pub code: Code,
    /// File the resource came from (relative to the loaded directory when loading one).
    pub file: Option<PathBuf>,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// `Kind namespace/name` of the resource, when known.
    pub resource: Option<String>,
    /// Field path such as `spec.http[0].route[1].weight`.
    pub path: Option<String>,
    pub message: String,
}

impl Diagnostic {
    pub fn new(severity: Severity, code: Code, message: impl Into<String>) -> Self {
        Diagnostic {
            severity,
            code,
            file: None,
            line: None,
            resource: None,
            path: None,
            message: message.into(),
        }
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    /// `Error [IST0101] (VirtualService default/reviews file.yaml:12) spec.http[0]: message`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [{}]", self.severity, self.code.id)?;
        let mut origin = Vec::new();
        if let Some(r) = &self.resource {
            origin.push(r.clone());
        }
        if let Some(file) = &self.file {
            match self.line {
                Some(l) => origin.push(format!("{}:{l}", file.display())),
                None => origin.push(file.display().to_string()),
            }
        }
        if !origin.is_empty() {
            write!(f, " ({})", origin.join(" "))?;
        }
        match &self.path {
            Some(p) => write!(f, " {p}: {}", self.message),
            None => write!(f, " {}", self.message),
        }
    }
}
