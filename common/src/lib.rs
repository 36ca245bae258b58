//! The mesh's one data model: Kubernetes objects and Istio resources as typed Rust, the derived
//! views the proxies query, and the sources that fill it (a directory of YAML files today, the
//! Kubernetes API later). Nothing downstream knows where an object came from.

pub mod analyze;
pub mod authz;
pub mod diagnostic;
pub mod duration;
pub mod identity;
pub mod istio;
pub mod k8s;
pub mod load;
pub mod model;
pub mod ports;
pub mod resource;
pub mod source;
pub mod synth;
pub mod telemetry;
pub mod validate;

pub use diagnostic::{Diagnostic, Severity};
pub use duration::Duration;
pub use identity::Identity;
pub use model::{BuildOptions, Model};
pub use resource::{Kind, Resource, ResourceKey};
