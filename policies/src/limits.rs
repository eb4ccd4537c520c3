//! Bounds on what a configuration file may cost to read, checked before any YAML parser sees
//! the whole text.
//!
//! Both YAML parsers used here (unsafe-libyaml behind serde_yaml, saphyr-parser for the index)
//! keep a "possible simple key" per open flow collection and walk that whole stack for every
//! token: nested `[` cost time quadratic in their depth (a profile of `hako check` on 20,000 of
//! them spent 88% in unsafe-libyaml's `yaml_parser_stale_simple_keys` and
//! `yaml_parser_fetch_more_tokens`). Neither parser limits the depth: serde_yaml's recursion
//! limit (128) applies only when deserializing, after libyaml produced every event, and its
//! alias "repetition limit" (100 jumps per event) counts jumps, not bytes: a 1 MiB string
//! aliased 5,000 times deserialized into 5 GB. So, in order:
//! 1. the file size ([`MAX_CONFIG_BYTES`]);
//! 2. the depth of flow collections (`[`, `{`), by a linear lexical scan that knows quotes,
//!    comments and block scalars ([`MAX_NESTING_DEPTH`]), which keeps the parsers' per-token
//!    work bounded;
//! 3. the depth of every collection and what aliases expand to, from saphyr-parser's events
//!    ([`MAX_NESTING_DEPTH`], [`MAX_ALIAS_EXPANSION`]).
//!
//! Each fault is reported at the line and column where the limit is crossed.
use std::collections::HashMap;

use saphyr_parser::{Event, Parser};

use crate::index::Pos;

/// The largest configuration file accepted, in bytes (4 MiB).
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;
/// The deepest nesting of mappings and sequences accepted.
pub const MAX_NESTING_DEPTH: usize = 64;
/// How much aliases (`*name`) may add to the document, in total: the bytes of the scalars an
/// alias repeats plus one per repeated node, summed over every alias use (1 MiB).
pub const MAX_ALIAS_EXPANSION: u64 = 1 << 20;

/// A limit crossed: where, and the message.
pub(crate) type Fault = (Pos, String);

/// Checks the nesting depth and alias expansion of `text` (the size is checked by the caller,
/// before reading). A text the parsers reject is left to them: only limits are reported here.
pub(crate) fn check(text: &str) -> Result<(), Fault> {
    flow_depth(text)?;
    events(text)
}

fn depth_fault(pos: Pos) -> Fault {
    (
        pos,
        format!("nesting deeper than {MAX_NESTING_DEPTH} levels; hako configurations need a few"),
    )
}

/// The depth of `[`/`{` collections, scanned lexically in one linear pass. It follows quoted
/// scalars across lines, comments, and block scalars (only possible outside flow
/// collections), and errs towards counting: a bracket it cannot place is taken as an opening
/// one.
fn flow_depth(text: &str) -> Result<(), Fault> {
    let mut depth = 0usize;
    // Inside a quoted scalar continued from an earlier line: its quote.
    let mut quote: Option<char> = None;
    // Inside a block scalar: its content indentation, once known (`Some(None)` before its
    // first content line).
    let mut block: Option<Option<usize>> = None;
    for (n, line) in text.lines().enumerate() {
        if quote.is_none() {
            let indent = line.len() - line.trim_start_matches(' ').len();
            match block {
                Some(_) if line.trim().is_empty() => continue,
                Some(None) if indent > 0 => {
                    block = Some(Some(indent));
                    continue;
                }
                Some(Some(at)) if indent >= at => continue,
                _ => block = None,
            }
        }
        let chars: Vec<char> = line.chars().collect();
        let mut i = 0;
        if let Some(q) = quote {
            match close_quote(&chars, 0, q) {
                Some(end) => {
                    quote = None;
                    i = end + 1;
                }
                None => continue,
            }
        }
        // Block context: a `[`/`{` opens a collection only where a node starts.
        let mut node_start = i == 0;
        while i < chars.len() {
            let c = chars[i];
            let prev_space = i == 0 || chars[i - 1] == ' ' || chars[i - 1] == '\t';
            if c == '#' && prev_space {
                break;
            }
            let opens_quote = matches!(c, '"' | '\'')
                && if depth == 0 {
                    node_start
                } else {
                    prev_space || matches!(chars[i - 1], '[' | '{' | ',' | ':')
                };
            if opens_quote {
                match close_quote(&chars, i + 1, c) {
                    Some(end) => i = end,
                    None => {
                        quote = Some(c);
                        break;
                    }
                }
                node_start = false;
                i += 1;
                continue;
            }
            if depth == 0 {
                match c {
                    ' ' | '\t' => {}
                    '[' | '{' if node_start => depth = 1,
                    '-' | '?' | ':' if chars.get(i + 1).is_none_or(|n| *n == ' ') => {
                        node_start = true;
                    }
                    '&' | '!' if node_start => {
                        // An anchor or a tag: the node starts after it.
                        while i + 1 < chars.len() && chars[i + 1] != ' ' {
                            i += 1;
                        }
                    }
                    ':' => {}
                    _ => node_start = false,
                }
            } else {
                match c {
                    '[' | '{' => {
                        depth += 1;
                        if depth > MAX_NESTING_DEPTH {
                            return Err(depth_fault(Pos {
                                line: n + 1,
                                column: i + 1,
                            }));
                        }
                    }
                    ']' | '}' => depth -= 1,
                    _ => {}
                }
                if depth == 0 {
                    node_start = false;
                }
            }
            i += 1;
        }
        if depth == 0 && quote.is_none() && starts_block_scalar(line) {
            block = Some(None);
        }
    }
    Ok(())
}

/// The index of the quote closing a `quote`d scalar, searching `chars` from `from`; `None`
/// if the scalar goes on past this line.
fn close_quote(chars: &[char], from: usize, quote: char) -> Option<usize> {
    let mut i = from;
    while i < chars.len() {
        match chars[i] {
            '\\' if quote == '"' => i += 1,
            '\'' if quote == '\'' && chars.get(i + 1) == Some(&'\'') => i += 1,
            c if c == quote => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

/// Whether `line` ends with a block scalar header (`key: |`, `- >-`, `key: |2 # note`).
fn starts_block_scalar(line: &str) -> bool {
    let code = match line.find(" #") {
        Some(at) => &line[..at],
        None => line,
    };
    let Some(last) = code.split_whitespace().last() else {
        return false;
    };
    let mut it = last.chars();
    matches!(it.next(), Some('|' | '>'))
        && it.all(|c| c == '-' || c == '+' || c.is_ascii_digit())
        && code.trim_end().len() > last.len()
        && {
            let before = code.trim_end()[..code.trim_end().len() - last.len()].trim_end();
            before.ends_with(':') || before.ends_with('-') || before.ends_with('?')
        }
}

/// Depth of every collection and the total size aliases expand to, from the parser's events.
fn events(text: &str) -> Result<(), Fault> {
    // Expanded size of each anchored node, by anchor id.
    let mut sizes: HashMap<usize, u64> = HashMap::new();
    // Open collections: their anchor id and the running size when they started.
    let mut open: Vec<(usize, u64)> = Vec::new();
    let mut size: u64 = 0;
    let mut expanded: u64 = 0;
    for item in Parser::new_from_str(text) {
        let Ok((event, span)) = item else {
            return Ok(());
        };
        let pos = Pos {
            line: span.start.line().max(1),
            column: span.start.col() + 1,
        };
        match event {
            Event::MappingStart(anchor, _) | Event::SequenceStart(anchor, _) => {
                open.push((anchor, size));
                size += 1;
                if open.len() > MAX_NESTING_DEPTH {
                    return Err(depth_fault(pos));
                }
            }
            Event::MappingEnd | Event::SequenceEnd => {
                if let Some((anchor, start)) = open.pop() {
                    if anchor != 0 {
                        sizes.insert(anchor, size - start);
                    }
                }
            }
            Event::Scalar(value, _, anchor, _) => {
                let n = value.len() as u64 + 1;
                size += n;
                if anchor != 0 {
                    sizes.insert(anchor, n);
                }
            }
            Event::Alias(anchor) => {
                // An alias of a node still open (a recursive alias) is refused by serde.
                let n = sizes.get(&anchor).copied().unwrap_or(1);
                size = size.saturating_add(n);
                expanded = expanded.saturating_add(n);
                if expanded > MAX_ALIAS_EXPANSION {
                    return Err((
                        pos,
                        format!(
                            "aliases expand to more than {} in total (this one repeats {n} bytes); \
                             write the values out or share less",
                            crate::format_size(MAX_ALIAS_EXPANSION)
                        ),
                    ));
                }
            }
            Event::DocumentEnd | Event::StreamEnd => return Ok(()),
            Event::Nothing | Event::StreamStart | Event::DocumentStart(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(r: Result<(), Fault>) -> Option<(usize, usize)> {
        r.err().map(|(p, _)| (p.line, p.column))
    }

    #[test]
    fn flow_depth_counts_brackets_outside_quotes_comments_and_block_scalars() {
        let deep = "[".repeat(MAX_NESTING_DEPTH + 1);
        assert_eq!(at(flow_depth(&format!("a: {deep}\n"))), Some((1, 68)));
        assert_eq!(at(flow_depth(&format!("a: '{deep}'\n"))), None);
        assert_eq!(at(flow_depth(&format!("a: [\"{deep}\"]\n"))), None);
        assert_eq!(at(flow_depth(&format!("a: x # {deep}\n"))), None);
        assert_eq!(at(flow_depth(&format!("a: x{deep}\n"))), None);
        assert_eq!(
            at(flow_depth(&format!("a: |\n  {deep}\n  x\nb: 1\n"))),
            None
        );
        assert_eq!(
            at(flow_depth(&format!("a: >-\n  x\nb: {deep}\n"))),
            Some((3, 68))
        );
        assert_eq!(at(flow_depth(&format!("- - {deep}\n"))), Some((1, 69)));
        // A quoted scalar over several lines neither counts nor hides brackets.
        let closes = "]".repeat(200);
        assert_eq!(
            at(flow_depth(&format!("a: [\"x\n  {closes}\", {deep}\n"))),
            Some((2, 269))
        );
        assert_eq!(
            at(flow_depth(&format!("a: ['x\n  b: |\n   ', {deep}\n"))),
            Some((3, 70))
        );
        assert_eq!(at(flow_depth(&format!("a: \"x\n  {deep}\"\n"))), None);
        // Balanced brackets never accumulate.
        assert_eq!(at(flow_depth(&"a: [[x]]\n".repeat(1000))), None);
    }

    #[test]
    fn block_nesting_is_bounded_by_the_events() {
        let deep: String = (0..=MAX_NESTING_DEPTH)
            .map(|i| format!("{}k:\n", " ".repeat(i)))
            .collect();
        let (pos, msg) = events(&deep).unwrap_err();
        assert_eq!(pos.line, MAX_NESTING_DEPTH + 1);
        assert!(msg.contains("nesting deeper than 64"), "{msg}");
        let ok: String = (0..MAX_NESTING_DEPTH - 1)
            .map(|i| format!("{}k:\n", " ".repeat(i)))
            .collect();
        assert!(events(&ok).is_ok());
    }

    #[test]
    fn alias_expansion_is_bounded() {
        let big = "x".repeat(300 << 10);
        let text = format!("a: &a {big}\nb: [*a, *a, *a, *a]\n");
        let (pos, msg) = events(&text).unwrap_err();
        assert_eq!((pos.line, pos.column), (2, 17));
        assert!(msg.contains("aliases expand to more than 1Mi"), "{msg}");
        // Nested anchors count what they contain.
        let text = format!(
            "a: &a {}\nb: &b [*a, *a]\nc: [*b, *b]\n",
            "x".repeat(200 << 10)
        );
        let (pos, _) = events(&text).unwrap_err();
        assert_eq!((pos.line, pos.column), (3, 9));
        // Sharing small blocks is fine.
        let text = format!(
            "l: &l {{cpu: 1, memory: 64Mi}}\n{}",
            (0..1000).map(|i| format!("k{i}: *l\n")).collect::<String>()
        );
        assert!(events(&text).is_ok());
    }
}
