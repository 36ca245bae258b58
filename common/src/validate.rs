//! Semantic validation of one resource, after it has been decoded: required fields, value
//! ranges, regexes, CIDRs, and fields that are valid upstream but not acted on here.
//!
//! Checks that need other resources (does the host exist? is the subset defined?) are the
//! analyzer's; this module only looks at one object, so the loader can run it per file and
//! cache the result.

mod networking;
mod security;

use crate::diagnostic::{codes, Code, Severity};
use crate::resource::Resource;

/// One problem in one resource, located by field path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    pub code: Code,
    pub path: String,
    pub message: String,
}

/// Collects findings while walking a resource.
#[derive(Default)]
pub(crate) struct Checker {
    pub(crate) findings: Vec<Finding>,
}

impl Checker {
    pub(crate) fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.push(
            Severity::Error,
            codes::SCHEMA_VALIDATION_ERROR,
            path,
            message,
        );
    }

    pub(crate) fn push(
        &mut self,
        severity: Severity,
        code: Code,
        path: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.findings.push(Finding {
            severity,
            code,
            path: path.into(),
            message: message.into(),
        });
    }

    /// Warns that a present field is parsed but not implemented.
    pub(crate) fn unimplemented<T>(&mut self, field: &Option<T>, path: impl FnOnce() -> String) {
        if field.is_some() {
            self.push(
                Severity::Warning,
                codes::NOT_IMPLEMENTED,
                path(),
                "field is valid in Istio but parsed and not implemented by this mesh; it has no effect",
            );
        }
    }

    pub(crate) fn deprecated<T>(
        &mut self,
        field: &Option<T>,
        path: impl FnOnce() -> String,
        use_instead: &str,
    ) {
        if field.is_some() {
            self.push(
                Severity::Warning,
                codes::DEPRECATED,
                path(),
                format!("deprecated field; use {use_instead}"),
            );
        }
    }

    pub(crate) fn percent(&mut self, value: f64, path: impl FnOnce() -> String) {
        if !(0.0..=100.0).contains(&value) || value.is_nan() {
            self.error(path(), format!("percentage {value} is outside [0, 100]"));
        }
    }

    pub(crate) fn non_negative(&mut self, value: Option<i64>, path: impl FnOnce() -> String) {
        if let Some(v) = value.filter(|v| *v < 0) {
            self.error(path(), format!("must not be negative (got {v})"));
        }
    }
}

/// Validates one decoded resource.
pub fn validate(resource: &Resource) -> Vec<Finding> {
    let mut c = Checker::default();
    if resource.metadata().name.is_empty() {
        c.error("metadata.name", "required field is missing");
    }
    match resource {
        Resource::Namespace(_) | Resource::Pod(_) => {}
        Resource::Service(s) => {
            for (i, p) in s.spec.ports.iter().enumerate() {
                if p.port == 0 {
                    c.error(format!("spec.ports[{i}].port"), "port must be in 1..=65535");
                }
            }
        }
        Resource::Gateway(g) => {
            if g.spec.gateway_class_name.is_empty() {
                c.error("spec.gatewayClassName", "required field is missing");
            }
        }
        Resource::VirtualService(vs) => networking::virtual_service(&vs.spec, &mut c),
        Resource::DestinationRule(dr) => networking::destination_rule(&dr.spec, &mut c),
        Resource::PeerAuthentication(pa) => security::peer_authentication(&pa.spec, &mut c),
        Resource::AuthorizationPolicy(ap) => security::authorization_policy(&ap.spec, &mut c),
        Resource::IstioGateway(_) => c.push(
            Severity::Warning,
            codes::NOT_IMPLEMENTED,
            "spec",
            "networking.istio.io Gateway (ingress) is parsed but not served by this mesh",
        ),
    }
    c.findings
}
