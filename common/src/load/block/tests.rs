//! The block reader against serde_yaml: every fixture, the deployment files, synthesized
//! configurations, scalar spellings one by one, edge-case documents and randomly generated
//! ones must decode to the same values, or be left to serde_yaml.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_yaml::Value;

use super::{from_events, parse, Scratch};
use crate::duration::Duration;
use crate::k8s::IntOrString;
use crate::load::decode::{block_path, typed_fast};
use crate::load::split_documents;

/// `Some(value)` when the block reader decodes `doc` as `T`.
fn block<T: DeserializeOwned>(doc: &str) -> Option<T> {
    from_events(&parse(doc, &mut Scratch::default())?).ok()
}

/// Asserts that whatever the block reader decodes, serde_yaml decodes identically. Returns
/// whether the block reader decoded it.
fn agrees<T: DeserializeOwned + PartialEq + std::fmt::Debug>(doc: &str) -> bool {
    let Some(ours) = block::<T>(doc) else {
        return false;
    };
    let theirs: T = serde_yaml::from_str(doc)
        .unwrap_or_else(|e| panic!("serde_yaml rejects what the block reader took ({e}):\n{doc}"));
    assert_eq!(ours, theirs, "different values for:\n{doc}");
    true
}

/// Values compare NaN unequal to itself; the debug form does not.
fn agrees_value(doc: &str) -> bool {
    let Some(ours) = block::<Value>(doc) else {
        return false;
    };
    let theirs: Value = serde_yaml::from_str(doc).unwrap();
    assert_eq!(format!("{ours:?}"), format!("{theirs:?}"), "for:\n{doc}");
    true
}

/// Every document of `text`: the generic value and the typed resource (with the ignored
/// fields) agree. Returns (documents, documents the block reader decoded as resources).
fn check_file(text: &str) -> (usize, usize) {
    let (mut docs, mut typed) = (0, 0);
    for (_, range) in split_documents(text) {
        let doc = &text[range];
        if serde_yaml::from_str::<Value>(doc).is_ok_and(|v| v.is_null()) {
            continue; // comments only
        }
        docs += 1;
        agrees_value(doc);
        if let Some((kind, resource, ignored)) = block_path(doc, &mut Scratch::default()) {
            let theirs = typed_fast(kind, serde_yaml::Deserializer::from_str(doc))
                .unwrap_or_else(|| panic!("serde_yaml fails on:\n{doc}"));
            assert_eq!((resource, ignored), theirs, "for:\n{doc}");
            typed += 1;
        }
    }
    (docs, typed)
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn fixtures_and_deploy_files_decode_as_with_serde_yaml() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for dir in [
        root.join("../tests/fixtures/istio"),
        root.join("../deploy/local"),
        root.join("tests/data/cluster"),
    ] {
        let files = yaml_files(&dir);
        assert!(!files.is_empty(), "{}", dir.display());
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            let (docs, typed) = check_file(&text);
            // Every object in these files is written in the subset.
            assert_eq!(typed, docs, "{} fell back", f.display());
        }
    }
}

#[test]
fn synthesized_configuration_decodes_as_with_serde_yaml() {
    let dir = tempfile::tempdir().unwrap();
    let scale = crate::synth::Scale {
        namespaces: 2,
        services: 6,
        pods: 24,
        virtual_services: 6,
    };
    crate::synth::write_config(dir.path(), scale).unwrap();
    let mut total = 0;
    for f in yaml_files(dir.path()) {
        let (docs, typed) = check_file(&std::fs::read_to_string(f).unwrap());
        assert_eq!(typed, docs);
        total += docs;
    }
    assert_eq!(total, 2 + 6 + 24 + 12);
}

/// Every type a resource field has, each reachable by one key.
#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct Probe {
    s: Option<String>,
    text: Option<String>,
    u: Option<u16>,
    i: Option<i64>,
    f: Option<f64>,
    b: Option<bool>,
    any: Option<Value>,
    port: Option<IntOrString>,
    d: Option<Duration>,
    list: Option<Vec<String>>,
    map: Option<BTreeMap<String, String>>,
    lb: Option<crate::istio::networking::SimpleLb>,
}

const SPELLINGS: &[&str] = &[
    "",
    "~",
    "null",
    "Null",
    "NULL",
    "nULL",
    "true",
    "True",
    "TRUE",
    "tRUE",
    "false",
    "FALSE",
    "yes",
    "no",
    "on",
    "off",
    "y",
    "n",
    "0",
    "00",
    "08",
    "-0",
    "-08",
    "7",
    "-7",
    "+7",
    "80",
    "65535",
    "65536",
    "-1",
    "007",
    "0x1F",
    "0o17",
    "0b101",
    "-0x1F",
    "1e3",
    "1E3",
    "1.5",
    "-1.5",
    "01.5",
    "1.",
    ".5",
    "+1.5",
    ".inf",
    "-.inf",
    ".nan",
    ".NaN",
    "inf",
    "nan",
    "Infinity",
    "1_000",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775808",
    "-9223372036854775809",
    "1.2.3",
    "10.0.0.1",
    "::1",
    "3s",
    "1m30s",
    "500ms",
    "0.5s",
    "abc",
    "a b",
    "a#b",
    "a # comment",
    "http://x:80/y",
    "-x",
    "ROUND_ROBIN",
    "\"80\"",
    "'80'",
    "\"\"",
    "''",
    "\"true\"",
    "'null'",
    "\"a: b # c\"",
    "'it''s'",
    "\"tab\\there\"",
    "\"\\u00e9\\x41\\\\\\\"\"",
    "\"\\q\"",
    "\"\\ud800\"",
    "é",
    "[]",
    "[a, b]",
    "['x', \"y\"]",
    "[1, 2]",
    "{}",
    "[a,]",
    "[a, [b]]",
    "{a: 1}",
    "&a x",
    "*a",
    "!!str 80",
    "|",
    ">",
    "a: b",
    "'unclosed",
    "@x",
    "`x",
    "%x",
    "? x",
    ": x",
];

#[test]
fn scalar_spellings_read_as_serde_yaml_reads_them() {
    let fields = [
        "s", "text", "u", "i", "f", "b", "any", "port", "d", "list", "map", "lb",
    ];
    for spelling in SPELLINGS {
        for field in fields {
            agrees::<Probe>(&format!("{field}: {spelling}\n"));
        }
        agrees::<Probe>(&format!("list:\n- {spelling}\n"));
        agrees::<Probe>(&format!("map:\n  k: {spelling}\n"));
        agrees::<Probe>(&format!("map:\n  {spelling}: v\n"));
        agrees::<Probe>(&format!("any:\n  {spelling}: v\n"));
        agrees_value(&format!("k: {spelling}\n"));
    }
}

#[test]
fn core_schema_cases_are_decided_here() {
    let probe = |doc: &str| block::<Probe>(doc).unwrap_or_else(|| panic!("fell back: {doc}"));
    assert_eq!(probe("u: 80").u, Some(80));
    assert_eq!(probe("port: 80").port, Some(IntOrString::Int(80)));
    assert_eq!(
        probe("port: \"80\"").port,
        Some(IntOrString::String("80".into()))
    );
    assert_eq!(
        probe("port: http").port,
        Some(IntOrString::String("http".into()))
    );
    assert_eq!(probe("s: 08").s.as_deref(), Some("08"));
    assert_eq!(probe("any: 08").any, Some(Value::String("08".into())));
    assert_eq!(probe("any: yes").any, Some(Value::String("yes".into())));
    assert_eq!(probe("any: 1.5").any, Some(Value::from(1.5)));
    assert_eq!(probe("any: -7").any, Some(Value::from(-7)));
    assert_eq!(probe("any: ~").any, None);
    assert_eq!(probe("s: ~").s, None);
    assert_eq!(probe("s: '~'").s.as_deref(), Some("~"));
    assert_eq!(probe("text: a # c").text.as_deref(), Some("a"));
    assert_eq!(probe("b: True").b, Some(true));
    assert_eq!(probe("d: 1m30s").d, Some(Duration::from_secs(90)));
    assert_eq!(probe("d: 0").d, Some(Duration::ZERO));
    assert_eq!(probe("list:").list, None);
    assert_eq!(probe("list:\n- a").list, Some(vec!["a".to_string()]));
    assert_eq!(
        probe("lb: ROUND_ROBIN").lb,
        Some(crate::istio::networking::SimpleLb::RoundRobin)
    );
    // Left to serde_yaml: refused by it, or spelled in ways decided there.
    for doc in [
        "u: \"80\"",
        "u: 0x50",
        "u: +80",
        "f: 1e3",
        "f: .inf",
        "b: yes",
        "any: 0x1F",
    ] {
        assert!(block::<Probe>(doc).is_none(), "{doc}");
    }
}

#[test]
fn quoted_strings_keep_indicators_and_escapes() {
    let doc = r#"
a: "x: y # not a comment"
b: 'single: ''quoted'' # still text'
c: "esc \"q\" \\ \t \u00e9 \x41 \/"
"quoted key": 1
'single key': 2
d: plain with 'quotes' and "doubles"
e: a#b # a comment
"#;
    assert!(agrees_value(doc));
    let v: Value = block(doc).unwrap();
    assert_eq!(v["a"], Value::from("x: y # not a comment"));
    assert_eq!(v["b"], Value::from("single: 'quoted' # still text"));
    assert_eq!(v["c"], Value::from("esc \"q\" \\ \t é A /"));
    assert_eq!(v["e"], Value::from("a#b"));
}

#[test]
fn block_layouts_read_as_serde_yaml_reads_them() {
    let docs = [
        // Sequences at the key's indentation (kubectl) and deeper, sequences of mappings.
        "spec:\n  http:\n  - match:\n    - headers:\n        end-user:\n          exact: jason\n    route:\n    - destination:\n        host: r\n      weight: 90\n",
        "spec:\n  http:\n    - route:\n        - destination: {}\n          weight: 1\n",
        // Extra spaces after `-`, nested sequences, `-` alone, empty values.
        "a:\n-   x: 1\n    y: 2\n- - p\n  - q\n-\n  z: 3\n-\n- ''\nb:\nc: []\nd: {}\n",
        // Comments and blank lines anywhere, indented root, trailing spaces.
        "# head\n\n  a: 1   \n    # deep comment\n  b:   # after key\n\n    - x # after item\n  c: 'v'  # after quote\n",
        // CRLF line endings.
        "a: 1\r\nb:\r\n- x\r\n- 'y'\r\nc:\r\n  d: \"e\"\r\n",
        // Flow sequences of scalars.
        "hosts: [a, \"b c\", 'd', 1, ~]\nempty: [ ]\n",
        // Keys that look like other things.
        "80: a\ntrue: b\n~: c\n\"null\": d\nhttp://x: e\n-k: f\nk k: g\n",
    ];
    for doc in docs {
        assert!(agrees_value(doc), "fell back:\n{doc}");
    }
}

#[test]
fn constructs_outside_the_subset_fall_back() {
    let docs = [
        "a:\tb\n",
        "a:\n\t- b\n",
        "a: &x 1\nb: *x\n",
        "a: !!str 1\n",
        "a: !custom\n  b: 1\n",
        "a: |\n  text\n",
        "a: >-\n  folded\n",
        "a: multi\n  line\n",
        "a: \"multi\n  line\"\n",
        "a: 'multi\n  line'\n",
        "a: \"continued \\\n  here\"\n",
        "? complex\n: key\n",
        "a: {b: 1}\n",
        "a: [b, [c]]\n",
        "a: [b,\n  c]\n",
        "a: [b,]\n",
        "a: 1\na: 2\n",
        "<<: {a: 1}\n",
        "%YAML 1.2\n---\na: 1\n",
        "- a\n- b\n",
        "plain scalar\n",
        "",
        "# only a comment\n",
        "a: b: c\n",
        "a: 1\n  b: 2\n",
        "a:\n    b: 1\n  c: 2\n",
        "a: 1\r b: 2\n",
        "\u{feff}a: 1\n",
        "a: \u{85}\n",
        "a: 'x'y\n",
        "a: \"x\"#c\n",
    ];
    for doc in docs {
        assert!(
            parse(doc, &mut Scratch::default()).is_none(),
            "read:\n{doc:?}"
        );
    }
}

#[test]
fn duplicate_keys_are_checked_per_mapping() {
    // The same key in sibling mappings is fine; repeated in one mapping it is not read here.
    assert!(agrees_value("a:\n  k: 1\nb:\n  k: 2\nl:\n- k: 1\n- k: 2\n"));
    assert!(parse("a:\n  k: 1\n  'k': 2\n", &mut Scratch::default()).is_none());
}

/// A deterministic generator of documents inside the subset (xorshift, no dependency).
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn scalar(&mut self) -> String {
        const S: &[&str] = &[
            "",
            "~",
            "null",
            "true",
            "False",
            "yes",
            "0",
            "08",
            "-3",
            "42",
            "1.5",
            "abc",
            "a b",
            "10.0.0.1",
            "3s",
            "'q'",
            "'it''s'",
            "\"d q\"",
            "\"e\\n\\\"\"",
            "\"a: b\"",
            "x # c",
            "[]",
            "{}",
            "[a, 'b', 2]",
            "-x",
            "http://h:1/p",
            "é",
        ];
        self.pick(S).to_string()
    }

    fn key(&mut self) -> &'static str {
        self.pick(&[
            "a", "b", "c", "d", "e", "f", "80", "true", "'q k'", "\"k:\"", "x.y/z",
        ])
    }

    /// A node written at `indent`, for a parent that puts it after `key:` or `- `.
    fn node(&mut self, out: &mut String, indent: usize, depth: usize, after_dash: bool) {
        let kind = if depth > 4 { 0 } else { self.next() % 3 };
        match kind {
            0 => {
                out.push(' ');
                out.push_str(&self.scalar());
                out.push('\n');
            }
            1 => {
                // A mapping: inline after `- `, else on the following lines.
                let n = 1 + self.next() % 3;
                let mut used = Vec::new();
                let inner = indent + 2;
                for j in 0..n {
                    let k = self.key();
                    if used
                        .iter()
                        .any(|u: &&str| u.trim_matches(['\'', '"']) == k.trim_matches(['\'', '"']))
                    {
                        continue;
                    }
                    used.push(k);
                    if j == 0 && after_dash {
                        out.push(' ');
                    } else {
                        if j == 0 {
                            out.push('\n');
                        }
                        out.push_str(&" ".repeat(inner));
                    }
                    out.push_str(k);
                    out.push(':');
                    self.node(out, inner, depth + 1, false);
                }
                if used.is_empty() {
                    out.push_str(" {}\n");
                }
            }
            _ => {
                // A sequence; at the parent key's own indentation half the time.
                let n = 1 + self.next() % 3;
                let at = if !after_dash && self.chance(50) {
                    indent
                } else {
                    indent + 2
                };
                out.push('\n');
                for _ in 0..n {
                    if self.chance(10) {
                        out.push_str(&" ".repeat(at));
                        out.push_str("# comment\n");
                    }
                    out.push_str(&" ".repeat(at));
                    out.push('-');
                    self.node(out, at, depth + 1, true);
                }
            }
        }
    }
}

#[test]
fn generated_documents_read_as_serde_yaml_reads_them() {
    let mut g = Gen(0x9e37_79b9_7f4a_7c15);
    let mut read = 0;
    for round in 0..3000 {
        let mut doc = String::new();
        let keys = ["apiVersion", "kind", "metadata", "spec", "status"];
        for k in keys.iter().take(1 + round % 5) {
            doc.push_str(k);
            doc.push(':');
            g.node(&mut doc, 0, 0, false);
        }
        if round % 7 == 0 {
            doc = doc.replace('\n', "\r\n");
        }
        if agrees_value(&doc) {
            read += 1;
        } else if std::env::var_os("SHOW_FALLBACKS").is_some() {
            eprintln!("---\n{doc}");
        }
    }
    // Every generated document is inside the subset.
    assert_eq!(read, 3000);
}
