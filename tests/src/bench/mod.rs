//! `cargo xtask bench`: the scenarios of issue 7, each measuring the mesh and a baseline in
//! the same run on the harness topology, several runs, reported as median and spread.

pub mod capture;
pub mod config;
pub mod cost;
pub mod http;
pub mod probe;
pub mod report;
pub mod setup;
pub mod tcp;
pub mod tools;

use anyhow::{bail, Result};

use report::Report;

/// Options every scenario reads.
pub struct Opts {
    pub runs: u32,
    /// Divides every measurement interval (smoke runs); 1 for real numbers.
    pub shrink: u64,
}

impl Opts {
    /// A measurement interval in seconds, shrunk for smoke runs (never below one second).
    pub fn secs(&self, full: u64) -> u64 {
        (full / self.shrink).max(1)
    }
}

/// Scenario names in the order `all` runs them.
pub const SCENARIOS: &[&str] = &[
    "tcp-throughput",
    "http-latency",
    "http-throughput",
    "cost",
    "connect-storm",
    "capture",
    "config",
];

pub fn run_scenario(name: &str, opts: &Opts, report: &mut Report) -> Result<()> {
    match name {
        "tcp-throughput" => tcp::run(opts, report),
        "http-latency" => http::latency(opts, report),
        "http-throughput" => http::throughput(opts, report),
        "cost" => cost::cost(opts, report),
        "connect-storm" => cost::connect_storm(opts, report),
        "capture" => capture::run(opts, report),
        "config" => config::run(opts, report),
        other => bail!(
            "unknown scenario `{other}`; known: {}",
            SCENARIOS.join(", ")
        ),
    }
}
