//! Events to typed values: a serde `Deserializer` over the parser's events that gives every
//! type what serde_yaml 0.9 gives it, or fails.
//!
//! Failing is always allowed: the caller then decodes the document with serde_yaml, which
//! also words the error. So each method accepts only the spellings whose meaning it is sure
//! of (decimal integers, simple decimals, the core schema's null and booleans) and refuses
//! the rest (`0x1F`, `+5`, `1e3`, `.inf`, ...) instead of re-implementing every corner.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Visitor};

use super::parse::Event;

/// "Not decoded here". It carries no message: nobody sees it, the full decoder runs instead.
#[derive(Debug)]
pub(crate) struct Unsupported;

impl fmt::Display for Unsupported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("outside the block YAML subset")
    }
}

impl std::error::Error for Unsupported {}

impl de::Error for Unsupported {
    fn custom<T: fmt::Display>(_msg: T) -> Self {
        Unsupported
    }
}

type R<T> = Result<T, Unsupported>;

/// What an unquoted scalar means when the type asked for accepts anything (`Value`, untagged
/// enums, durations that also take `0`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Plain {
    Null,
    Bool(bool),
    U64(u64),
    I64(i64),
    F64(f64),
    Str,
}

fn is_null(s: &str) -> bool {
    matches!(s, "" | "~" | "null" | "Null" | "NULL")
}

fn as_bool(s: &str) -> Option<bool> {
    match s {
        "true" | "True" | "TRUE" => Some(true),
        "false" | "False" | "FALSE" => Some(false),
        _ => None,
    }
}

/// `s` without a leading `-`, and whether there was one.
fn unsigned_part(s: &str) -> (bool, &str) {
    match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    }
}

fn all_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// Digits with no superfluous leading zero: `0`, `42`, not `08` (a string in YAML 1.2).
fn canonical_digits(s: &str) -> bool {
    all_digits(s) && (s.len() == 1 || !s.starts_with('0'))
}

/// `digits.digits`, the only float spelling decided here.
fn simple_decimal(s: &str) -> bool {
    s.split_once('.')
        .is_some_and(|(i, f)| all_digits(i) && all_digits(f))
}

/// The core schema's reading of an unquoted scalar, `None` when unsure (hexadecimal, octal,
/// exponents, signs, infinities, out-of-range integers, dates...).
pub(crate) fn resolve(s: &str) -> Option<Plain> {
    if is_null(s) {
        return Some(Plain::Null);
    }
    if let Some(b) = as_bool(s) {
        return Some(Plain::Bool(b));
    }
    let first = s.as_bytes()[0];
    if !(first.is_ascii_digit() || matches!(first, b'-' | b'+' | b'.')) {
        // Numbers start with a digit, a sign or a dot; `inf`/`nan` spelled without the dot
        // are not finite, so they stay strings too.
        return Some(Plain::Str);
    }
    let (negative, digits) = unsigned_part(s);
    if all_digits(digits) {
        if !canonical_digits(digits) {
            return Some(Plain::Str);
        }
        return if negative {
            s.parse().ok().map(Plain::I64)
        } else {
            s.parse().ok().map(Plain::U64)
        };
    }
    if simple_decimal(digits) {
        let f: f64 = s.parse().ok()?;
        return f.is_finite().then_some(Plain::F64(f));
    }
    // Other numeric spellings: radix prefixes and the dotted infinities and NaNs are left to
    // serde_yaml; anything else is a number exactly when Rust's float syntax accepts it
    // (every decimal integer is also a float), and those are left to serde_yaml too.
    let lower = s.to_ascii_lowercase();
    if ["0x", "0o", "0b", "inf", "nan"]
        .iter()
        .any(|p| lower.contains(p))
    {
        return None;
    }
    let unsigned = s.strip_prefix('+').unwrap_or(s);
    match unsigned.parse::<f64>() {
        Ok(_) => None,
        Err(_) => Some(Plain::Str),
    }
}

/// A deserializer reading one node from `events[pos..]`.
pub(crate) struct De<'de, 'e> {
    events: &'e [Event<'de>],
    pos: usize,
}

impl<'de, 'e> De<'de, 'e> {
    pub(crate) fn new(events: &'e [Event<'de>]) -> Self {
        De { events, pos: 0 }
    }

    /// True when every event was read.
    pub(crate) fn at_end(&self) -> bool {
        self.pos == self.events.len()
    }

    fn peek(&self) -> R<&'e Event<'de>> {
        self.events.get(self.pos).ok_or(Unsupported)
    }

    fn next(&mut self) -> R<&'e Event<'de>> {
        let e = self.peek()?;
        self.pos += 1;
        Ok(e)
    }

    /// The next event as an unquoted scalar.
    fn next_plain(&mut self) -> R<&'de str> {
        match self.next()? {
            Event::Plain(s) => Ok(s),
            _ => Err(Unsupported),
        }
    }

    /// Skips one node.
    fn skip(&mut self) -> R<()> {
        let mut depth = 0usize;
        loop {
            match self.next()? {
                Event::MapStart | Event::SeqStart => depth += 1,
                Event::MapEnd | Event::SeqEnd => depth = depth.checked_sub(1).ok_or(Unsupported)?,
                Event::Plain(_) | Event::Quoted(_) => {}
            }
            if depth == 0 {
                return Ok(());
            }
        }
    }

    fn expect(&mut self, end: &Event<'_>) -> R<()> {
        if self.next()? == end {
            Ok(())
        } else {
            Err(Unsupported) // the visitor stopped before the collection's end
        }
    }

    fn visit_scalar_str<V: Visitor<'de>>(&mut self, visitor: V) -> R<V::Value> {
        match self.next()? {
            Event::Plain(s) | Event::Quoted(Cow::Borrowed(s)) => visitor.visit_borrowed_str(s),
            Event::Quoted(Cow::Owned(s)) => visitor.visit_str(s),
            _ => Err(Unsupported),
        }
    }
}

/// Elements of a sequence or entries of a mapping (`empty` for an empty scalar read as one).
struct Items<'a, 'de, 'e> {
    de: &'a mut De<'de, 'e>,
    end: Event<'static>,
    empty: bool,
}

impl<'de> Items<'_, 'de, '_> {
    fn more(&self) -> R<bool> {
        Ok(!self.empty && *self.de.peek()? != self.end)
    }
}

impl<'de> de::SeqAccess<'de> for Items<'_, 'de, '_> {
    type Error = Unsupported;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> R<Option<T::Value>> {
        if !self.more()? {
            return Ok(None);
        }
        seed.deserialize(&mut *self.de).map(Some)
    }
}

impl<'de> de::MapAccess<'de> for Items<'_, 'de, '_> {
    type Error = Unsupported;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> R<Option<K::Value>> {
        if !self.more()? {
            return Ok(None);
        }
        seed.deserialize(&mut *self.de).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> R<V::Value> {
        seed.deserialize(&mut *self.de)
    }
}

/// An enum written as its variant's name (the only form without a YAML tag).
struct UnitVariant<'a, 'de, 'e>(&'a mut De<'de, 'e>);

impl<'de> de::EnumAccess<'de> for UnitVariant<'_, 'de, '_> {
    type Error = Unsupported;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> R<(V::Value, Self)> {
        let v = seed.deserialize(&mut *self.0)?;
        Ok((v, self))
    }
}

impl<'de> de::VariantAccess<'de> for UnitVariant<'_, 'de, '_> {
    type Error = Unsupported;

    fn unit_variant(self) -> R<()> {
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, _seed: T) -> R<T::Value> {
        Err(Unsupported)
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, _visitor: V) -> R<V::Value> {
        Err(Unsupported)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        _visitor: V,
    ) -> R<V::Value> {
        Err(Unsupported)
    }
}

impl<'de> de::Deserializer<'de> for &mut De<'de, '_> {
    type Error = Unsupported;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> R<V::Value> {
        match self.peek()? {
            Event::MapStart => self.deserialize_map(visitor),
            Event::SeqStart => self.deserialize_seq(visitor),
            Event::Quoted(_) => self.visit_scalar_str(visitor),
            Event::Plain(s) => match resolve(s).ok_or(Unsupported)? {
                Plain::Null => {
                    self.pos += 1;
                    visitor.visit_unit()
                }
                Plain::Bool(b) => {
                    self.pos += 1;
                    visitor.visit_bool(b)
                }
                Plain::U64(n) => {
                    self.pos += 1;
                    visitor.visit_u64(n)
                }
                Plain::I64(n) => {
                    self.pos += 1;
                    visitor.visit_i64(n)
                }
                Plain::F64(f) => {
                    self.pos += 1;
                    visitor.visit_f64(f)
                }
                Plain::Str => self.visit_scalar_str(visitor),
            },
            Event::MapEnd | Event::SeqEnd => Err(Unsupported),
        }
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> R<V::Value> {
        visitor.visit_bool(as_bool(self.next_plain()?).ok_or(Unsupported)?)
    }

    fn deserialize_i8<V: Visitor<'de>>(self, visitor: V) -> R<V::Value> {
        self.deserialize_i64(visitor)
    }

    fn deserialize_i16<V: Visitor<'de>>(self, visitor: V) -> R<V::Value> {
        self.deserialize_i64(visitor)
    }

    fn deserialize_i32<V: Visitor<'de>>(self, visitor: V) -> R<V::Value> {
        self.deserialize_i64(visitor)
    }

    fn deserialize_i64<V: Visitor<'de>>(self, visitor: V) -> R<V::Value> {
        let s = self.next_plain()?;
        if !canonical_digits(unsigned_part(s).1) {
            return Err(Unsupported);
        }
        visitor.visit_i64(s.parse().map_err(|_| Unsupported)?)
    }

    fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> R<V::Value> {
        self.deserialize_u64(visitor)
    }

    fn deserialize_u16<V: Visitor<'de>>(self, visitor: V) -> R<V::Value> {
        self.deserialize_u64(visitor)
    }

    fn deserialize_u32<V: Visitor<'de>>(self, visitor: V) -> R<V::Value> {
        self.deserialize_u64(visitor)
    }

    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> R<V::Value> {
        let s = self.next_plain()?;
        if !canonical_digits(s) {
            return Err(Unsupported);
        }
        visitor.visit_u64(s.parse().map_err(|_| Unsupported)?)
    }

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> R<V::Value> {
        self.deserialize_f64(visitor)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> R<V::Value> {
        let s = self.next_plain()?;
        let digits = unsigned_part(s).1;
        if !(all_digits(digits) || simple_decimal(digits)) {
            return Err(Unsupported);
        }
        let f: f64 = s.parse().map_err(|_| Unsupported)?;
        if !f.is_finite() {
            return Err(Unsupported);
        }
        visitor.visit_f64(f)
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> R<V::Value> {
        self.visit_scalar_str(visitor)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> R<V::Value> {
        self.visit_scalar_str(visitor)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> R<V::Value> {
        self.visit_scalar_str(visitor)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, _visitor: V) -> R<V::Value> {
        Err(Unsupported)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, _visitor: V) -> R<V::Value> {
        Err(Unsupported)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> R<V::Value> {
        match self.peek()? {
            Event::Plain(s) if is_null(s) => {
                self.pos += 1;
                visitor.visit_none()
            }
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> R<V::Value> {
        if is_null(self.next_plain()?) {
            visitor.visit_unit()
        } else {
            Err(Unsupported)
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> R<V::Value> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> R<V::Value> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> R<V::Value> {
        match self.next()? {
            Event::SeqStart => {
                let value = visitor.visit_seq(Items {
                    de: &mut *self,
                    end: Event::SeqEnd,
                    empty: false,
                })?;
                self.expect(&Event::SeqEnd)?;
                Ok(value)
            }
            // `key:` with nothing after it reads as an empty list, as in serde_yaml.
            Event::Plain("") => visitor.visit_seq(Items {
                de: self,
                end: Event::SeqEnd,
                empty: true,
            }),
            _ => Err(Unsupported),
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _len: usize, visitor: V) -> R<V::Value> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> R<V::Value> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> R<V::Value> {
        match self.next()? {
            Event::MapStart => {
                let value = visitor.visit_map(Items {
                    de: &mut *self,
                    end: Event::MapEnd,
                    empty: false,
                })?;
                self.expect(&Event::MapEnd)?;
                Ok(value)
            }
            Event::Plain("") => visitor.visit_map(Items {
                de: self,
                end: Event::MapEnd,
                empty: true,
            }),
            _ => Err(Unsupported),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> R<V::Value> {
        self.deserialize_map(visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> R<V::Value> {
        match self.peek()? {
            Event::Plain(s) if !s.is_empty() => visitor.visit_enum(UnitVariant(self)),
            Event::Quoted(s) if !s.is_empty() => visitor.visit_enum(UnitVariant(self)),
            _ => Err(Unsupported),
        }
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> R<V::Value> {
        self.visit_scalar_str(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> R<V::Value> {
        self.skip()?;
        visitor.visit_unit()
    }
}

/// Reads a whole document's events as `T`.
#[cfg(test)]
pub(crate) fn from_events<'de, T: de::Deserialize<'de>>(events: &[Event<'de>]) -> R<T> {
    let mut de = De::new(events);
    let value = T::deserialize(&mut de)?;
    if de.at_end() {
        Ok(value)
    } else {
        Err(Unsupported)
    }
}
