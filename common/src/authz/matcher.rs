//! Compiled matchers and their evaluation: string patterns, CIDRs and ports, clauses (one
//! attribute tested against one field's values), the conjunctions built from a `source`, an
//! `operation` or a rule's `when` list, and rules.
//!
//! Where HTTP leaves room for interpretation (method case, repeated headers, a host with or
//! without its port) a clause is compiled either strict or loose, whichever makes its rule
//! match in the safer direction: positive fields of a DENY rule and negated fields of an ALLOW
//! rule are loose (they match more), the others strict. So `get` cannot slip past a DENY on
//! `GET`, and a second `x-user` header cannot satisfy an ALLOW that the joined value fails.

use std::cell::OnceCell;
use std::net::IpAddr;

use http::header::{HeaderMap, HeaderName};
use ipnet::IpNet;
use serde::{Serialize, Serializer};

use super::{Attributes, RequestAttributes};

/// Istio's value forms: exact, `prefix*`, `*suffix` and `*` (present, any value).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum StrMatch {
    Presence,
    Exact(String),
    Prefix(String),
    Suffix(String),
}

impl StrMatch {
    /// Parses a value as Istio does: `*` alone, then a leading `*`, then a trailing `*`.
    pub(super) fn parse(s: &str) -> StrMatch {
        if s == "*" {
            StrMatch::Presence
        } else if let Some(suffix) = s.strip_prefix('*') {
            StrMatch::Suffix(suffix.to_string())
        } else if let Some(prefix) = s.strip_suffix('*') {
            StrMatch::Prefix(prefix.to_string())
        } else {
            StrMatch::Exact(s.to_string())
        }
    }

    fn matches(&self, v: &[u8], fold: bool) -> bool {
        let eq = |a: &[u8], b: &[u8]| {
            if fold {
                a.eq_ignore_ascii_case(b)
            } else {
                a == b
            }
        };
        match self {
            StrMatch::Presence => true,
            StrMatch::Exact(e) => eq(v, e.as_bytes()),
            StrMatch::Prefix(p) => v.len() >= p.len() && eq(&v[..p.len()], p.as_bytes()),
            StrMatch::Suffix(s) => v.len() >= s.len() && eq(&v[v.len() - s.len()..], s.as_bytes()),
        }
    }
}

fn any_str(pats: &[StrMatch], v: &[u8], fold: bool) -> bool {
    pats.iter().any(|p| p.matches(v, fold))
}

fn ser_header_name<S: Serializer>(n: &HeaderName, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(n.as_str())
}

/// The attribute a clause tests, with its field's values (any may match).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Test {
    Principal(Vec<StrMatch>),
    Namespace(Vec<StrMatch>),
    SourceIp(Vec<IpNet>),
    RemoteIp(Vec<IpNet>),
    DestinationIp(Vec<IpNet>),
    DestinationPort(Vec<u16>),
    Host(Vec<StrMatch>),
    Method(Vec<StrMatch>),
    Path(Vec<StrMatch>),
    Header {
        #[serde(serialize_with = "ser_header_name")]
        name: HeaderName,
        values: Vec<StrMatch>,
    },
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// One field of a rule: holds when any value matches, or, negated, when none does.
#[derive(Clone, Debug, Serialize)]
pub(super) struct Clause {
    pub(super) test: Test,
    #[serde(skip_serializing_if = "is_false")]
    pub(super) negated: bool,
    /// Match the permissive way (see the module docs).
    #[serde(skip_serializing_if = "is_false")]
    pub(super) loose: bool,
}

/// Clauses that must all hold.
pub(super) type Conjunction = Vec<Clause>;

/// A compiled rule: any `from` source, any `to` operation (an empty list accepts anything),
/// and every `when` condition.
#[derive(Clone, Debug, Serialize)]
pub(super) struct CompiledRule {
    /// Index of the rule in the policy's `rules`.
    pub(super) index: usize,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(super) from: Vec<Conjunction>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(super) to: Vec<Conjunction>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(super) when: Conjunction,
}

/// The attributes of one evaluation, with what is derived from them computed at most once.
pub(super) struct Ctx<'a> {
    attrs: &'a Attributes<'a>,
    principal: OnceCell<Option<String>>,
    source_ip: IpAddr,
    remote_ip: IpAddr,
    destination_ip: IpAddr,
}

impl<'a> Ctx<'a> {
    pub(super) fn new(attrs: &'a Attributes<'a>) -> Self {
        // A dual-stack socket reports IPv4 peers as `::ffff:a.b.c.d`; policies name them as
        // IPv4.
        Ctx {
            attrs,
            principal: OnceCell::new(),
            source_ip: attrs.source_ip.to_canonical(),
            remote_ip: attrs.remote_ip.to_canonical(),
            destination_ip: attrs.destination_ip.to_canonical(),
        }
    }

    fn principal(&self) -> Option<&str> {
        self.principal
            .get_or_init(|| self.attrs.source.map(|i| i.principal()))
            .as_deref()
    }
}

/// `host[:port]` without its port (`[v6]:port` keeps its brackets).
fn strip_port(authority: &str) -> &str {
    match authority.rsplit_once(':') {
        Some((h, p))
            if !p.is_empty()
                && p.bytes().all(|b| b.is_ascii_digit())
                && (!h.contains(':') || h.ends_with(']')) =>
        {
            h
        }
        _ => authority,
    }
}

/// Envoy reads a repeated header as its values joined with `,`; a loose match also accepts
/// any single value.
fn header_matches(pats: &[StrMatch], headers: &HeaderMap, name: &HeaderName, loose: bool) -> bool {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return false;
    };
    let rest: Vec<_> = values.collect();
    if rest.is_empty() {
        return any_str(pats, first.as_bytes(), false);
    }
    let mut joined = first.as_bytes().to_vec();
    for v in &rest {
        joined.push(b',');
        joined.extend_from_slice(v.as_bytes());
    }
    any_str(pats, &joined, false)
        || (loose
            && std::iter::once(first)
                .chain(rest)
                .any(|v| any_str(pats, v.as_bytes(), false)))
}

fn request_test(t: &Test, r: &RequestAttributes<'_>, loose: bool) -> bool {
    match t {
        Test::Host(p) => {
            any_str(p, r.host.as_bytes(), true)
                || (loose && any_str(p, strip_port(r.host).as_bytes(), true))
        }
        Test::Method(p) => any_str(p, r.method.as_bytes(), loose),
        Test::Path(p) => any_str(p, r.path.as_bytes(), false),
        Test::Header { name, values } => header_matches(values, r.headers, name, loose),
        _ => unreachable!("only request attributes are tested here"),
    }
}

impl Clause {
    /// `deny_like`: the rule belongs to a policy that denies when it matches; an HTTP clause
    /// evaluated without a request then holds (a DENY fails closed) or fails (an ALLOW does).
    fn holds(&self, cx: &Ctx<'_>, deny_like: bool) -> bool {
        let hit = match &self.test {
            Test::Principal(p) => cx
                .principal()
                .is_some_and(|v| any_str(p, v.as_bytes(), false)),
            Test::Namespace(p) => cx
                .attrs
                .source
                .is_some_and(|i| any_str(p, i.namespace.as_bytes(), false)),
            Test::SourceIp(n) => n.iter().any(|n| n.contains(&cx.source_ip)),
            Test::RemoteIp(n) => n.iter().any(|n| n.contains(&cx.remote_ip)),
            Test::DestinationIp(n) => n.iter().any(|n| n.contains(&cx.destination_ip)),
            Test::DestinationPort(p) => p.contains(&cx.attrs.destination_port),
            t => match &cx.attrs.request {
                Some(r) => request_test(t, r, self.loose),
                None => return deny_like,
            },
        };
        hit != self.negated
    }
}

fn all(c: &Conjunction, cx: &Ctx<'_>, deny_like: bool) -> bool {
    c.iter().all(|cl| cl.holds(cx, deny_like))
}

impl CompiledRule {
    pub(super) fn matches(&self, cx: &Ctx<'_>, deny_like: bool) -> bool {
        let any =
            |list: &[Conjunction]| list.is_empty() || list.iter().any(|c| all(c, cx, deny_like));
        any(&self.from) && any(&self.to) && all(&self.when, cx, deny_like)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_forms() {
        let m = |p: &str, v: &str| StrMatch::parse(p).matches(v.as_bytes(), false);
        assert!(m("*", ""));
        assert!(m("abc", "abc") && !m("abc", "abcd"));
        assert!(m("ab*", "abcd") && !m("ab*", "xab"));
        assert!(m("*cd", "abcd") && !m("*cd", "cdx"));
        // A leading `*` wins, as in Istio: `*a*` is a suffix match on `a*`.
        assert_eq!(StrMatch::parse("*a*"), StrMatch::Suffix("a*".into()));
        assert!(StrMatch::parse("GET").matches(b"get", true));
    }

    #[test]
    fn ports_are_stripped_only_from_authorities() {
        assert_eq!(strip_port("a.b:80"), "a.b");
        assert_eq!(strip_port("a.b"), "a.b");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("::1"), "::1");
        assert_eq!(strip_port("a:"), "a:");
    }

    #[test]
    fn repeated_headers_join_and_loose_single_values() {
        let mut h = HeaderMap::new();
        h.append("x-user", "alice".parse().unwrap());
        h.append("x-user", "bob".parse().unwrap());
        let n = HeaderName::from_static("x-user");
        let p = |s: &str| vec![StrMatch::parse(s)];
        assert!(header_matches(&p("alice,bob"), &h, &n, false));
        assert!(!header_matches(&p("bob"), &h, &n, false));
        assert!(header_matches(&p("bob"), &h, &n, true));
        assert!(!header_matches(
            &p("x"),
            &h,
            &HeaderName::from_static("x-none"),
            true
        ));
    }
}
