//! A fast reader for the block-style YAML that `kubectl get -o yaml` prints and people write:
//! block mappings and sequences, plain and quoted one-line scalars, comments, `{}`/`[]` and
//! one-line flow sequences of scalars.
//!
//! It exists for speed: serde_yaml (a libyaml port) spends ~17 µs on a small document, which
//! dominates loading tens of thousands of objects. This reader is strict rather than complete:
//! anything outside the subset (anchors, aliases, tags, block scalars, multi-line scalars,
//! complex keys, tabs, duplicate keys, unusual number spellings...) makes it give up, and the
//! loader decodes that document with serde_yaml as before. When it does succeed, the result is
//! the one serde_yaml would produce (the tests compare both on every fixture).

mod de;
mod parse;

#[cfg(test)]
use de::from_events;
pub(crate) use de::De;
pub(crate) use parse::{parse, Event, Scratch};

/// The scalar value of the root mapping's `key` (raw text for an unquoted one), if any.
pub(crate) fn root_scalar<'e>(events: &'e [Event<'_>], key: &str) -> Option<&'e str> {
    if events.first() != Some(&Event::MapStart) {
        return None;
    }
    let mut i = 1;
    while let Some(k) = events.get(i) {
        let k = match k {
            Event::Plain(s) => *s,
            Event::Quoted(s) => s.as_ref(),
            _ => return None, // the root mapping's end
        };
        let value = i + 1;
        if k == key {
            return match events.get(value)? {
                Event::Plain(s) => Some(s),
                Event::Quoted(s) => Some(s.as_ref()),
                _ => None,
            };
        }
        i = skip_node(events, value)?;
    }
    None
}

/// The index just past the node starting at `i`.
fn skip_node(events: &[Event<'_>], mut i: usize) -> Option<usize> {
    let mut depth = 0usize;
    loop {
        match events.get(i)? {
            Event::MapStart | Event::SeqStart => depth += 1,
            Event::MapEnd | Event::SeqEnd => depth = depth.checked_sub(1)?,
            Event::Plain(_) | Event::Quoted(_) => {}
        }
        i += 1;
        if depth == 0 {
            return Some(i);
        }
    }
}

#[cfg(test)]
mod tests;
