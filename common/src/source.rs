//! Where models come from. A [`ConfigSource`] yields whole [`Model`] snapshots; consumers
//! read [`ConfigSource::current`] on the hot path (one atomic load) and await
//! [`ConfigSource::subscribe`] to react to changes. Two sources exist by design: the YAML
//! directory ([`dir::DirSource`], local mode) and, later, the Kubernetes API. Both publish
//! through [`Publisher`], so nothing downstream knows which one is running.

pub mod dir;

use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::diagnostic::Diagnostic;
use crate::load::InvalidConfig;
use crate::model::Model;

pub use dir::{DirSource, DirSourceOptions};

/// Errors starting a source.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The initial configuration is invalid: there is no last good model to fall back on.
    #[error(transparent)]
    Invalid(#[from] InvalidConfig),
    #[error("cannot watch {path}: {source}")]
    Watch {
        path: std::path::PathBuf,
        #[source]
        source: notify::Error,
    },
}

/// A provider of model snapshots.
pub trait ConfigSource: Send + Sync {
    /// The model in force. Cheap: an atomic load and a reference count.
    fn current(&self) -> Arc<Model>;
    /// Notified with every newly applied model.
    fn subscribe(&self) -> watch::Receiver<Arc<Model>>;
    /// Findings of the most recent load attempt (also of a rejected one).
    fn diagnostics(&self) -> Arc<Vec<Diagnostic>>;
}

/// The state a source publishes through. Invariant: `current` and the watch channel always
/// carry the same last good model; `diagnostics` may describe a newer, rejected attempt.
pub struct Publisher {
    current: ArcSwap<Model>,
    tx: watch::Sender<Arc<Model>>,
    diagnostics: ArcSwap<Vec<Diagnostic>>,
}

impl Publisher {
    pub fn new(initial: Arc<Model>, diagnostics: Vec<Diagnostic>) -> Self {
        let (tx, _) = watch::channel(initial.clone());
        Publisher {
            current: ArcSwap::new(initial),
            tx,
            diagnostics: ArcSwap::from_pointee(diagnostics),
        }
    }

    /// Makes `model` current and notifies subscribers.
    pub fn publish(&self, model: Arc<Model>, diagnostics: Vec<Diagnostic>) {
        self.current.store(model.clone());
        self.diagnostics.store(Arc::new(diagnostics));
        self.tx.send_replace(model);
    }

    /// Records a rejected attempt; the current model stays.
    pub fn reject(&self, diagnostics: Vec<Diagnostic>) {
        self.diagnostics.store(Arc::new(diagnostics));
    }
}

impl ConfigSource for Publisher {
    fn current(&self) -> Arc<Model> {
        self.current.load_full()
    }
    fn subscribe(&self) -> watch::Receiver<Arc<Model>> {
        self.tx.subscribe()
    }
    fn diagnostics(&self) -> Arc<Vec<Diagnostic>> {
        self.diagnostics.load_full()
    }
}
