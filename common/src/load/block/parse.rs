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

/// Buffers kept from one document to the next (a file has thousands).
#[derive(Default)]
pub(crate) struct Scratch {
    /// Always empty between documents; only its allocation is reused.
    lines: Vec<Line<'static>>,
    keys: Vec<u64>,
}

/// An empty vector of another element lifetime reusing `v`'s allocation (collecting an
/// empty iterator in place keeps the buffer).
fn recycle<'b>(mut v: Vec<Line<'_>>) -> Vec<Line<'b>> {
    v.clear();
    v.into_iter().map(|_| unreachable!()).collect()
}

/// Parses one document (the text between `---` markers) whose root is a block mapping.
/// `None` when the text uses anything outside the subset, or is not valid YAML.
pub(crate) fn parse<'a>(doc: &'a str, scratch: &mut Scratch) -> Option<Vec<Event<'a>>> {
    let mut lines = recycle(std::mem::take(&mut scratch.lines));
    let parsed = split_lines(doc, &mut lines).and_then(|()| {
        let first = *lines.first()?;
        if is_seq_entry(first.text) {
            return None; // only objects are decoded here
        }
        scratch.keys.clear();
        let mut p = Parser {
            lines: &mut lines,
            i: 0,
            out: Vec::with_capacity(doc.len() / 6),
            keys: &mut scratch.keys,
            depth: 0,
        };
        p.mapping(first.indent).ok()?;
        (p.i == p.lines.len()).then_some(p.out)
    });
    scratch.lines = recycle(lines);
    parsed
}

/// Fills `lines` with the document's lines that hold content. `None` for characters left to
/// the full parser: tabs (libyaml treats them specially), control characters, a bare CR (a
/// line break to YAML), the byte-order mark and the other Unicode line breaks.
fn split_lines<'a>(doc: &'a str, lines: &mut Vec<Line<'a>>) -> Option<()> {
    let b = doc.as_bytes();
    let mut pos = 0;
    let mut ascii = true;
    while pos < b.len() {
        let line_start = pos;
        while pos < b.len() && b[pos] == b' ' {
            pos += 1;
        }
        let text_start = pos;
        while pos < b.len() && b[pos] != b'\n' {
            match b[pos] {
                b'\r' if b.get(pos + 1) != Some(&b'\n') => return None,
                b'\r' => {}
                0..=0x1f | 0x7f => return None,
                0x80.. => ascii = false,
                _ => {}
            }
            pos += 1;
        }
        let end = if pos > text_start && b[pos - 1] == b'\r' {
            pos - 1
        } else {
            pos
        };
        pos += 1;
        if end == text_start || b[text_start] == b'#' {
            continue;
        }
        lines.push(Line {
            indent: text_start - line_start,
            text: &doc[text_start..end],
        });
    }
    if !ascii {
        let refused = |c: char| {
            matches!(
                c,
                '\u{80}'
                    ..='\u{9f}' | '\u{2028}' | '\u{2029}' | '\u{feff}' | '\u{fffe}' | '\u{ffff}'
            )
        };
        if doc.chars().any(refused) {
            return None;
        }
    }
    Some(())
}

/// Space trimming by bytes: the `str` pattern machinery costs more than the short runs of
/// spaces it would skip here.
trait Spaces {
    fn skip_spaces(&self) -> &str;
    fn trim_spaces_end(&self) -> &str;
}

impl Spaces for str {
    fn skip_spaces(&self) -> &str {
        let n = self.bytes().take_while(|&b| b == b' ').count();
        &self[n..]
    }

    fn trim_spaces_end(&self) -> &str {
        let n = self.bytes().rev().take_while(|&b| b == b' ').count();
        &self[..self.len() - n]
    }
}

fn is_seq_entry(text: &str) -> bool {
    text == "-" || text.starts_with("- ")
}

/// The subset's answer for anything it does not read.
struct Unsupported;

type R<T> = Result<T, Unsupported>;

struct Parser<'a, 's> {
    lines: &'s mut Vec<Line<'a>>,
    /// The next line to read.
    i: usize,
    out: Vec<Event<'a>>,
    /// Hashes of the keys of the mappings being read (innermost last), to refuse duplicates:
    /// serde and YAML disagree on what a repeated key means, so the full parser decides. A
    /// collision only sends the document there too.
    keys: &'s mut Vec<u64>,
    depth: usize,
}

/// FNV-1a: keys are short, and a collision is harmless (see `Parser::keys`).
fn key_hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl<'a> Parser<'a, '_> {
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
            let hash = match &key {
                Event::Plain(s) => key_hash(s),
                Event::Quoted(s) => key_hash(s),
                _ => return Err(Unsupported),
            };
            if self.keys[keys_start..].contains(&hash) {
                return Err(Unsupported);
            }
            self.keys.push(hash);
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
                inline_value(rest.skip_spaces(), &mut self.out)?;
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
            let content = after.skip_spaces();
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
    let t = rest.skip_spaces();
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
            let key = text[..colon].trim_spaces_end();
            // libyaml refuses simple keys longer than 1024 characters; `<<` may be a merge.
            if key == "<<" || key.len() > 1024 {
                return Err(Unsupported);
            }
            return Ok((Event::Plain(key), &text[colon + 1..]));
        }
    };
    if text.len() - after.len() > 1024 {
        return Err(Unsupported);
    }
    // After a quoted key: optional spaces, then `:` and a space or the end of the line.
    let after = after.skip_spaces();
    let rest = after.strip_prefix(':').ok_or(Unsupported)?;
    if !(rest.is_empty() || rest.starts_with(' ')) {
        return Err(Unsupported);
    }
    Ok((key, rest))
}

/// The first `:` followed by a space or the end of the line; `None` when there is none, or
/// a comment starts before it.
fn key_colon(text: &str) -> Option<usize> {
    let b = text.as_bytes();
    for (i, &c) in b.iter().enumerate() {
        match c {
            b':' if i + 1 == b.len() || b[i + 1] == b' ' => return Some(i),
            b'#' if i > 0 && b[i - 1] == b' ' => return None,
            _ => {}
        }
    }
    None
}

/// A plain scalar's text: up to a comment, without trailing spaces. `Err` for `: ` or a
/// final `:` (a nested mapping on one line, which YAML forbids).
fn plain_scalar(text: &str) -> R<&str> {
    let b = text.as_bytes();
    let mut end = b.len();
    for (i, &c) in b.iter().enumerate() {
        match c {
            b':' if i + 1 == b.len() || b[i + 1] == b' ' => return Err(Unsupported),
            b'#' if i > 0 && b[i - 1] == b' ' => {
                end = i;
                break;
            }
            _ => {}
        }
    }
    Ok(text[..end].trim_spaces_end())
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
            let inner = text[1..].skip_spaces();
            let rest = inner.strip_prefix('}').ok_or(Unsupported)?;
            trailing(rest)?;
            out.push(Event::MapStart);
            out.push(Event::MapEnd);
        }
        _ => {
            if !starts_plain(text) {
                return Err(Unsupported);
            }
            out.push(Event::Plain(plain_scalar(text)?));
        }
    }
    Ok(())
}

/// After a closing quote or bracket: only spaces and a comment.
fn trailing(rest: &str) -> R<()> {
    let t = rest.skip_spaces();
    if t.is_empty() || (t.starts_with('#') && t.len() < rest.len()) {
        Ok(())
    } else {
        Err(Unsupported)
    }
}

/// `[a, b, "c"]` on one line, items scalars.
fn flow_sequence<'a>(text: &'a str, out: &mut Vec<Event<'a>>) -> R<()> {
    out.push(Event::SeqStart);
    let mut rest = text[1..].skip_spaces();
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
                let item = rest[..end].trim_spaces_end();
                // Flow context: `:` may make a pair, `#` a comment, brackets nest.
                if item.contains([':', '#', '[', '{', '}']) {
                    return Err(Unsupported);
                }
                out.push(Event::Plain(item));
                &rest[end..]
            }
        };
        let after_item = after_item.skip_spaces();
        if let Some(after) = after_item.strip_prefix(']') {
            trailing(after)?;
            out.push(Event::SeqEnd);
            return Ok(());
        }
        // A comma, then another item (a trailing comma is left to the full parser).
        rest = after_item
            .strip_prefix(',')
            .ok_or(Unsupported)?
            .skip_spaces();
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
