//! Decoding one YAML document into a typed [`Resource`], reporting syntax errors, type errors
//! (with the field path where decoding stopped), unknown kinds and unknown Istio fields, then
//! running the per-resource validation.

use serde::de::DeserializeOwned;
use serde::Deserializer;
use serde_yaml::Value;

use super::{block, FileResult, Origin};
use crate::diagnostic::{codes, Code, Diagnostic, Severity};
use crate::resource::{Kind, Resource};
use crate::validate;

pub(super) fn document(origin: Origin, scratch: &mut block::Scratch, out: &mut FileResult) {
    let doc = &origin.text[origin.doc.clone()];
    if fast_path(doc, &origin, scratch, out) {
        return;
    }
    let value: Value = match serde_yaml::from_str(doc) {
        Ok(v) => v,
        Err(e) => {
            let line = e
                .location()
                .map_or(origin.line, |l| origin.line + l.line() - 1);
            let mut d = Diagnostic::new(
                Severity::Error,
                codes::SCHEMA_VALIDATION_ERROR,
                format!("invalid YAML: {}", strip_location(&e.to_string())),
            );
            d.file = Some(origin.file.to_path_buf());
            d.line = Some(line);
            out.diagnostics.push(d);
            return;
        }
    };
    if value.is_null() {
        return; // empty document (comments only, or a trailing `---`)
    }
    let is_list = value
        .get("kind")
        .and_then(Value::as_str)
        .is_some_and(|k| k.ends_with("List"))
        && value.get("items").is_some_and(Value::is_sequence);
    if is_list {
        // `kubectl get -o yaml` wraps several objects in a List.
        let Value::Mapping(mut map) = value else {
            return;
        };
        let Some(Value::Sequence(items)) = map.remove("items") else {
            return;
        };
        for (i, item) in items.into_iter().enumerate() {
            let mut o = origin.clone();
            o.prefix = format!("items[{i}].");
            object(item, o, out);
        }
    } else {
        object(value, origin, out);
    }
}

/// The common case, a well-formed object of a known kind, decoded straight from the text:
/// first by the block-YAML reader (a few times faster), then by serde_yaml (half the cost of
/// going through `Value`). Returns false, having reported nothing, when the slow path must run
/// instead: it produces the precise diagnostics.
fn fast_path(
    doc: &str,
    origin: &Origin,
    scratch: &mut block::Scratch,
    out: &mut FileResult,
) -> bool {
    let decoded = block_path(doc, scratch).or_else(|| serde_yaml_path(doc));
    let Some((kind, resource, ignored)) = decoded else {
        return false;
    };
    finish(resource, ignored, None, kind, origin.clone(), out);
    true
}

pub(super) type Decoded = (Kind, Resource, Vec<String>);

/// The block-YAML reader; `None` when the document is outside its subset or does not decode.
pub(super) fn block_path(doc: &str, scratch: &mut block::Scratch) -> Option<Decoded> {
    let events = block::parse(doc, scratch)?;
    let kind = Kind::from_api(
        block::root_scalar(&events, "apiVersion")?,
        block::root_scalar(&events, "kind")?,
    )?;
    let mut de = block::De::new(&events);
    let (resource, ignored) = typed_fast(kind, &mut de)?;
    de.at_end().then_some((kind, resource, ignored))
}

/// serde_yaml straight from the text (kind and API version found by a line scan).
fn serde_yaml_path(doc: &str) -> Option<Decoded> {
    let (mut api_version, mut kind_name) = (None, None);
    for line in doc.lines() {
        let value = |rest: &str| {
            let v = rest.split(" #").next().unwrap_or("").trim();
            v.trim_matches(|c| c == '"' || c == '\'').to_string()
        };
        if let Some(rest) = line.strip_prefix("apiVersion:") {
            api_version = Some(value(rest));
        } else if let Some(rest) = line.strip_prefix("kind:") {
            kind_name = Some(value(rest));
        }
    }
    let kind = Kind::from_api(&api_version?, &kind_name?)?;
    let (resource, ignored) = typed_fast(kind, serde_yaml::Deserializer::from_str(doc))?;
    Some((kind, resource, ignored))
}

/// Decodes a resource of `kind` from `de`, with the ignored Istio fields; errors are left to
/// the slow path.
pub(super) fn typed_fast<'de, D: Deserializer<'de>>(
    kind: Kind,
    de: D,
) -> Option<(Resource, Vec<String>)> {
    match kind {
        Kind::Namespace => T::plain(de).map(|r| (Resource::Namespace(r), vec![])),
        Kind::Pod => T::plain(de).map(|r| (Resource::Pod(r), vec![])),
        Kind::Service => T::plain(de).map(|r| (Resource::Service(r), vec![])),
        Kind::Gateway => T::plain(de).map(|r| (Resource::Gateway(r), vec![])),
        Kind::VirtualService => T::ignoring(de).map(|(r, i)| (Resource::VirtualService(r), i)),
        Kind::DestinationRule => T::ignoring(de).map(|(r, i)| (Resource::DestinationRule(r), i)),
        Kind::PeerAuthentication => {
            T::ignoring(de).map(|(r, i)| (Resource::PeerAuthentication(r), i))
        }
        Kind::AuthorizationPolicy => {
            T::ignoring(de).map(|(r, i)| (Resource::AuthorizationPolicy(r), i))
        }
        Kind::IstioGateway => T::ignoring(de).map(|(r, i)| (Resource::IstioGateway(r), i)),
    }
}

/// Typed decoding helpers for the fast paths (errors are left to the slow path).
struct T<R>(std::marker::PhantomData<R>);

impl<R: DeserializeOwned> T<R> {
    fn plain<'de, D: Deserializer<'de>>(de: D) -> Option<R> {
        R::deserialize(de).ok()
    }

    fn ignoring<'de, D: Deserializer<'de>>(de: D) -> Option<(R, Vec<String>)> {
        let mut ignored = Vec::new();
        let r = serde_ignored::deserialize(de, |p| {
            let path = ignored_path(&p);
            if reportable(&path) {
                ignored.push(path);
            }
        })
        .ok()?;
        Some((r, ignored))
    }
}

/// serde_yaml appends ` at line L column C` relative to the document; the diagnostic carries
/// the file line instead.
fn strip_location(msg: &str) -> String {
    let Some(start) = msg.find(" at line ") else {
        return msg.to_string();
    };
    let rest = &msg[start..];
    let end = rest
        .find(" column ")
        .map(|c| {
            let digits = rest[c + 8..].bytes().take_while(u8::is_ascii_digit).count();
            c + 8 + digits
        })
        .unwrap_or(rest.len());
    format!("{}{}", &msg[..start], &rest[end..])
}

fn object(value: Value, origin: Origin, out: &mut FileResult) {
    let str_of = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    let api_version = str_of(&value, "apiVersion");
    let kind_name = str_of(&value, "kind");
    let meta = value.get("metadata");
    let name = meta.and_then(|m| str_of(m, "name")).unwrap_or_default();
    let namespace = meta
        .and_then(|m| str_of(m, "namespace"))
        .unwrap_or_else(|| "default".into());
    let push = |out: &mut FileResult,
                sev: Severity,
                code: Code,
                res: Option<String>,
                path: Option<&str>,
                msg: String| {
        let mut d = Diagnostic::new(sev, code, msg);
        d.resource = res;
        d.path = path.map(str::to_string);
        out.diagnostics.push(origin.diagnostic(d));
    };
    let (Some(api_version), Some(kind_name)) = (api_version, kind_name) else {
        let field = if value.get("apiVersion").is_none() {
            "apiVersion"
        } else {
            "kind"
        };
        push(
            out,
            Severity::Error,
            codes::SCHEMA_VALIDATION_ERROR,
            None,
            Some(field),
            "required field is missing (every object needs apiVersion and kind)".into(),
        );
        return;
    };
    let Some(kind) = Kind::from_api(&api_version, &kind_name) else {
        let res = format!("{kind_name} {namespace}/{name}");
        push(
            out,
            Severity::Warning,
            codes::UNKNOWN_KIND,
            Some(res),
            None,
            format!("kind {kind_name} ({api_version}) is not read by this mesh; skipped"),
        );
        return;
    };
    let label = if kind.is_namespaced() {
        format!("{kind} {namespace}/{name}")
    } else {
        format!("{kind} {name}")
    };
    let istio = matches!(
        kind,
        Kind::VirtualService
            | Kind::DestinationRule
            | Kind::PeerAuthentication
            | Kind::AuthorizationPolicy
            | Kind::IstioGateway
    );
    let decoded = match kind {
        Kind::Namespace => typed(value, istio).map(|(r, i)| (Resource::Namespace(r), i)),
        Kind::Pod => typed(value, istio).map(|(r, i)| (Resource::Pod(r), i)),
        Kind::Service => typed(value, istio).map(|(r, i)| (Resource::Service(r), i)),
        Kind::Gateway => typed(value, istio).map(|(r, i)| (Resource::Gateway(r), i)),
        Kind::VirtualService => typed(value, istio).map(|(r, i)| (Resource::VirtualService(r), i)),
        Kind::DestinationRule => {
            typed(value, istio).map(|(r, i)| (Resource::DestinationRule(r), i))
        }
        Kind::PeerAuthentication => {
            typed(value, istio).map(|(r, i)| (Resource::PeerAuthentication(r), i))
        }
        Kind::AuthorizationPolicy => {
            typed(value, istio).map(|(r, i)| (Resource::AuthorizationPolicy(r), i))
        }
        Kind::IstioGateway => typed(value, istio).map(|(r, i)| (Resource::IstioGateway(r), i)),
    };
    let (resource, ignored) = match decoded {
        Ok(ok) => ok,
        Err((path, msg)) => {
            push(
                out,
                Severity::Error,
                codes::SCHEMA_VALIDATION_ERROR,
                Some(label),
                path.as_deref(),
                msg,
            );
            return;
        }
    };
    finish(resource, ignored, Some(label), kind, origin, out);
}

/// Reports ignored fields and validation findings, then keeps the resource. `label` names the
/// resource in findings (made from its key when `None`, only if there is a finding).
fn finish(
    resource: Resource,
    ignored: Vec<String>,
    mut label: Option<String>,
    kind: Kind,
    origin: Origin,
    out: &mut FileResult,
) {
    let mut push = |out: &mut FileResult, sev: Severity, code: Code, path: &str, msg: String| {
        let mut d = Diagnostic::new(sev, code, msg);
        let label = label.get_or_insert_with(|| resource.key().to_string());
        d.resource = Some(label.clone());
        d.path = Some(path.to_string());
        out.diagnostics.push(origin.diagnostic(d));
    };
    for path in ignored {
        push(
            out,
            Severity::Warning,
            codes::UNKNOWN_FIELD,
            &path,
            format!(
                "unknown field for {kind}; ignored (not in Istio's API, or not known to this mesh)"
            ),
        );
    }
    for f in validate::validate(&resource) {
        push(out, f.severity, f.code, &f.path, f.message);
    }
    out.resources.push((resource, origin));
}

/// Decodes `T`, returning the ignored field paths worth a warning, or the path and message of
/// the first error.
#[allow(clippy::type_complexity)]
fn typed<T: DeserializeOwned>(
    value: Value,
    istio: bool,
) -> Result<(T, Vec<String>), (Option<String>, String)> {
    let mut ignored = Vec::new();
    let mut track = serde_path_to_error::Track::new();
    let result = {
        let de = serde_path_to_error::Deserializer::new(value, &mut track);
        serde_ignored::deserialize(de, |p| {
            if istio {
                let path = ignored_path(&p);
                if reportable(&path) {
                    ignored.push(path);
                }
            }
        })
    };
    match result {
        Ok(t) => Ok((t, ignored)),
        Err(e) => {
            let path = track.path().to_string();
            let path = (path != "." && !path.is_empty()).then_some(path);
            Err((path, e.to_string()))
        }
    }
}

/// `apiVersion`, `kind`, `status` and Kubernetes metadata are not Istio fields.
fn reportable(path: &str) -> bool {
    !matches!(path, "apiVersion" | "kind" | "status")
        && !path.starts_with("metadata")
        && !path.starts_with("status.")
}

fn ignored_path(p: &serde_ignored::Path) -> String {
    use serde_ignored::Path;
    match p {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", ignored_path(parent)),
        Path::Map { parent, key } => {
            let parent = ignored_path(parent);
            if parent.is_empty() {
                key.clone()
            } else {
                format!("{parent}.{key}")
            }
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => ignored_path(parent),
    }
}
