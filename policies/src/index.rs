//! A path → position index of a YAML document, built from the parser's events.
//!
//! serde_yaml locates syntax and type errors itself, but gives no positions for values that
//! deserialized fine and are wrong only in meaning (a zero limit, a duplicate name). For those we
//! walk the same text once more with an event parser that exposes marks (saphyr-parser) and
//! record, for every key path such as `apps[2].limits.memory`, where its key and value start.
use std::collections::HashMap;

use saphyr_parser::{Event, Parser, Span};

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pos {
    pub line: usize,
    pub column: usize,
}

impl Pos {
    pub(crate) const START: Pos = Pos { line: 1, column: 1 };

    fn of(span: &Span) -> Pos {
        Pos {
            line: span.start.line().max(1),
            column: span.start.col() + 1,
        }
    }
}

/// A key that appears twice in one mapping.
#[derive(Debug, Clone)]
pub(crate) struct Duplicate {
    pub path: String,
    pub at: Pos,
    pub first: Pos,
}

#[derive(Debug, Default)]
pub(crate) struct Index {
    values: HashMap<String, Pos>,
    keys: HashMap<String, Pos>,
    pub duplicates: Vec<Duplicate>,
}

enum Frame {
    Map {
        path: String,
        key: Option<(String, Pos)>,
        seen: HashMap<String, Pos>,
    },
    Seq {
        path: String,
        next: usize,
    },
    /// A mapping or sequence used as a mapping key: contents are not indexed.
    ComplexKey {
        depth: usize,
    },
}

pub(crate) fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

impl Index {
    /// Indexes the first document of `text`. Stops quietly at a parse error: what was seen
    /// before it stays indexed, everything else falls back to its nearest indexed ancestor.
    pub(crate) fn build(text: &str) -> Index {
        let mut index = Index::default();
        let mut stack: Vec<Frame> = Vec::new();
        let mut started = false;
        for item in Parser::new_from_str(text) {
            let Ok((event, span)) = item else { break };
            match event {
                Event::DocumentStart(_) => {
                    if started {
                        break;
                    }
                    started = true;
                }
                Event::DocumentEnd | Event::StreamEnd => {
                    if started {
                        break;
                    }
                }
                Event::Scalar(value, ..) => index.node(&mut stack, &span, Some(&value), None),
                Event::Alias(_) => index.node(&mut stack, &span, None, None),
                Event::MappingStart(..) => index.node(&mut stack, &span, None, Some(true)),
                Event::SequenceStart(..) => index.node(&mut stack, &span, None, Some(false)),
                Event::MappingEnd | Event::SequenceEnd => {
                    match stack.last_mut() {
                        Some(Frame::ComplexKey { depth }) if *depth > 1 => {
                            *depth -= 1;
                            continue;
                        }
                        Some(Frame::ComplexKey { .. }) => {
                            stack.pop();
                            // The complex key is complete: its value comes next.
                            if let Some(Frame::Map { key, .. }) = stack.last_mut() {
                                *key = Some(("?".to_owned(), Pos::of(&span)));
                            }
                            continue;
                        }
                        _ => {}
                    }
                    stack.pop();
                }
                Event::Nothing | Event::StreamStart => {}
            }
        }
        index
    }

    /// A node starts: `text` for scalars, `collection` = Some(is_mapping) for collections.
    fn node(
        &mut self,
        stack: &mut Vec<Frame>,
        span: &Span,
        text: Option<&str>,
        collection: Option<bool>,
    ) {
        let pos = Pos::of(span);
        // Where does this node sit?
        let path = match stack.last_mut() {
            None => String::new(),
            Some(Frame::ComplexKey { depth }) => {
                if collection.is_some() {
                    *depth += 1;
                }
                return;
            }
            Some(Frame::Seq { path, next }) => {
                let p = format!("{path}[{next}]");
                *next += 1;
                p
            }
            Some(Frame::Map { path, key, seen }) => match key.take() {
                None => {
                    // This node is a key.
                    match (text, collection) {
                        (Some(name), _) => {
                            let full = join(path, name);
                            if let Some(first) = seen.get(name) {
                                self.duplicates.push(Duplicate {
                                    path: full.clone(),
                                    at: pos,
                                    first: *first,
                                });
                            } else {
                                seen.insert(name.to_owned(), pos);
                            }
                            self.keys.entry(full).or_insert(pos);
                            *key = Some((name.to_owned(), pos));
                        }
                        (None, Some(_)) => {
                            stack.push(Frame::ComplexKey { depth: 1 });
                        }
                        (None, None) => *key = Some(("?".to_owned(), pos)),
                    }
                    return;
                }
                Some((name, _)) => join(path, &name),
            },
        };
        // Keep the first occurrence of a duplicated path: that is the one serde kept too
        // for structs (it rejects the second), and the one reported for maps.
        self.values.entry(path.clone()).or_insert(pos);
        match collection {
            Some(true) => stack.push(Frame::Map {
                path,
                key: None,
                seen: HashMap::new(),
            }),
            Some(false) => stack.push(Frame::Seq { path, next: 0 }),
            None => {}
        }
    }

    /// Position of the value at `path`, or of its nearest indexed ancestor.
    pub(crate) fn value(&self, path: &str) -> Pos {
        self.lookup(path, &self.values)
    }

    /// Position of the key of `path` (falls back like [`Index::value`]).
    pub(crate) fn key(&self, path: &str) -> Pos {
        match self.keys.get(path) {
            Some(p) => *p,
            None => self.value(path),
        }
    }

    fn lookup(&self, path: &str, map: &HashMap<String, Pos>) -> Pos {
        let mut p = path;
        loop {
            if let Some(pos) = map.get(p) {
                return *pos;
            }
            match p.rfind(['.', '[']) {
                Some(cut) => p = &p[..cut],
                None => return map.get("").copied().unwrap_or(Pos::START),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_nested_paths() {
        let text = "listen: 1.2.3.4:80\napps:\n  - name: a\n    limits:\n      memory: 0\n  - name: b\n    command: [x, y]\n    env: {A: 1, A: 2}\n";
        let idx = Index::build(text);
        assert_eq!(idx.value("listen"), Pos { line: 1, column: 9 });
        assert_eq!(idx.key("listen"), Pos { line: 1, column: 1 });
        assert_eq!(
            idx.value("apps[0].name"),
            Pos {
                line: 3,
                column: 11
            }
        );
        assert_eq!(
            idx.value("apps[0].limits.memory"),
            Pos {
                line: 5,
                column: 15
            }
        );
        assert_eq!(
            idx.value("apps[1].command[1]"),
            Pos {
                line: 7,
                column: 18
            }
        );
        // Not written: falls back to the nearest ancestor.
        assert_eq!(idx.value("apps[0].limits.cpu"), Pos { line: 5, column: 7 });
        assert_eq!(idx.duplicates.len(), 1);
        assert_eq!(idx.duplicates[0].path, "apps[1].env.A");
        assert_eq!(
            idx.duplicates[0].at,
            Pos {
                line: 8,
                column: 17
            }
        );
    }

    #[test]
    fn survives_complex_keys_and_aliases() {
        let text = "? [a, b]\n: 1\nx: &a {k: v}\ny: *a\nz: 3\n";
        let idx = Index::build(text);
        assert_eq!(idx.value("z"), Pos { line: 5, column: 4 });
        assert_eq!(idx.value("y"), Pos { line: 4, column: 4 });
        assert_eq!(
            idx.value("x.k"),
            Pos {
                line: 3,
                column: 11
            }
        );
    }
}
