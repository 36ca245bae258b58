//! The YAML loader: a directory (or a string) of multi-document YAML becomes resources plus
//! diagnostics, each naming file, line, resource and field.
//!
//! Each document is cut from the file's text before parsing so a finding can be located by
//! its field path inside that document's own text (see `locate`). A [`Loader`] keeps every
//! file's result keyed by a hash of its content, so a reload after one file changed parses only
//! that file; cross-file checks (duplicates) run on every load.

mod block;
mod decode;
mod locate;

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::diagnostic::{codes, Diagnostic, Severity};
use crate::model::{BuildOptions, Model};
use crate::resource::{Kind, Resource};

pub use locate::locate;

/// Where a resource came from, precise enough to find the line of any of its fields.
#[derive(Clone, Debug)]
pub struct Origin {
    pub file: Arc<Path>,
    /// 1-based line where the resource's document starts.
    pub line: usize,
    /// The whole file's text (shared by its resources).
    text: Arc<str>,
    /// The document's byte range in `text`.
    doc: Range<usize>,
    /// Path prefix inside the document (`items[3].` for an entry of a `List`).
    prefix: String,
}

impl Origin {
    /// The 1-based line of `path` (e.g. `spec.http[0].route[1].weight`) in the file, or the
    /// document's first line when the path cannot be followed.
    pub fn line_of(&self, path: &str) -> usize {
        let doc = &self.text[self.doc.clone()];
        let full = format!("{}{path}", self.prefix);
        locate(doc, &full).map_or(self.line, |l| self.line + l)
    }

    fn diagnostic(&self, d: Diagnostic) -> Diagnostic {
        let line = d
            .path
            .as_deref()
            .map(|p| self.line_of(p))
            .unwrap_or(self.line);
        Diagnostic {
            file: Some(self.file.to_path_buf()),
            line: Some(line),
            ..d
        }
    }
}

/// The result of loading: resources (with their origins, same order) and every diagnostic.
#[derive(Clone, Debug, Default)]
pub struct Loaded {
    pub resources: Vec<Resource>,
    pub origins: Vec<Origin>,
    pub diagnostics: Vec<Diagnostic>,
}

/// A configuration with errors cannot become a model.
#[derive(Debug, thiserror::Error)]
#[error("configuration rejected: {} error(s); first: {}", errors.len(), errors.first().map(ToString::to_string).unwrap_or_default())]
pub struct InvalidConfig {
    pub errors: Vec<Diagnostic>,
}

impl Loaded {
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }

    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter().filter(|d| d.is_error())
    }

    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Warning)
    }

    /// Builds the model, refusing any configuration with an error.
    pub fn into_model(self, options: &BuildOptions) -> Result<Model, InvalidConfig> {
        if self.has_errors() {
            return Err(InvalidConfig {
                errors: self.errors().cloned().collect(),
            });
        }
        Ok(Model::build_with(self.resources, options))
    }
}

/// One file's parse, cached by content.
#[derive(Debug, Default)]
struct FileResult {
    resources: Vec<(Resource, Origin)>,
    diagnostics: Vec<Diagnostic>,
}

/// Loads directories, re-parsing only files whose content changed since the last load.
#[derive(Default)]
pub struct Loader {
    cache: HashMap<PathBuf, (u64, Arc<FileResult>)>,
    fingerprint: u64,
}

impl Loader {
    pub fn new() -> Self {
        Loader::default()
    }

    /// Identifies the file names and contents of the last load: equal fingerprints mean an
    /// identical configuration (a watcher uses it to skip no-op reloads).
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// Loads every `.yaml`/`.yml` file under `dir` (recursively, in name order; names starting
    /// with `.` are skipped, such as the `..data` links of a mounted ConfigMap).
    pub fn load_dir(&mut self, dir: &Path) -> Loaded {
        let mut diagnostics = Vec::new();
        let mut files = Vec::new();
        if let Err(e) = collect_files(dir, &mut files) {
            let mut d = Diagnostic::new(
                Severity::Error,
                codes::SCHEMA_VALIDATION_ERROR,
                format!("cannot read configuration directory: {e}"),
            );
            d.file = Some(dir.to_path_buf());
            diagnostics.push(d);
        }
        files.sort();
        let mut texts = Vec::with_capacity(files.len());
        for path in &files {
            let rel = path.strip_prefix(dir).unwrap_or(path).to_path_buf();
            match std::fs::read_to_string(path) {
                Ok(text) => texts.push((rel, text)),
                Err(e) => {
                    let mut d = Diagnostic::new(
                        Severity::Error,
                        codes::SCHEMA_VALIDATION_ERROR,
                        format!("cannot read file: {e}"),
                    );
                    d.file = Some(rel);
                    diagnostics.push(d);
                }
            }
        }
        let results = self.parse_all(texts);
        assemble(results, diagnostics)
    }

    /// Parses the files not in the cache (in parallel: parsing dominates a large load) and
    /// returns every file's result in order.
    fn parse_all(&mut self, texts: Vec<(PathBuf, String)>) -> Vec<Arc<FileResult>> {
        let hashes: Vec<u64> = texts.iter().map(|(_, t)| content_hash(t)).collect();
        let mut fp = DefaultHasher::new();
        for ((rel, _), h) in texts.iter().zip(&hashes) {
            (rel, h).hash(&mut fp);
        }
        self.fingerprint = fp.finish();
        let todo: Vec<usize> = (0..texts.len())
            .filter(|&i| {
                self.cache
                    .get(&texts[i].0)
                    .is_none_or(|(h, _)| *h != hashes[i])
            })
            .collect();
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(todo.len().max(1));
        let mut parsed: Vec<(usize, FileResult)> = if threads <= 1 {
            todo.iter()
                .map(|&i| (i, parse_file(&texts[i].0, &texts[i].1)))
                .collect()
        } else {
            std::thread::scope(|s| {
                let handles: Vec<_> = (0..threads)
                    .map(|t| {
                        let todo = &todo;
                        let texts = &texts;
                        s.spawn(move || {
                            todo.iter()
                                .skip(t)
                                .step_by(threads)
                                .map(|&i| (i, parse_file(&texts[i].0, &texts[i].1)))
                                .collect::<Vec<_>>()
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .flat_map(|h| h.join().expect("parser thread panicked"))
                    .collect()
            })
        };
        parsed.sort_by_key(|(i, _)| *i);
        for (i, result) in parsed {
            self.cache
                .insert(texts[i].0.clone(), (hashes[i], Arc::new(result)));
        }
        // Forget files that disappeared.
        let live: std::collections::HashSet<&PathBuf> = texts.iter().map(|(rel, _)| rel).collect();
        self.cache.retain(|k, _| live.contains(k));
        texts
            .iter()
            .map(|(rel, _)| self.cache[rel].1.clone())
            .collect()
    }
}

/// Loads a directory once (no cache kept).
pub fn load_dir(dir: &Path) -> Loaded {
    Loader::new().load_dir(dir)
}

/// Loads YAML text as if it were the file `file` (tests, `kubectl`-style stdin).
pub fn load_str(file: &Path, text: &str) -> Loaded {
    assemble(vec![Arc::new(parse_file(file, text))], Vec::new())
}

fn content_hash(text: &str) -> u64 {
    let mut h = DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        // Follow symlinks: ConfigMap mounts are links into a hidden directory.
        let meta = std::fs::metadata(&path)?;
        if meta.is_dir() {
            collect_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
    Ok(())
}

/// Splits a file into documents: `(first line, byte range)`, 1-based lines. A marker is a
/// line that is `---`, starts with `--- `, or is `...` (trailing whitespace allowed); only
/// lines starting with `-` or `.` need a closer look.
fn split_documents(text: &str) -> Vec<(usize, Range<usize>)> {
    let b = text.as_bytes();
    let mut docs = Vec::new();
    let (mut start, mut start_line) = (0, 1);
    let (mut pos, mut line) = (0, 1);
    while pos < b.len() {
        let end = b[pos..]
            .iter()
            .position(|&c| c == b'\n')
            .map_or(b.len(), |i| pos + i);
        let next = (end + 1).min(b.len());
        if matches!(b[pos], b'-' | b'.') {
            let trimmed = text[pos..end].trim_end();
            if trimmed == "---" || trimmed.starts_with("--- ") || trimmed == "..." {
                docs.push((start_line, start..pos));
                start = next;
                start_line = line + 1;
            }
        }
        pos = next;
        line += 1;
    }
    docs.push((start_line, start..text.len()));
    docs
}

fn parse_file(file: &Path, text: &str) -> FileResult {
    let file: Arc<Path> = Arc::from(file);
    let text: Arc<str> = Arc::from(text);
    let docs = split_documents(&text);
    let mut out = FileResult {
        resources: Vec::with_capacity(docs.len()),
        diagnostics: Vec::new(),
    };
    let mut scratch = block::Scratch::default();
    for (line, range) in docs {
        let origin = Origin {
            file: file.clone(),
            line,
            text: text.clone(),
            doc: range,
            prefix: String::new(),
        };
        decode::document(origin, &mut scratch, &mut out);
    }
    out
}

/// Concatenates file results in order and runs the cross-file checks.
fn assemble(results: Vec<Arc<FileResult>>, mut diagnostics: Vec<Diagnostic>) -> Loaded {
    let total: usize = results.iter().map(|r| r.resources.len()).sum();
    // The first definition of each key wins; keys borrow from the cached results, so the
    // check allocates nothing per resource.
    let mut kept: Vec<&(Resource, Origin)> = Vec::with_capacity(total);
    let mut seen: HashMap<(Kind, &str, &str), usize> = HashMap::with_capacity(total);
    for r in &results {
        diagnostics.extend(r.diagnostics.iter().cloned());
        for entry in &r.resources {
            let (res, origin) = entry;
            let meta = res.metadata();
            let kind = res.kind();
            let namespace = if kind.is_namespaced() {
                meta.namespace_or_default()
            } else {
                ""
            };
            if let Some(&first) = seen.get(&(kind, namespace, meta.name.as_str())) {
                let f: &Origin = &kept[first].1;
                let key = res.key();
                let mut d = Diagnostic::new(
                    Severity::Error,
                    codes::DUPLICATE_RESOURCE,
                    format!(
                        "{key} is defined twice; first at {}:{}",
                        f.file.display(),
                        f.line
                    ),
                );
                d.resource = Some(key.to_string());
                d.path = Some("metadata.name".into());
                diagnostics.push(origin.diagnostic(d));
                continue;
            }
            seen.insert((kind, namespace, meta.name.as_str()), kept.len());
            kept.push(entry);
        }
    }
    drop(seen);
    // The cache keeps its copy for the next load, so the result is a clone: on large
    // configurations the second core does half of it.
    let clone_all = |part: &[&(Resource, Origin)]| -> (Vec<Resource>, Vec<Origin>) {
        (
            part.iter().map(|(r, _)| r.clone()).collect(),
            part.iter().map(|(_, o)| o.clone()).collect(),
        )
    };
    let (resources, origins) = if kept.len() < PARALLEL_CLONE_MIN {
        clone_all(&kept)
    } else {
        let (front, back) = kept.split_at(kept.len() / 2);
        std::thread::scope(|s| {
            let back = s.spawn(|| clone_all(back));
            let (mut resources, mut origins) = clone_all(front);
            let (mut r, mut o) = back.join().expect("clone thread panicked");
            resources.append(&mut r);
            origins.append(&mut o);
            (resources, origins)
        })
    };
    Loaded {
        resources,
        origins,
        diagnostics,
    }
}

/// Below this many resources a second thread costs more than it saves.
const PARALLEL_CLONE_MIN: usize = 4096;

#[cfg(test)]
mod tests;
