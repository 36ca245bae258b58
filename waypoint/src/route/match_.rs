//! Compiled request matchers: Istio `HTTPMatchRequest` turned into data that is cheap to test.
//!
//! Regexes are compiled once here (anchored, because Envoy's `safe_regex` must match the whole
//! value), header names are parsed into `HeaderName`s, and case folding for `ignoreUriCase` is
//! applied to the pattern at compile time so a request only folds its own path.

use std::collections::BTreeMap;
use std::net::IpAddr;

use common::istio::networking::{HttpMatchRequest, StringMatch};
use http::header::HeaderName;
use http::{HeaderMap, Method};
use regex::Regex;
use serde::Serialize;

use super::RouteError;
use crate::workload::WorkloadInfo;

/// One Istio `StringMatch`, ready to run.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StrMatcher {
    Exact(String),
    Prefix(String),
    Regex(#[serde(serialize_with = "ser_regex")] Regex),
    /// `{}`: the value only has to be present.
    Present,
}

fn ser_regex<S: serde::Serializer>(r: &Regex, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(r.as_str())
}

impl StrMatcher {
    /// Compiles a `StringMatch`; `fold_case` lower-cases exact/prefix patterns and makes the
    /// regex case-insensitive (used for `ignoreUriCase`).
    pub fn compile(m: &StringMatch, fold_case: bool, field: &str) -> Result<Self, RouteError> {
        let set = [m.exact.is_some(), m.prefix.is_some(), m.regex.is_some()]
            .iter()
            .filter(|b| **b)
            .count();
        if set > 1 {
            return Err(RouteError::Invalid(format!(
                "{field}: only one of exact, prefix, regex may be set"
            )));
        }
        let fold = |s: &String| {
            if fold_case {
                s.to_ascii_lowercase()
            } else {
                s.clone()
            }
        };
        Ok(if let Some(e) = &m.exact {
            StrMatcher::Exact(fold(e))
        } else if let Some(p) = &m.prefix {
            StrMatcher::Prefix(fold(p))
        } else if let Some(r) = &m.regex {
            let anchored = if fold_case {
                format!("(?i)^(?:{r})$")
            } else {
                format!("^(?:{r})$")
            };
            StrMatcher::Regex(
                Regex::new(&anchored)
                    .map_err(|e| RouteError::Invalid(format!("{field}: bad regex `{r}`: {e}")))?,
            )
        } else {
            StrMatcher::Present
        })
    }

    pub fn matches(&self, v: &str) -> bool {
        match self {
            StrMatcher::Exact(e) => v == e,
            StrMatcher::Prefix(p) => v.starts_with(p.as_str()),
            StrMatcher::Regex(r) => r.is_match(v),
            StrMatcher::Present => true,
        }
    }

    /// Matches a path, folding ASCII case only when the pattern was compiled folded.
    fn matches_folded(&self, v: &str, fold: bool) -> bool {
        if fold
            && !matches!(self, StrMatcher::Regex(_))
            && v.bytes().any(|b| b.is_ascii_uppercase())
        {
            return self.matches(&v.to_ascii_lowercase());
        }
        self.matches(v)
    }
}

/// What a matcher may look at: the request plus who sent it.
pub struct MatchInput<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub authority: &'a str,
    pub headers: &'a HeaderMap,
    pub port: u16,
    pub source: Option<&'a WorkloadInfo>,
    pub source_ip: Option<IpAddr>,
}

/// One compiled `match` block: every set condition must hold (AND).
#[derive(Clone, Debug, Serialize)]
pub struct RequestMatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uri: Option<StrMatcher>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub ignore_uri_case: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<StrMatcher>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authority: Option<StrMatcher>,
    #[serde(skip_serializing_if = "Vec::is_empty", serialize_with = "ser_headers")]
    pub headers: Vec<(HeaderName, StrMatcher)>,
    #[serde(skip_serializing_if = "Vec::is_empty", serialize_with = "ser_headers")]
    pub without_headers: Vec<(HeaderName, StrMatcher)>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<(String, StrMatcher)>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub source_labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_namespace: Option<String>,
}

fn ser_headers<S: serde::Serializer>(
    h: &[(HeaderName, StrMatcher)],
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut m = s.serialize_map(Some(h.len()))?;
    for (k, v) in h {
        m.serialize_entry(k.as_str(), v)?;
    }
    m.end()
}

fn header_matchers(
    src: &BTreeMap<String, StringMatch>,
    field: &str,
) -> Result<Vec<(HeaderName, StrMatcher)>, RouteError> {
    src.iter()
        .map(|(k, v)| {
            let name = HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes())
                .map_err(|_| RouteError::Invalid(format!("{field}: bad header name `{k}`")))?;
            Ok((
                name,
                StrMatcher::compile(v, false, &format!("{field}.{k}"))?,
            ))
        })
        .collect()
}

impl RequestMatch {
    pub fn compile(m: &HttpMatchRequest) -> Result<Self, RouteError> {
        let port = m
            .port
            .map(|p| {
                u16::try_from(p)
                    .map_err(|_| RouteError::Invalid(format!("match.port {p} out of range")))
            })
            .transpose()?;
        Ok(RequestMatch {
            name: m.name.clone(),
            uri: m
                .uri
                .as_ref()
                .map(|u| StrMatcher::compile(u, m.ignore_uri_case, "match.uri"))
                .transpose()?,
            ignore_uri_case: m.ignore_uri_case,
            method: m
                .method
                .as_ref()
                .map(|u| StrMatcher::compile(u, false, "match.method"))
                .transpose()?,
            authority: m
                .authority
                .as_ref()
                .map(|u| StrMatcher::compile(u, false, "match.authority"))
                .transpose()?,
            headers: header_matchers(&m.headers, "match.headers")?,
            without_headers: header_matchers(&m.without_headers, "match.withoutHeaders")?,
            query_params: m
                .query_params
                .iter()
                .map(|(k, v)| {
                    Ok((
                        k.clone(),
                        StrMatcher::compile(v, false, &format!("match.queryParams.{k}"))?,
                    ))
                })
                .collect::<Result<_, RouteError>>()?,
            port,
            source_labels: m.source_labels.clone(),
            source_namespace: m.source_namespace.clone(),
        })
    }

    /// True when every condition of this block holds.
    pub fn matches(&self, r: &MatchInput<'_>) -> bool {
        if let Some(p) = self.port {
            if p != r.port {
                return false;
            }
        }
        if let Some(m) = &self.method {
            if !m.matches(r.method.as_str()) {
                return false;
            }
        }
        if let Some(u) = &self.uri {
            if !u.matches_folded(r.path, self.ignore_uri_case) {
                return false;
            }
        }
        if let Some(a) = &self.authority {
            if !a.matches(r.authority) {
                return false;
            }
        }
        for (name, m) in &self.headers {
            // Envoy matches a header by its first value when repeated; `Present` needs none.
            match r.headers.get(name).and_then(|v| v.to_str().ok()) {
                Some(v) if m.matches(v) => {}
                _ => return false,
            }
        }
        for (name, m) in &self.without_headers {
            if let Some(v) = r.headers.get(name).and_then(|v| v.to_str().ok()) {
                if m.matches(v) {
                    return false;
                }
            }
        }
        for (key, m) in &self.query_params {
            match r.query.and_then(|q| query_value(q, key)) {
                Some(v) if m.matches(v) => {}
                _ => return false,
            }
        }
        if !self.source_labels.is_empty() {
            let Some(src) = r.source else { return false };
            if !self
                .source_labels
                .iter()
                .all(|(k, v)| src.labels.get(k).is_some_and(|lv| lv == v))
            {
                return false;
            }
        }
        if let Some(ns) = &self.source_namespace {
            if r.source.is_none_or(|s| &*s.namespace != ns) {
                return false;
            }
        }
        true
    }
}

/// First value of `key` in a raw query string (no percent-decoding, as Envoy compares raw).
fn query_value<'q>(query: &'q str, key: &str) -> Option<&'q str> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then_some(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sm(exact: Option<&str>, prefix: Option<&str>, regex: Option<&str>) -> StringMatch {
        StringMatch {
            exact: exact.map(Into::into),
            prefix: prefix.map(Into::into),
            regex: regex.map(Into::into),
        }
    }

    fn input<'a>(path: &'a str, query: Option<&'a str>, headers: &'a HeaderMap) -> MatchInput<'a> {
        MatchInput {
            method: &Method::GET,
            path,
            query,
            authority: "reviews:9080",
            headers,
            port: 9080,
            source: None,
            source_ip: None,
        }
    }

    #[test]
    fn uri_forms_and_case() {
        let h = HeaderMap::new();
        let mut m = HttpMatchRequest {
            uri: Some(sm(Some("/old-path"), None, None)),
            ..Default::default()
        };
        let c = RequestMatch::compile(&m).unwrap();
        assert!(c.matches(&input("/old-path", None, &h)));
        assert!(!c.matches(&input("/old-path/x", None, &h)));
        assert!(!c.matches(&input("/OLD-path", None, &h)));
        m.ignore_uri_case = true;
        let c = RequestMatch::compile(&m).unwrap();
        assert!(c.matches(&input("/OLD-path", None, &h)));

        m.uri = Some(sm(None, Some("/api"), None));
        m.ignore_uri_case = false;
        let c = RequestMatch::compile(&m).unwrap();
        assert!(c.matches(&input("/api/v1", None, &h)));
        assert!(!c.matches(&input("/ap", None, &h)));

        // Regex is anchored: a substring match is not enough.
        m.uri = Some(sm(None, None, Some("/v[0-9]+/items")));
        let c = RequestMatch::compile(&m).unwrap();
        assert!(c.matches(&input("/v12/items", None, &h)));
        assert!(!c.matches(&input("/x/v12/items", None, &h)));
    }

    #[test]
    fn headers_presence_query_and_without() {
        let mut headers = BTreeMap::new();
        headers.insert("end-user".to_string(), sm(Some("jason"), None, None));
        headers.insert("x-present".to_string(), StringMatch::default());
        let mut q = BTreeMap::new();
        q.insert("tier".to_string(), sm(None, None, Some("gold|silver")));
        let m = HttpMatchRequest {
            headers,
            query_params: q,
            ..Default::default()
        };
        let c = RequestMatch::compile(&m).unwrap();
        let mut h = HeaderMap::new();
        h.insert("end-user", "jason".parse().unwrap());
        assert!(
            !c.matches(&input("/", Some("tier=gold"), &h)),
            "x-present missing"
        );
        h.insert("x-present", "".parse().unwrap());
        assert!(c.matches(&input("/", Some("a=1&tier=gold"), &h)));
        assert!(!c.matches(&input("/", Some("tier=bronze"), &h)));
        assert!(!c.matches(&input("/", None, &h)));
        h.insert("end-user", "Jason".parse().unwrap());
        assert!(!c.matches(&input("/", Some("tier=gold"), &h)));

        let mut wh = BTreeMap::new();
        wh.insert("x-canary".to_string(), sm(Some("true"), None, None));
        let c = RequestMatch::compile(&HttpMatchRequest {
            without_headers: wh,
            ..Default::default()
        })
        .unwrap();
        let mut h = HeaderMap::new();
        assert!(c.matches(&input("/", None, &h)));
        h.insert("x-canary", "true".parse().unwrap());
        assert!(!c.matches(&input("/", None, &h)));
    }

    #[test]
    fn method_port_and_source() {
        let mut labels = BTreeMap::new();
        labels.insert("app".to_string(), "productpage".to_string());
        let c = RequestMatch::compile(&HttpMatchRequest {
            method: Some(sm(Some("POST"), None, None)),
            port: Some(9080),
            source_labels: labels.clone(),
            ..Default::default()
        })
        .unwrap();
        let h = HeaderMap::new();
        let src = WorkloadInfo::for_test("productpage-v1", "default", labels);
        let mut i = input("/", None, &h);
        i.method = &Method::POST;
        assert!(!c.matches(&i), "no source");
        i.source = Some(&src);
        assert!(c.matches(&i));
        i.port = 80;
        assert!(!c.matches(&i));
        assert!(StrMatcher::compile(&sm(Some("a"), Some("b"), None), false, "x").is_err());
        assert!(StrMatcher::compile(&sm(None, None, Some("(")), false, "x").is_err());
    }
}
