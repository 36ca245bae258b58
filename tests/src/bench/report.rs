//! Results of a bench run: one [`Row`] per (scenario, measurement, path) holding every run's
//! sample, printed as a table of median and spread and written as JSON.
//!
//! A path that could not be measured keeps its error text instead of a number, so the table
//! says *why* a cell is empty; a number is never invented.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;
use serde::Serialize;

/// One measured quantity along one path, with a sample per run.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub scenario: String,
    pub measurement: String,
    pub path: String,
    pub unit: String,
    pub samples: Vec<f64>,
    /// Last error seen on this path (runs that failed add no sample).
    pub error: Option<String>,
    /// What we aim at, as text (`≥ 10`, `≤ 0.2`), for the table.
    pub target: Option<String>,
}

impl Row {
    pub fn median(&self) -> Option<f64> {
        median(&self.samples)
    }

    /// (min, max) of the samples.
    pub fn spread(&self) -> Option<(f64, f64)> {
        if self.samples.is_empty() {
            return None;
        }
        let min = self.samples.iter().cloned().fold(f64::INFINITY, f64::min);
        let max = self
            .samples
            .iter()
            .cloned()
            .fold(f64::NEG_INFINITY, f64::max);
        Some((min, max))
    }
}

pub fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    Some(if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    })
}

/// Everything measured in one invocation, plus free-form notes (skipped comparisons, setup
/// failures) printed under the table.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
}

impl Report {
    fn row(&mut self, scenario: &str, measurement: &str, path: &str, unit: &str) -> &mut Row {
        let pos = self
            .rows
            .iter()
            .position(|r| r.scenario == scenario && r.measurement == measurement && r.path == path);
        let i = match pos {
            Some(i) => i,
            None => {
                self.rows.push(Row {
                    scenario: scenario.into(),
                    measurement: measurement.into(),
                    path: path.into(),
                    unit: unit.into(),
                    samples: Vec::new(),
                    error: None,
                    target: None,
                });
                self.rows.len() - 1
            }
        };
        &mut self.rows[i]
    }

    /// Adds one run's value, or records why there is none.
    pub fn record(
        &mut self,
        scenario: &str,
        measurement: &str,
        path: &str,
        unit: &str,
        value: Result<f64>,
    ) {
        let row = self.row(scenario, measurement, path, unit);
        match value {
            Ok(v) if v.is_finite() => row.samples.push(v),
            Ok(v) => row.error = Some(format!("non-finite value {v}")),
            Err(e) => row.error = Some(one_line(&format!("{e:#}"))),
        }
    }

    pub fn ok(&mut self, scenario: &str, measurement: &str, path: &str, unit: &str, v: f64) {
        self.record(scenario, measurement, path, unit, Ok(v));
    }

    pub fn fail(&mut self, scenario: &str, measurement: &str, path: &str, unit: &str, e: &str) {
        self.record(
            scenario,
            measurement,
            path,
            unit,
            Err(anyhow::anyhow!("{e}")),
        );
    }

    /// Sets the target text shown next to a row (created if needed).
    pub fn target(&mut self, scenario: &str, measurement: &str, path: &str, unit: &str, t: &str) {
        self.row(scenario, measurement, path, unit).target = Some(t.into());
    }

    pub fn note(&mut self, s: impl Into<String>) {
        let s = s.into();
        println!("note: {s}");
        self.notes.push(s);
    }

    /// The table as plain text (also pasted into docs/performance.md).
    pub fn table(&self) -> String {
        let header = [
            "scenario",
            "measurement",
            "path",
            "median",
            "spread (min–max)",
            "runs",
            "target",
        ];
        let mut lines: Vec<[String; 7]> = Vec::new();
        for r in &self.rows {
            let (med, spread) = match (r.median(), r.spread()) {
                (Some(m), Some((lo, hi))) => (
                    format!("{} {}", fmt_num(m), r.unit),
                    format!("{}–{}", fmt_num(lo), fmt_num(hi)),
                ),
                _ => (
                    "FAILED".to_string(),
                    r.error
                        .clone()
                        .unwrap_or_default()
                        .chars()
                        .take(90)
                        .collect(),
                ),
            };
            lines.push([
                r.scenario.clone(),
                r.measurement.clone(),
                r.path.clone(),
                med,
                spread,
                r.samples.len().to_string(),
                r.target.clone().unwrap_or_default(),
            ]);
        }
        let mut widths = header.map(|h| h.chars().count());
        for l in &lines {
            for (w, c) in widths.iter_mut().zip(l.iter()) {
                *w = (*w).max(c.chars().count());
            }
        }
        let mut out = String::new();
        let fmt_line = |out: &mut String, cells: &[String]| {
            let mut s = String::from("|");
            for (c, w) in cells.iter().zip(widths.iter()) {
                let pad = w - c.chars().count();
                let _ = write!(s, " {c}{} |", " ".repeat(pad));
            }
            out.push_str(&s);
            out.push('\n');
        };
        fmt_line(&mut out, &header.map(String::from));
        let mut sep = String::from("|");
        for w in &widths {
            let _ = write!(sep, "{}|", "-".repeat(w + 2));
        }
        out.push_str(&sep);
        out.push('\n');
        for l in &lines {
            fmt_line(&mut out, l);
        }
        out
    }

    pub fn write_json(&self, path: &Path, meta: serde_json::Value) -> Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let rows: Vec<serde_json::Value> = self
            .rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "scenario": r.scenario,
                    "measurement": r.measurement,
                    "path": r.path,
                    "unit": r.unit,
                    "median": r.median(),
                    "min": r.spread().map(|s| s.0),
                    "max": r.spread().map(|s| s.1),
                    "samples": r.samples,
                    "error": r.error,
                    "target": r.target,
                })
            })
            .collect();
        let doc = serde_json::json!({ "meta": meta, "rows": rows, "notes": self.notes });
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)?;
        Ok(())
    }
}

/// Numbers with three significant digits or so: 0.123, 12.3, 12345.
pub fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_spread() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        let mut r = Report::default();
        r.ok("s", "m", "p", "u", 1.0);
        r.ok("s", "m", "p", "u", 5.0);
        r.fail("s", "m", "q", "u", "boom\n  here");
        assert_eq!(r.rows[0].spread(), Some((1.0, 5.0)));
        assert_eq!(r.rows[1].error.as_deref(), Some("boom here"));
        assert!(r.table().contains("FAILED"));
    }
}
