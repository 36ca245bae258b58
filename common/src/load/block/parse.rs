//! Text to events: a line-oriented parser for the block-style YAML subset.
//!
//! Every line is classified by its indentation and its first characters; a node is a block
//! mapping (`key: value` lines at one indentation), a block sequence (`- item` lines), or a
//! single-line scalar. Anything outside the subset makes [`parse`] return `None` rather than
//! guess, so the caller hands the document to the full YAML parser, which then decides (and
//! reports errors precisely).

use std::borrow::Cow;

/// One step of a depth-first walk over the document's nodes.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Event<'a> {
    MapStart,
    MapEnd,
    SeqStart,
    SeqEnd,
    /// An unquoted scalar: its type (null, bool, number, string) is decided when it is read,
    /// by the type asked for, as YAML's core schema says.
    Plain(&'a str),
    /// A quoted scalar: always a string. Borrowed when it had no escapes to undo.
    Quoted(Cow<'a, str>),
}

/// Deeper nesting than any Kubernetes object has; also bounds the recursion.
const MAX_DEPTH: usize = 64;

/// One non-blank, non-comment line: its indentation and the text after it (without a
/// trailing `\r`).
#[derive(Clone, Copy)]
struct Line<'a> {
    indent: usize,
    text: &'a str,
}

/// Parses one document (the text between `---` markers) whose root is a block mapping.
/// `None` when the text uses anything outside the subset, or is not valid YAML.
pub(crate) fn parse(doc: &str) -> Option<Vec<Event<'_>>> {
    if !plain_characters(doc) {
        return None;
    }
    let mut lines = Vec::with_capacity(doc.len() / 16);
    for raw in doc.split('\n') {
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        if raw.contains('\r') {
            return None; // a bare CR is a line break to YAML
        }
        let text = raw.trim_start_matches(' ');
        if text.is_empty() || text.starts_with('#') {
            continue;
        }
        lines.push(Line {
            indent: raw.len() - text.len(),
            text,
        });
    }
    let first = *lines.first()?;
    if is_seq_entry(first.text) {
        return None; // only objects are decoded here
    }
    let mut p = Parser {
        lines,
        i: 0,
        out: Vec::with_capacity(doc.len() / 8),
        keys: Vec::new(),
        depth: 0,
    };
    p.mapping(first.indent).ok()?;
    (p.i == p.lines.len()).then_some(p.out)
}

/// Tabs (indentation or separation in ways libyaml treats specially), control characters,
/// the byte-order mark and the line breaks other than LF/CRLF are left to the full parser.
fn plain_characters(doc: &str) -> bool {
    let ascii_ok = |b: u8| (b >= 0x20 && b != 0x7f) || b == b'\n' || b == b'\r';
    if doc.is_ascii() {
        return doc.bytes().all(ascii_ok);
    }
    doc.chars().all(|c| {
        if c.is_ascii() {
            ascii_ok(c as u8)
        } else {
            !matches!(
                c,
                '\u{80}'
                    ..='\u{9f}' | '\u{2028}' | '\u{2029}' | '\u{feff}' | '\u{fffe}' | '\u{ffff}'
            )
        }
    })
}

fn is_seq_entry(text: &str) -> bool {
    text == "-" || text.starts_with("- ")
}

/// The subset's answer for anything it does not read.
struct Unsupported;

type R<T> = Result<T, Unsupported>;

struct Parser<'a> {
    lines: Vec<Line<'a>>,
    /// The next line to read.
    i: usize,
    out: Vec<Event<'a>>,
    /// Keys of the mappings being read (innermost last), to refuse duplicates: serde and
    /// YAML disagree on what a repeated key means, so the full parser decides.
    keys: Vec<Cow<'a, str>>,
    depth: usize,
}

impl<'a> Parser<'a> {
    fn enter(&mut self) -> R<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(Unsupported);
        }
        Ok(())
    }

    fn indent(&self) -> Option<usize> {
        self.lines.get(self.i).map(|l| l.indent)
    }

    /// The node starting at the current line (its indentation opens the block): a sequence,
    /// a mapping, or a one-line scalar or flow collection (`spec:` then `{}` below it).
    fn block_node(&mut self) -> R<()> {
        let line = self.lines[self.i];
        if is_seq_entry(line.text) {
            self.sequence(line.indent)
        } else if split_key(line.text).is_ok() {
            self.mapping(line.indent)
        } else {
            inline_value(line.text, &mut self.out)?;
            self.i += 1;
            Ok(())
        }
    }

    /// A block mapping whose keys sit at column `n`.
    fn mapping(&mut self, n: usize) -> R<()> {
        self.enter()?;
        self.out.push(Event::MapStart);
        let keys_start = self.keys.len();
        while let Some(line) = self.lines.get(self.i).copied() {
            if line.indent != n {
                break;
            }
            // A `- ` line here is never part of this mapping (an indentless sequence is read
            // with its key below), so `split_key` refusing it is right.
            let (key, rest) = split_key(line.text)?;
            let key_text = match &key {
                Event::Plain(s) => Cow::Borrowed(*s),
                Event::Quoted(s) => s.clone(),
                _ => return Err(Unsupported),
            };
            if self.keys[keys_start..].contains(&key_text) {
                return Err(Unsupported);
            }
            self.keys.push(key_text);
            self.out.push(key);
            if ends_line(rest) {
                // The value is on the following lines: a sequence may sit at the key's own
                // indentation (as kubectl writes it), anything else deeper; none is null.
                self.i += 1;
                match self.lines.get(self.i) {
                    Some(next) if next.indent == n && is_seq_entry(next.text) => {
                        self.sequence(n)?;
                    }
                    Some(next) if next.indent > n => self.block_node()?,
                    _ => self.out.push(Event::Plain("")),
                }
            } else {
                inline_value(rest.trim_start_matches(' '), &mut self.out)?;
                self.i += 1;
            }
            if self.indent().is_some_and(|i| i > n) {
                return Err(Unsupported); // e.g. a plain scalar continued on the next line
            }
        }
        self.keys.truncate(keys_start);
        self.out.push(Event::MapEnd);
        self.depth -= 1;
        Ok(())
    }

    /// A block sequence whose `-` indicators sit at column `n`.
    fn sequence(&mut self, n: usize) -> R<()> {
        self.enter()?;
        self.out.push(Event::SeqStart);
        while let Some(line) = self.lines.get(self.i).copied() {
            if line.indent != n || !is_seq_entry(line.text) {
                break;
            }
            let after = &line.text[1..];
            let content = after.trim_start_matches(' ');
            if ends_line(after) {
                // `-` alone: the item is the block below, or null.
                self.i += 1;
                match self.lines.get(self.i) {
                    Some(next) if next.indent > n => self.block_node()?,
                    _ => self.out.push(Event::Plain("")),
                }
            } else {
                // The item starts on this line: read it as if its text began a line of its
                // own at its column, so `- key: v` opens a mapping whose later keys align
                // with `key`.
                let column = n + 1 + (after.len() - content.len());
                self.lines[self.i] = Line {
                    indent: column,
                    text: content,
                };
                self.block_node()?;
            }
            if self.indent().is_some_and(|i| i > n) {
                return Err(Unsupported);
            }
        }
        self.out.push(Event::SeqEnd);
        self.depth -= 1;
        Ok(())
    }
}

/// True when nothing but spaces and a comment follow (`rest` starts right after an
/// indicator, so a comment needs a space before it unless nothing precedes it).
fn ends_line(rest: &str) -> bool {
    let t = rest.trim_start_matches(' ');
    t.is_empty() || (t.starts_with('#') && (t.len() < rest.len()))
}

/// Characters that cannot start a plain scalar (YAML's indicators), in block context.
fn starts_plain(text: &str) -> bool {
    match text.as_bytes().first() {
        None => false,
        Some(b'-') => {
            // `-1`, `-foo` are scalars; `- ` and `-` alone are sequence entries.
            text.len() > 1 && text.as_bytes()[1] != b' '
        }
        Some(
            b'?' | b':' | b',' | b'[' | b']' | b'{' | b'}' | b'#' | b'&' | b'*' | b'!' | b'|'
            | b'>' | b'\'' | b'"' | b'%' | b'@' | b'`',
        ) => false,
        Some(_) => true,
    }
}

/// Splits `key: rest` (the key as an event). `Err` when the line is not a mapping entry the
/// subset reads.
fn split_key(text: &str) -> R<(Event<'_>, &str)> {
    let (key, after) = match text.as_bytes().first() {
        Some(b'"') => {
            let (s, len) = double_quoted(text)?;
            (Event::Quoted(s), &text[len..])
        }
        Some(b'\'') => {
            let (s, len) = single_quoted(text)?;
            (Event::Quoted(s), &text[len..])
        }
        _ => {
            if !starts_plain(text) {
                return Err(Unsupported);
            }
            let colon = key_colon(text).ok_or(Unsupported)?;
            let key = text[..colon].trim_end_matches(' ');
            // libyaml refuses simple keys longer than 1024 characters; `<<` may be a merge.
            if key.contains(" #") || key == "<<" || key.len() > 1024 {
                return Err(Unsupported);
            }
            return Ok((Event::Plain(key), &text[colon + 1..]));
        }
    };
    if text.len() - after.len() > 1024 {
        return Err(Unsupported);
    }
    // After a quoted key: optional spaces, then `:` and a space or the end of the line.
    let after = after.trim_start_matches(' ');
    let rest = after.strip_prefix(':').ok_or(Unsupported)?;
    if !(rest.is_empty() || rest.starts_with(' ')) {
        return Err(Unsupported);
    }
    Ok((key, rest))
}

/// The first `:` followed by a space or the end of the line.
fn key_colon(text: &str) -> Option<usize> {
    let b = text.as_bytes();
    let mut from = 0;
    while let Some(off) = text[from..].find(':') {
        let at = from + off;
        if at + 1 == b.len() || b[at + 1] == b' ' {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// A value that starts and ends on this line: a plain or quoted scalar, or a flow
/// collection (`[]`, `{}`, `[a, "b"]`).
fn inline_value<'a>(text: &'a str, out: &mut Vec<Event<'a>>) -> R<()> {
    match text.as_bytes().first() {
        Some(b'"') => {
            let (s, len) = double_quoted(text)?;
            trailing(&text[len..])?;
            out.push(Event::Quoted(s));
        }
        Some(b'\'') => {
            let (s, len) = single_quoted(text)?;
            trailing(&text[len..])?;
            out.push(Event::Quoted(s));
        }
        Some(b'[') => flow_sequence(text, out)?,
        Some(b'{') => {
            let inner = text[1..].trim_start_matches(' ');
            let rest = inner.strip_prefix('}').ok_or(Unsupported)?;
            trailing(rest)?;
            out.push(Event::MapStart);
            out.push(Event::MapEnd);
        }
        _ => {
            if !starts_plain(text) {
                return Err(Unsupported);
            }
            let end = text.find(" #").unwrap_or(text.len());
            let value = text[..end].trim_end_matches(' ');
            // `a: b` here would be a nested mapping on one line, which YAML forbids.
            if value.contains(": ") || value.ends_with(':') {
                return Err(Unsupported);
            }
            out.push(Event::Plain(value));
        }
    }
    Ok(())
}

/// After a closing quote or bracket: only spaces and a comment.
fn trailing(rest: &str) -> R<()> {
    let t = rest.trim_start_matches(' ');
    if t.is_empty() || (t.starts_with('#') && t.len() < rest.len()) {
        Ok(())
    } else {
        Err(Unsupported)
    }
}

/// `[a, b, "c"]` on one line, items scalars.
fn flow_sequence<'a>(text: &'a str, out: &mut Vec<Event<'a>>) -> R<()> {
    out.push(Event::SeqStart);
    let mut rest = text[1..].trim_start_matches(' ');
    if let Some(after) = rest.strip_prefix(']') {
        trailing(after)?;
        out.push(Event::SeqEnd);
        return Ok(());
    }
    loop {
        let after_item = match rest.as_bytes().first() {
            Some(b'"') => {
                let (s, len) = double_quoted(rest)?;
                out.push(Event::Quoted(s));
                &rest[len..]
            }
            Some(b'\'') => {
                let (s, len) = single_quoted(rest)?;
                out.push(Event::Quoted(s));
                &rest[len..]
            }
            _ => {
                if !starts_plain(rest) {
                    return Err(Unsupported);
                }
                let end = rest.find([',', ']']).ok_or(Unsupported)?;
                let item = rest[..end].trim_end_matches(' ');
                // Flow context: `:` may make a pair, `#` a comment, brackets nest.
                if item.contains([':', '#', '[', '{', '}']) {
                    return Err(Unsupported);
                }
                out.push(Event::Plain(item));
                &rest[end..]
            }
        };
        let after_item = after_item.trim_start_matches(' ');
        if let Some(after) = after_item.strip_prefix(']') {
            trailing(after)?;
            out.push(Event::SeqEnd);
            return Ok(());
        }
        // A comma, then another item (a trailing comma is left to the full parser).
        rest = after_item
            .strip_prefix(',')
            .ok_or(Unsupported)?
            .trim_start_matches(' ');
        if rest.is_empty() || rest.starts_with([']', ',']) {
            return Err(Unsupported);
        }
    }
}

/// A single-quoted scalar starting at `text[0]`: its value and the length it spans.
fn single_quoted(text: &str) -> R<(Cow<'_, str>, usize)> {
    let body = &text[1..];
    let mut owned: Option<String> = None;
    let mut from = 0;
    loop {
        let q = from + body[from..].find('\'').ok_or(Unsupported)?;
        if body[q + 1..].starts_with('\'') {
            // `''` is one quote.
            owned
                .get_or_insert_with(String::new)
                .push_str(&body[from..=q]);
            from = q + 2;
            continue;
        }
        let value = match owned {
            None => Cow::Borrowed(&body[..q]),
            Some(mut s) => {
                s.push_str(&body[from..q]);
                Cow::Owned(s)
            }
        };
        return Ok((value, q + 2));
    }
}

/// A double-quoted scalar starting at `text[0]`, escapes undone: its value and the length
/// it spans. A backslash at the end of the line (a continued string) is not read here.
fn double_quoted(text: &str) -> R<(Cow<'_, str>, usize)> {
    let body = &text[1..];
    let end = body.find(['"', '\\']).ok_or(Unsupported)?;
    if body.as_bytes()[end] == b'"' {
        return Ok((Cow::Borrowed(&body[..end]), end + 2));
    }
    let mut s = String::with_capacity(body.len());
    s.push_str(&body[..end]);
    let mut chars = body[end..].char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((Cow::Owned(s), end + i + 2)),
            '\\' => {
                let (_, e) = chars.next().ok_or(Unsupported)?;
                let simple = match e {
                    '0' => '\0',
                    'a' => '\u{7}',
                    'b' => '\u{8}',
                    't' => '\t',
                    'n' => '\n',
                    'v' => '\u{b}',
                    'f' => '\u{c}',
                    'r' => '\r',
                    'e' => '\u{1b}',
                    ' ' => ' ',
                    '"' => '"',
                    '/' => '/',
                    '\\' => '\\',
                    'N' => '\u{85}',
                    '_' => '\u{a0}',
                    'L' => '\u{2028}',
                    'P' => '\u{2029}',
                    'x' | 'u' | 'U' => {
                        let digits = match e {
                            'x' => 2,
                            'u' => 4,
                            _ => 8,
                        };
                        let mut code = 0u32;
                        for _ in 0..digits {
                            let (_, h) = chars.next().ok_or(Unsupported)?;
                            code = code * 16 + h.to_digit(16).ok_or(Unsupported)?;
                        }
                        char::from_u32(code).ok_or(Unsupported)?
                    }
                    _ => return Err(Unsupported),
                };
                s.push(simple);
            }
            c => s.push(c),
        }
    }
    Err(Unsupported) // no closing quote on this line
}
