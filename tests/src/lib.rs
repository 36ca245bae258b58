//! The local mesh harness shared by the end-to-end tests, `cargo xtask demo` and
//! `cargo xtask bench`: real network namespaces, veth pairs, cgroups and processes.

pub mod config;
pub mod mesh;
pub mod netns;
pub mod scenarios;
pub mod tcpcheck;
pub mod topology;
