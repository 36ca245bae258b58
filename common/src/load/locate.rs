//! Finds the line of a field path (`spec.http[0].route[1].weight`) in a YAML document's text.
//!
//! serde_yaml gives positions only for syntax errors, yet a validation error is far more useful
//! with a line. This walks block-style YAML by indentation: enough for what people write and
//! `kubectl` prints. Flow style (`{a: 1}`) or anything unexpected stops the walk at the
//! deepest line found so far, so the answer is always a line of the right resource.

/// One line reduced to what matters for the walk.
struct Line {
    /// Columns of `- ` sequence markers before the content.
    dashes: Vec<usize>,
    /// Column and text of a `key:` on the line, if any.
    key: Option<(usize, String)>,
}

impl Line {
    fn parse(text: &str) -> Option<Line> {
        let mut col = text.len() - text.trim_start_matches(' ').len();
        let mut rest = &text[col..];
        if rest.is_empty() || rest.starts_with('#') {
            return None;
        }
        let mut dashes = Vec::new();
        while rest == "-" || rest.starts_with("- ") {
            dashes.push(col);
            let after = rest[1..].trim_start_matches(' ');
            col += rest.len() - after.len();
            rest = after;
        }
        let key = key_of(rest).map(|k| (col, k));
        Some(Line { dashes, key })
    }

    /// Column of the first token (dash or key).
    fn first_col(&self) -> Option<usize> {
        self.dashes
            .first()
            .copied()
            .or(self.key.as_ref().map(|k| k.0))
    }
}

fn key_of(rest: &str) -> Option<String> {
    if let Some(q) = rest.chars().next().filter(|c| *c == '"' || *c == '\'') {
        let end = rest[1..].find(q)? + 1;
        let after = &rest[end + 1..];
        return after.starts_with(':').then(|| rest[1..end].to_string());
    }
    let idx = rest.find(':')?;
    let after = &rest[idx + 1..];
    (after.is_empty() || after.starts_with(' ')).then(|| rest[..idx].trim_end().to_string())
}

enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

fn segments(path: &str) -> Vec<Seg<'_>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (key, mut idx) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            out.push(Seg::Key(key));
        }
        while let Some(rest) = idx.strip_prefix('[') {
            let Some(end) = rest.find(']') else { break };
            if let Ok(n) = rest[..end].parse() {
                out.push(Seg::Index(n));
            }
            idx = &rest[end + 1..];
        }
    }
    out
}

/// The 0-based line (within `doc`) of `path`, or of its deepest ancestor found.
pub fn locate(doc: &str, path: &str) -> Option<usize> {
    let lines: Vec<(usize, Line)> = doc
        .lines()
        .enumerate()
        .filter_map(|(i, l)| Line::parse(l).map(|p| (i, p)))
        .collect();
    // The range of parsed lines holding the current node's content.
    let (mut start, mut end) = (0, lines.len());
    let mut found: Option<usize> = None;
    for seg in segments(path) {
        match seg {
            Seg::Key(k) => {
                // The mapping's level is the column of its first key.
                let level = lines[start..end]
                    .iter()
                    .find_map(|(_, l)| l.key.as_ref().map(|k| k.0));
                let Some(level) = level else { break };
                let Some(pos) = (start..end).find(|&i| {
                    lines[i]
                        .1
                        .key
                        .as_ref()
                        .is_some_and(|(c, name)| *c == level && name == k)
                }) else {
                    break;
                };
                found = Some(lines[pos].0);
                // The value: following lines indented deeper, or a sequence at the same column
                // (the `key:\n- item` style kubectl prints).
                let stop = (pos + 1..end)
                    .find(|&i| {
                        let l = &lines[i].1;
                        match l.dashes.first() {
                            Some(d) => *d < level,
                            None => l.first_col().is_some_and(|c| c <= level),
                        }
                    })
                    .unwrap_or(end);
                start = pos + 1;
                end = stop;
            }
            Seg::Index(n) => {
                let Some(col) = lines[start..end]
                    .iter()
                    .find_map(|(_, l)| l.dashes.first().copied())
                else {
                    break;
                };
                let items: Vec<usize> = (start..end)
                    .filter(|&i| lines[i].1.dashes.first() == Some(&col))
                    .collect();
                let Some(&pos) = items.get(n) else { break };
                found = Some(lines[pos].0);
                let stop = items.get(n + 1).copied().unwrap_or(end);
                // The item's own content begins on its dash line.
                start = pos;
                end = stop;
                // Nested sequences (`- - x`) are not walked further.
                if lines[pos].1.dashes.len() > 1 {
                    break;
                }
                // Drop the dash so key lookups in the item see a plain mapping line.
                if lines[pos].1.key.is_none() {
                    start = pos + 1;
                }
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
  - reviews
  http:
  - match:
    - headers:
        \"end-user\":
          exact: jason
    route:
    - destination:
        host: reviews
        subset: v2
    - destination:
        host: reviews
        subset: v1
      weight: -5
  - route:
      - destination:
          host: reviews
";

    #[test]
    fn finds_nested_fields() {
        assert_eq!(locate(DOC, "spec.hosts"), Some(5));
        assert_eq!(locate(DOC, "spec.hosts[0]"), Some(6));
        assert_eq!(locate(DOC, "spec.http[0].route[1].weight"), Some(19));
        assert_eq!(
            locate(DOC, "spec.http[0].route[0].destination.subset"),
            Some(15)
        );
        assert_eq!(
            locate(DOC, "spec.http[0].match[0].headers.end-user.exact"),
            Some(11)
        );
        assert_eq!(
            locate(DOC, "spec.http[1].route[0].destination.host"),
            Some(22)
        );
        assert_eq!(locate(DOC, "metadata.name"), Some(3));
        // Unknown leaves fall back to the deepest known ancestor.
        assert_eq!(locate(DOC, "spec.http[1].nope"), Some(20));
    }
}
