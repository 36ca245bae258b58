//! HTTP request path normalisation, as Istio's `meshConfig.pathNormalization` configures Envoy.
//!
//! The normalised path is what authorization and routing see and what is forwarded upstream,
//! so a policy on `/admin*` cannot be bypassed with `/x/../admin`. The modes:
//!
//! - [`PathNormalization::None`]: the path is used as received.
//! - [`PathNormalization::Base`] (Istio's default): Envoy's `normalize_path`, i.e. the
//!   Chromium URL path canonicaliser Envoy embeds: RFC 3986 dot-segment removal, where `%2e`
//!   (either case) counts as a dot; `\` becomes `/`; percent-encoded unreserved characters
//!   (`A-Z a-z 0-9 - _ ~`, and `.` through the dot rule) are decoded; other escapes are kept
//!   exactly as written (`%2F` stays `%2F`); characters that must be escaped (space, `"`, `<`,
//!   `>`, `^`, `` ` ``, `{`, `|`, `}`, controls, non-ASCII) are percent-encoded; `..` never
//!   climbs above the root. Slashes are NOT merged: `//admin` stays `//admin`.
//! - [`PathNormalization::MergeSlashes`]: `Base`, then runs of `/` become one.
//! - [`PathNormalization::DecodeAndMergeSlashes`]: `%2F`/`%2f` and `%5C`/`%5c` are decoded to
//!   `/` and `\` first, then `MergeSlashes`.
//!
//! Examples (`Base`): `/./admin`, `/x/../admin`, `/%2e%2e/admin` and `/%2E./admin` all become
//! `/admin`; `/a/%2F..` is unchanged (the escaped slash is not a separator, so `..` is part of
//! a file name); with `DecodeAndMergeSlashes` it becomes `/a/`.
//!
//! The query string is never touched. A path Envoy refuses to normalise (a NUL, raw or `%00`)
//! is an error, answered 400 by the proxy. Invalid escapes such as `%zz` are passed through,
//! as Envoy does.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

/// Istio's `meshConfig.pathNormalization.normalization`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PathNormalization {
    /// No normalisation (vulnerable to path-confusion bypasses of path policies).
    None,
    /// RFC 3986 normalisation with backslash handling (Envoy `normalize_path`).
    #[default]
    Base,
    /// `Base`, then merge repeated slashes.
    MergeSlashes,
    /// Decode `%2F` and `%5C`, then `MergeSlashes`.
    DecodeAndMergeSlashes,
}

/// Why a path cannot be normalised.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// A NUL character, raw or percent-encoded: Envoy rejects the request.
    #[error("the request path contains a NUL character (raw or %00)")]
    Nul,
}

impl PathNormalization {
    /// Normalises `path_and_query` (the request target's path plus its optional `?query`).
    /// Borrowed when nothing changes.
    pub fn apply(self, path_and_query: &str) -> Result<Cow<'_, str>, PathError> {
        if self == PathNormalization::None {
            return Ok(Cow::Borrowed(path_and_query));
        }
        let (path, query) = match path_and_query.find('?') {
            Some(i) => path_and_query.split_at(i),
            None => (path_and_query, ""),
        };
        let decoded;
        let input: &[u8] = if self == PathNormalization::DecodeAndMergeSlashes {
            decoded = decode_slashes(path.as_bytes());
            &decoded
        } else {
            path.as_bytes()
        };
        let mut out = canonicalize(input)?;
        if self != PathNormalization::Base {
            merge_slashes(&mut out);
        }
        out.extend_from_slice(query.as_bytes());
        if out == path_and_query.as_bytes() {
            return Ok(Cow::Borrowed(path_and_query));
        }
        // Every byte the canonicaliser emits is ASCII (non-ASCII input is percent-encoded)
        // and the query is the caller's own UTF-8.
        Ok(Cow::Owned(String::from_utf8(out).expect(
            "normalised path is ASCII plus the original query",
        )))
    }
}

/// How the canonicaliser treats one byte (Chromium's path character classes).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Copied as is, raw or escaped.
    Pass,
    /// Percent-encoded when raw.
    Escape,
    /// Decoded when percent-encoded.
    Unescape,
    /// Refused (NUL).
    Invalid,
    /// `.`, `\` and `%`: handled by their own rules.
    Special,
}

fn class(b: u8) -> Class {
    match b {
        0 => Class::Invalid,
        b'.' | b'\\' | b'%' => Class::Special,
        b'-' | b'_' | b'~' | b'0'..=b'9' | b'A'..=b'Z' | b'a'..=b'z' => Class::Unescape,
        0x01..=0x20 | b'"' | b'#' | b'<' | b'>' | b'?' | b'^' | b'`' | b'{' | b'|' | b'}' => {
            Class::Escape
        }
        0x7f..=0xff => Class::Escape,
        _ => Class::Pass,
    }
}

fn is_slash(b: u8) -> bool {
    b == b'/' || b == b'\\'
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// The byte a `%XY` escape at `i` stands for, if it is a complete, valid escape.
fn decode_escaped(s: &[u8], i: usize) -> Option<u8> {
    if i + 3 > s.len() {
        return None;
    }
    Some(hex(s[i + 1])? << 4 | hex(s[i + 2])?)
}

/// Length of a dot at `i`: 1 for `.`, 3 for `%2e`/`%2E`, 0 otherwise.
fn dot_len(s: &[u8], i: usize) -> usize {
    match s.get(i..) {
        Some([b'.', ..]) => 1,
        Some([b'%', b'2', b'e' | b'E', ..]) => 3,
        _ => 0,
    }
}

enum AfterDot {
    /// Part of a file name.
    Name,
    /// `.`: the current directory; consumes this many input bytes after the dot.
    Current(usize),
    /// `..`: the parent directory; consumes this many input bytes after the first dot.
    Parent(usize),
}

fn classify_after_dot(s: &[u8], after: usize) -> AfterDot {
    if after == s.len() {
        return AfterDot::Current(0);
    }
    if is_slash(s[after]) {
        return AfterDot::Current(1);
    }
    let second = dot_len(s, after);
    if second > 0 {
        let end = after + second;
        if end == s.len() {
            return AfterDot::Parent(second);
        }
        if is_slash(s[end]) {
            return AfterDot::Parent(second + 1);
        }
    }
    AfterDot::Name
}

/// Drops the last path segment of `out` (which ends with `/`), never above the root.
fn back_up(out: &mut Vec<u8>) {
    let mut i = out.len() - 1;
    if i == 0 {
        return;
    }
    i -= 1;
    while out[i] != b'/' && i > 0 {
        i -= 1;
    }
    out.truncate(i + 1);
}

fn push_escaped(out: &mut Vec<u8>, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]);
}

/// After decoding a byte right behind a `%` that did not start a valid escape, the output may
/// now spell a valid escape (`%%300` would read `%00`): that `%` becomes `%25` so a later
/// decoder cannot see something the policy did not.
fn guard_nested_escape(input: &[u8], next: usize, percent: usize, out: &mut Vec<u8>) {
    let len = out.len();
    let last = out[len - 1];
    let append_next = percent + 2 == len;
    if append_next {
        if next == input.len() || input[next] >= 0x80 {
            return;
        }
        out.push(input[next]);
    }
    if decode_escaped(out, percent).is_some() {
        if !append_next {
            out.push(out[percent + 1]);
        }
        out[percent + 1] = b'2';
        out[percent + 2] = b'5';
        out.push(last);
    } else if append_next {
        out.truncate(len);
    }
}

/// Envoy's `normalize_path` on the path part (no query).
fn canonicalize(path: &[u8]) -> Result<Vec<u8>, PathError> {
    let mut out = Vec::with_capacity(path.len() + 1);
    if path.first().is_none_or(|b| !is_slash(*b)) {
        out.push(b'/');
    }
    let mut invalid_percent: Option<usize> = None;
    let mut i = 0;
    while i < path.len() {
        let b = path[i];
        let dots = dot_len(path, i);
        if dots > 0 {
            if out.last() == Some(&b'/') {
                match classify_after_dot(path, i + dots) {
                    AfterDot::Name => out.push(b'.'),
                    AfterDot::Current(n) => i += n,
                    AfterDot::Parent(n) => {
                        back_up(&mut out);
                        i += n;
                    }
                }
            } else {
                out.push(b'.');
            }
            i += dots;
            continue;
        }
        match (b, class(b)) {
            (b'\\', _) => out.push(b'/'),
            (b'%', _) => match decode_escaped(path, i) {
                Some(v) if class(v) == Class::Unescape => {
                    out.push(v);
                    if invalid_percent.is_some_and(|p| p + 3 >= out.len()) {
                        let p = invalid_percent.expect("checked above");
                        guard_nested_escape(path, i + 3, p, &mut out);
                    }
                    i += 2;
                }
                Some(v) => {
                    out.extend_from_slice(&path[i..i + 3]);
                    if v == 0 {
                        return Err(PathError::Nul);
                    }
                    i += 2;
                }
                None => {
                    invalid_percent = Some(out.len());
                    out.push(b'%');
                }
            },
            (_, Class::Invalid) => return Err(PathError::Nul),
            (_, Class::Escape) => push_escaped(&mut out, b),
            _ => out.push(b),
        }
        i += 1;
    }
    Ok(out)
}

/// `%2F`/`%2f` → `/` and `%5C`/`%5c` → `\` (Envoy's `UNESCAPE_AND_FORWARD`).
fn decode_slashes(path: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        match path.get(i..i + 3) {
            Some([b'%', b'2', b'f' | b'F']) => {
                out.push(b'/');
                i += 3;
            }
            Some([b'%', b'5', b'c' | b'C']) => {
                out.push(b'\\');
                i += 3;
            }
            _ => {
                out.push(path[i]);
                i += 1;
            }
        }
    }
    out
}

/// Collapses every run of `/` into one.
fn merge_slashes(path: &mut Vec<u8>) {
    path.dedup_by(|a, b| *a == b'/' && *b == b'/');
}

#[cfg(test)]
mod tests {
    use super::PathNormalization::{self, *};
    use super::*;

    fn norm(mode: PathNormalization, p: &str) -> String {
        mode.apply(p).unwrap().into_owned()
    }

    #[test]
    fn base_removes_dot_segments_including_encoded_dots() {
        for (input, want) in [
            ("/x/../admin", "/admin"),
            ("/./admin", "/admin"),
            ("/%2e%2e/admin", "/admin"),
            ("/%2E./admin", "/admin"),
            ("/%2E%2e/admin", "/admin"),
            ("/a/b/../../../admin", "/admin"),
            ("/a/.", "/a/"),
            ("/a/..", "/"),
            ("/a/b/..", "/a/"),
            ("/a..b/c", "/a..b/c"),
            ("/a/.b", "/a/.b"),
            ("/a/...", "/a/..."),
            ("/a%2e%2e/b", "/a../b"),
            ("/..", "/"),
            ("/", "/"),
        ] {
            assert_eq!(norm(Base, input), want, "{input}");
        }
    }

    #[test]
    fn base_keeps_slashes_and_escaped_slashes() {
        assert_eq!(norm(Base, "//admin"), "//admin");
        assert_eq!(norm(Base, "/a//b/"), "/a//b/");
        assert_eq!(norm(Base, "/a/%2F.."), "/a/%2F..");
        assert_eq!(norm(Base, "/a%2fb"), "/a%2fb");
        assert_eq!(norm(Base, "/a%5Cb"), "/a%5Cb");
    }

    #[test]
    fn base_converts_backslashes_and_adds_leading_slash() {
        assert_eq!(norm(Base, "\\admin"), "/admin");
        assert_eq!(norm(Base, "/a\\..\\admin"), "/admin");
        assert_eq!(norm(Base, "admin"), "/admin");
        assert_eq!(norm(Base, ""), "/");
    }

    #[test]
    fn base_decodes_unreserved_and_escapes_unsafe() {
        assert_eq!(norm(Base, "/%61%62%63/%7E%5f%2D%30"), "/abc/~_-0");
        assert_eq!(norm(Base, "/some%2fdata/%61%62%63"), "/some%2fdata/abc");
        assert_eq!(
            norm(Base, "/a b\"<>^`{|}"),
            "/a%20b%22%3C%3E%5E%60%7B%7C%7D"
        );
        assert_eq!(norm(Base, "/caf\u{e9}"), "/caf%C3%A9");
        // Escapes of reserved characters keep their original spelling.
        assert_eq!(norm(Base, "/a%3fb%3Fc%25"), "/a%3fb%3Fc%25");
    }

    #[test]
    fn base_passes_invalid_escapes_and_guards_nested_ones() {
        assert_eq!(norm(Base, "/a%zz"), "/a%zz");
        assert_eq!(norm(Base, "/a%"), "/a%");
        assert_eq!(norm(Base, "/a%4"), "/a%4");
        assert_eq!(norm(Base, "/%%300"), "/%2500");
        assert_eq!(norm(Base, "/%%30%30"), "/%2500");
    }

    #[test]
    fn nul_is_refused() {
        assert_eq!(Base.apply("/a%00b"), Err(PathError::Nul));
        assert_eq!(Base.apply("/a\0b"), Err(PathError::Nul));
        assert_eq!(MergeSlashes.apply("/a%00"), Err(PathError::Nul));
        assert_eq!(None.apply("/a%00").unwrap(), "/a%00");
    }

    #[test]
    fn query_is_untouched() {
        assert_eq!(
            norm(Base, "/x/../a?b=/../c&d=%2e%2e"),
            "/a?b=/../c&d=%2e%2e"
        );
        assert_eq!(norm(MergeSlashes, "//a?x=//y"), "/a?x=//y");
        assert!(matches!(Base.apply("/a?x=1").unwrap(), Cow::Borrowed(_)));
    }

    #[test]
    fn merge_and_decode_modes() {
        assert_eq!(norm(MergeSlashes, "//admin"), "/admin");
        assert_eq!(norm(MergeSlashes, "/a//b///c/"), "/a/b/c/");
        assert_eq!(norm(MergeSlashes, "/a/%2F.."), "/a/%2F..");
        assert_eq!(norm(DecodeAndMergeSlashes, "/a/%2F.."), "/a/");
        assert_eq!(norm(DecodeAndMergeSlashes, "/a%2fb"), "/a/b");
        assert_eq!(norm(DecodeAndMergeSlashes, "/a%5cb"), "/a/b");
        assert_eq!(norm(DecodeAndMergeSlashes, "/x%2F..%2Fadmin"), "/admin");
        assert_eq!(norm(None, "/x/../admin"), "/x/../admin");
    }

    #[test]
    fn modes_parse_as_istio_spells_them() {
        let m: PathNormalization = serde_yaml::from_str("DECODE_AND_MERGE_SLASHES").unwrap();
        assert_eq!(m, DecodeAndMergeSlashes);
        assert_eq!(PathNormalization::default(), Base);
    }
}
