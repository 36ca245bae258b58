//! The local-mode source: a directory of YAML files, loaded once and then watched.
//!
//! File events (inotify through `notify`) are debounced, because editors and `kubectl`-style
//! tools write a file in several steps; a slow poll backs the watcher up where events are lost
//! (network filesystems, ConfigMap symlink swaps). Parsing, validation and model building run
//! on the blocking pool, never on the proxies' threads. Only an error-free load replaces the
//! model; a rejected one is logged error by error and kept as the latest diagnostics.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::{ConfigSource, Publisher, SourceError};
use crate::diagnostic::{Diagnostic, Severity};
use crate::load::{InvalidConfig, Loader};
use crate::model::{BuildOptions, Model};

/// Tuning of the directory source.
#[derive(Clone, Debug)]
pub struct DirSourceOptions {
    pub build: BuildOptions,
    /// Quiet time after a file event before reloading.
    pub debounce: Duration,
    /// Reload check interval when no event arrives (the fallback for lost events).
    pub poll_interval: Duration,
}

impl Default for DirSourceOptions {
    fn default() -> Self {
        DirSourceOptions {
            build: BuildOptions::default(),
            debounce: Duration::from_millis(200),
            poll_interval: Duration::from_secs(5),
        }
    }
}

/// A running directory source. Dropping it stops watching.
pub struct DirSource {
    publisher: Arc<Publisher>,
    task: JoinHandle<()>,
    // Kept alive for as long as the source: dropping it ends the event stream.
    _watcher: notify::RecommendedWatcher,
}

struct Reloader {
    dir: PathBuf,
    options: DirSourceOptions,
    loader: Mutex<Loader>,
    publisher: Arc<Publisher>,
}

impl DirSource {
    /// Loads `dir` and starts watching it. Fails when the initial configuration has errors
    /// (there is no previous model to keep serving) or the directory cannot be watched.
    /// Must be called within a Tokio runtime.
    pub async fn start(
        dir: impl Into<PathBuf>,
        options: DirSourceOptions,
    ) -> Result<DirSource, SourceError> {
        let dir = dir.into();
        let (loader, model, diagnostics) = {
            let dir = dir.clone();
            let build = options.build.clone();
            tokio::task::spawn_blocking(move || {
                let mut loader = Loader::new();
                let loaded = loader.load_dir(&dir);
                let diagnostics = loaded.diagnostics.clone();
                loaded.into_model(&build).map(|m| (loader, m, diagnostics))
            })
            .await
            .expect("initial load panicked")?
        };
        log_diagnostics(&dir, &diagnostics);
        let publisher = Arc::new(Publisher::new(Arc::new(model), diagnostics));

        let (tx, rx) = mpsc::unbounded_channel();
        let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            // Access events (reads, our own included) change nothing.
            if ev.is_ok_and(|e| !matches!(e.kind, notify::EventKind::Access(_))) {
                let _ = tx.send(());
            }
        })
        .map_err(|source| SourceError::Watch {
            path: dir.clone(),
            source,
        })?;
        watcher
            .watch(&dir, RecursiveMode::Recursive)
            .map_err(|source| SourceError::Watch {
                path: dir.clone(),
                source,
            })?;

        let reloader = Arc::new(Reloader {
            dir,
            options,
            loader: Mutex::new(loader),
            publisher: publisher.clone(),
        });
        let task = tokio::spawn(reloader.run(rx));
        Ok(DirSource {
            publisher,
            task,
            _watcher: watcher,
        })
    }

    /// The directory being served.
    pub fn publisher(&self) -> Arc<Publisher> {
        self.publisher.clone()
    }
}

impl Drop for DirSource {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ConfigSource for DirSource {
    fn current(&self) -> Arc<Model> {
        self.publisher.current()
    }
    fn subscribe(&self) -> watch::Receiver<Arc<Model>> {
        self.publisher.subscribe()
    }
    fn diagnostics(&self) -> Arc<Vec<Diagnostic>> {
        self.publisher.diagnostics()
    }
}

impl Reloader {
    async fn run(self: Arc<Self>, mut events: mpsc::UnboundedReceiver<()>) {
        let mut poll = tokio::time::interval(self.options.poll_interval);
        poll.tick().await; // the first tick is immediate; the initial load already happened
        loop {
            tokio::select! {
                ev = events.recv() => {
                    if ev.is_none() {
                        return; // watcher dropped
                    }
                    // Debounce: wait for a quiet period, swallowing the burst.
                    loop {
                        match tokio::time::timeout(self.options.debounce, events.recv()).await {
                            Ok(Some(())) => continue,
                            Ok(None) => return,
                            Err(_) => break,
                        }
                    }
                }
                _ = poll.tick() => {}
            }
            let this = self.clone();
            if let Err(e) = tokio::task::spawn_blocking(move || this.reload()).await {
                tracing::error!(error = %e, "configuration reload panicked; keeping the last good model");
            }
        }
    }

    /// Loads the directory; swaps the model in when the load has no error and differs from
    /// the last one.
    fn reload(&self) {
        let mut loader = self.loader.lock().unwrap_or_else(|p| p.into_inner());
        let before = loader.fingerprint();
        let loaded = loader.load_dir(&self.dir);
        if loader.fingerprint() == before {
            return;
        }
        let diagnostics = loaded.diagnostics.clone();
        log_diagnostics(&self.dir, &diagnostics);
        match loaded.into_model(&self.options.build) {
            Ok(model) => {
                tracing::info!(
                    dir = %self.dir.display(),
                    workloads = model.workloads().len(),
                    services = model.services().len(),
                    "configuration applied"
                );
                self.publisher.publish(Arc::new(model), diagnostics);
            }
            Err(InvalidConfig { errors }) => {
                tracing::error!(
                    dir = %self.dir.display(),
                    errors = errors.len(),
                    "configuration rejected; keeping the last good model"
                );
                self.publisher.reject(diagnostics);
            }
        }
    }
}

fn log_diagnostics(dir: &Path, diagnostics: &[Diagnostic]) {
    for d in diagnostics {
        match d.severity {
            Severity::Error => tracing::error!(dir = %dir.display(), "{d}"),
            Severity::Warning => tracing::warn!(dir = %dir.display(), "{d}"),
            Severity::Info => tracing::info!(dir = %dir.display(), "{d}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: good}\n";
    const BROKEN: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: r}
spec:
  hosts: [r]
  http: [{route: [{destination: {host: r}, weight: -1}]}]
";
    const FIXED: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: fixed}\n";

    fn options() -> DirSourceOptions {
        DirSourceOptions {
            debounce: Duration::from_millis(50),
            poll_interval: Duration::from_millis(500),
            ..Default::default()
        }
    }

    /// Waits (bounded) until `cond` holds, re-checking as the source changes.
    async fn wait_for(src: &DirSource, what: &str, cond: impl Fn(&DirSource) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !cond(src) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn has_ns(src: &DirSource, ns: &str) -> bool {
        src.current().namespace_labels(ns).is_some()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn keeps_last_good_model_and_picks_up_a_fix() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.yaml"), GOOD).unwrap();
        let src = DirSource::start(dir.path(), options()).await.unwrap();
        assert!(has_ns(&src, "good"));
        let mut rx = src.subscribe();

        std::fs::write(
            dir.path().join("config.yaml"),
            format!("{GOOD}---\n{BROKEN}"),
        )
        .unwrap();
        wait_for(&src, "the broken config to be rejected", |s| {
            s.diagnostics().iter().any(|d| d.is_error())
        })
        .await;
        let errors: Vec<String> = src
            .diagnostics()
            .iter()
            .filter(|d| d.is_error())
            .map(ToString::to_string)
            .collect();
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].contains(
                "(VirtualService default/r config.yaml:10) spec.http[0].route[0].weight: weight -1"
            ),
            "{}",
            errors[0]
        );
        assert!(has_ns(&src, "good"), "the last good model keeps serving");
        assert!(!rx.has_changed().unwrap());

        std::fs::write(dir.path().join("config.yaml"), FIXED).unwrap();
        tokio::time::timeout(Duration::from_secs(10), rx.changed())
            .await
            .expect("fix applied in time")
            .unwrap();
        assert!(has_ns(&src, "fixed") && !has_ns(&src, "good"));
        assert!(src.diagnostics().is_empty());
    }

    #[tokio::test]
    async fn refuses_to_start_on_invalid_config() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.yaml"), BROKEN).unwrap();
        let err = DirSource::start(dir.path(), options())
            .await
            .err()
            .expect("must fail");
        assert!(err.to_string().contains("weight -1"), "{err}");
    }
}
