//! The participant tree of a hierarchical transaction (SPEC §1.7), as a
//! client writes it: `bank-a(bank-b,bank-c),bank-d` means the coordinator
//! talks to `bank-a` and `bank-d`, and `bank-a` is the sub-coordinator of
//! `bank-b` and `bank-c`.
//!
//! Parsing and validation, so that a bad tree gets a clear error before
//! anything is sent; [`Tree::flat`] gives the parent list a begin request
//! carries (`concord_proto::tree`).
//!
//! Hand-written rather than a parser crate: the grammar is three tokens
//! (a name, parentheses, commas) and the errors must name the byte where
//! the text went wrong.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Deepest tree a transaction may have, counting the coordinator's direct
/// participants as depth 1 (SPEC: at least 4).
pub const TREE_DEPTH_MAX: usize = 4;
/// Most children one node (the coordinator or a sub-coordinator) may have.
pub const TREE_FAN_OUT_MAX: usize = 16;
/// Longest tree text accepted.
pub const TREE_TEXT_BYTES_MAX: usize = 4096;

/// One participant and the participants below it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeNode {
    pub name: String,
    pub children: Vec<TreeNode>,
}

/// The participants the coordinator talks to, each with its subtree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tree {
    pub roots: Vec<TreeNode>,
}

/// Why a tree was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TreeError {
    /// The text does not follow the grammar; `at` is a byte offset.
    Syntax {
        at: usize,
        detail: String,
    },
    /// A participant appears twice: one branch per participant, and a
    /// participant below itself would be a cycle.
    NamedTwice {
        name: String,
    },
    TooDeep {
        name: String,
        depth: usize,
    },
    FanOut {
        name: String,
        children: usize,
    },
    Unknown {
        name: String,
        known: Vec<String>,
    },
}

impl fmt::Display for TreeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TreeError::Syntax { at, detail } => write!(f, "bad tree at byte {at}: {detail}"),
            TreeError::NamedTwice { name } => write!(
                f,
                "participant {name} appears twice in the tree (one branch per participant; \
                 under itself it would be a cycle)"
            ),
            TreeError::TooDeep { name, depth } => write!(
                f,
                "the tree is {depth} levels deep at {name}; at most {TREE_DEPTH_MAX} are allowed"
            ),
            TreeError::FanOut { name, children } => write!(
                f,
                "{name} has {children} children in the tree; at most {TREE_FAN_OUT_MAX} are allowed"
            ),
            TreeError::Unknown { name, known } => write!(
                f,
                "unknown participant {name} in the tree (known: {})",
                known.join(", ")
            ),
        }
    }
}

impl std::error::Error for TreeError {}

impl Tree {
    /// Parse and check the shape limits (depth, fan-out, each name once).
    pub fn parse(text: &str) -> Result<Tree, TreeError> {
        if text.len() > TREE_TEXT_BYTES_MAX {
            return Err(TreeError::Syntax {
                at: TREE_TEXT_BYTES_MAX,
                detail: format!("longer than {TREE_TEXT_BYTES_MAX} bytes"),
            });
        }
        let mut parser = Parser {
            text: text.as_bytes(),
            at: 0,
        };
        let roots = parser.list(1)?;
        parser.skip_spaces();
        if parser.at < parser.text.len() {
            return Err(parser.error("expected ',' or the end"));
        }
        let tree = Tree { roots };
        tree.check()?;
        Ok(tree)
    }

    /// Every participant, parents before their children.
    pub fn names(&self) -> Vec<&str> {
        fn walk<'a>(nodes: &'a [TreeNode], out: &mut Vec<&'a str>) {
            for node in nodes {
                out.push(&node.name);
                walk(&node.children, out);
            }
        }
        let mut out = Vec::new();
        walk(&self.roots, &mut out);
        out
    }

    /// Every participant with its parent, parents first, as
    /// `Request::Begin` carries a tree: 0 is the coordinator, `k` the
    /// `k`-th participant of this list.
    pub fn flat(&self) -> Vec<(String, u32)> {
        fn walk(nodes: &[TreeNode], parent: u32, out: &mut Vec<(String, u32)>) {
            for node in nodes {
                out.push((node.name.clone(), parent));
                let me = out.len() as u32;
                walk(&node.children, me, out);
            }
        }
        let mut out = Vec::new();
        walk(&self.roots, 0, &mut out);
        out
    }

    /// Levels below the coordinator (1: every participant is its own).
    pub fn depth(&self) -> usize {
        fn depth(nodes: &[TreeNode]) -> usize {
            nodes
                .iter()
                .map(|n| 1 + depth(&n.children))
                .max()
                .unwrap_or(0)
        }
        depth(&self.roots)
    }

    /// Every name must be one of `known` (the coordinator's participants).
    pub fn check_known(&self, known: &[String]) -> Result<(), TreeError> {
        match self
            .names()
            .into_iter()
            .find(|n| !known.iter().any(|k| k == n))
        {
            Some(name) => Err(TreeError::Unknown {
                name: name.to_string(),
                known: known.to_vec(),
            }),
            None => Ok(()),
        }
    }

    fn check(&self) -> Result<(), TreeError> {
        let mut seen = std::collections::HashSet::new();
        if let Some(name) = self.names().into_iter().find(|n| !seen.insert(*n)) {
            return Err(TreeError::NamedTwice {
                name: name.to_string(),
            });
        }
        if self.roots.len() > TREE_FAN_OUT_MAX {
            return Err(TreeError::FanOut {
                name: "the coordinator".into(),
                children: self.roots.len(),
            });
        }
        fn limits(nodes: &[TreeNode], depth: usize) -> Result<(), TreeError> {
            for node in nodes {
                if depth > TREE_DEPTH_MAX {
                    return Err(TreeError::TooDeep {
                        name: node.name.clone(),
                        depth,
                    });
                }
                if node.children.len() > TREE_FAN_OUT_MAX {
                    return Err(TreeError::FanOut {
                        name: node.name.clone(),
                        children: node.children.len(),
                    });
                }
                limits(&node.children, depth + 1)?;
            }
            Ok(())
        }
        limits(&self.roots, 1)
    }
}

/// A hierarchical transaction's `(participant, work)` in tree order and
/// the parent of each (0: the coordinator, `k`: the `k`-th of the list).
pub type Plan = (Vec<(String, Vec<u8>)>, Vec<u32>);

/// The branches of a hierarchical transaction in tree order, with each
/// one's parent as `Request::Begin.parents` carries it: over `tree`, or
/// without one a balanced binary tree over the branches in the order
/// given. `branches` has one work per participant; a node of the tree
/// without a branch gets `empty_work` (it only passes messages on).
pub fn plan(
    branches: Vec<(String, Vec<u8>)>,
    tree: Option<&Tree>,
    empty_work: &[u8],
) -> Result<Plan, String> {
    let flat: Vec<(String, u32)> = match tree {
        Some(tree) => tree.flat(),
        None => {
            let nodes = branches
                .iter()
                .map(|(n, _)| (n.clone(), Vec::new()))
                .collect();
            let entries = concord_proto::tree::balanced_binary(nodes);
            concord_proto::tree::check(&entries, "the coordinator", 0)
                .map_err(|e| format!("{e}; give the tree"))?;
            entries.into_iter().map(|e| (e.node, e.parent)).collect()
        }
    };
    if let Some((name, _)) = branches
        .iter()
        .find(|(b, _)| !flat.iter().any(|(n, _)| n == b))
    {
        return Err(format!(
            "participant {name} has a branch but is not in the tree"
        ));
    }
    let mut branches = branches;
    let mut ordered = Vec::with_capacity(flat.len());
    let mut parents = Vec::with_capacity(flat.len());
    for (name, parent) in flat {
        let work = match branches.iter().position(|(b, _)| *b == name) {
            Some(i) => branches.swap_remove(i).1,
            None => empty_work.to_vec(),
        };
        ordered.push((name, work));
        parents.push(parent);
    }
    Ok((ordered, parents))
}

impl Tree {
    /// The tree of `(name, parent name)` pairs, parents first (as
    /// `concord status` gets it). A node whose parent is not earlier in
    /// the list is taken as a root, and the depth is bounded by the list,
    /// so no input can loop.
    pub fn from_parents(nodes: &[(String, Option<String>)]) -> Tree {
        fn build(
            nodes: &[(String, Option<String>)],
            parent: Option<&str>,
            seen: usize,
        ) -> Vec<TreeNode> {
            nodes[..seen]
                .iter()
                .enumerate()
                .filter(|(i, (_, p))| match (p.as_deref(), parent) {
                    (Some(p), Some(parent)) => p == parent,
                    // A root, or a parent not found before it.
                    (p, None) => !matches!(p, Some(p) if nodes[..*i].iter().any(|(n, _)| n == p)),
                    (None, Some(_)) => false,
                })
                .map(|(i, (name, _))| TreeNode {
                    name: name.clone(),
                    // Only nodes listed after this one can be its children.
                    children: build(&nodes[i + 1..seen], Some(name), seen - i - 1),
                })
                .collect()
        }
        Tree {
            roots: build(nodes, None, nodes.len()),
        }
    }
}

impl fmt::Display for Tree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn list(f: &mut fmt::Formatter<'_>, nodes: &[TreeNode]) -> fmt::Result {
            for (i, node) in nodes.iter().enumerate() {
                if i > 0 {
                    f.write_str(",")?;
                }
                f.write_str(&node.name)?;
                if !node.children.is_empty() {
                    f.write_str("(")?;
                    list(f, &node.children)?;
                    f.write_str(")")?;
                }
            }
            Ok(())
        }
        list(f, &self.roots)
    }
}

struct Parser<'a> {
    text: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    /// `node (',' node)*` at nesting `level` (bounded, so a deeply nested
    /// text cannot exhaust the stack: it fails with TooDeep first).
    fn list(&mut self, level: usize) -> Result<Vec<TreeNode>, TreeError> {
        let mut nodes = vec![self.node(level)?];
        loop {
            self.skip_spaces();
            if self.peek() != Some(b',') {
                return Ok(nodes);
            }
            self.at += 1;
            nodes.push(self.node(level)?);
        }
    }

    fn node(&mut self, level: usize) -> Result<TreeNode, TreeError> {
        self.skip_spaces();
        let start = self.at;
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        {
            self.at += 1;
        }
        if self.at == start {
            return Err(self.error("expected a participant name"));
        }
        // Only ASCII bytes were taken, so this is valid UTF-8.
        let name = String::from_utf8_lossy(&self.text[start..self.at]).into_owned();
        self.skip_spaces();
        let mut children = Vec::new();
        if self.peek() == Some(b'(') {
            if level >= TREE_DEPTH_MAX {
                return Err(TreeError::TooDeep {
                    name,
                    depth: level + 1,
                });
            }
            self.at += 1;
            children = self.list(level + 1)?;
            self.skip_spaces();
            if self.peek() != Some(b')') {
                return Err(self.error("expected ',' or ')'"));
            }
            self.at += 1;
        }
        Ok(TreeNode { name, children })
    }

    fn peek(&self) -> Option<u8> {
        self.text.get(self.at).copied()
    }

    fn skip_spaces(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_whitespace()) {
            self.at += 1;
        }
    }

    fn error(&self, detail: &str) -> TreeError {
        let found = match self.peek() {
            Some(c) if c.is_ascii_graphic() => format!(", found '{}'", c as char),
            Some(_) => ", found a byte that is not a name".into(),
            None => ", found the end".into(),
        };
        TreeError::Syntax {
            at: self.at,
            detail: format!("{detail}{found}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_parents_rebuilds_what_flat_gave() {
        for text in ["a", "a,b", "a(b,c),d", "a(b(c(d))),e(f)"] {
            let tree = Tree::parse(text).expect("parses");
            let flat = tree.flat();
            let named: Vec<(String, Option<String>)> = flat
                .iter()
                .map(|(n, p)| (n.clone(), (*p > 0).then(|| flat[*p as usize - 1].0.clone())))
                .collect();
            assert_eq!(Tree::from_parents(&named).to_string(), text);
        }
        // A parent named but not listed before: a root, nothing lost.
        let odd = [
            ("b".to_string(), Some("z".to_string())),
            ("a".to_string(), None),
        ];
        assert_eq!(Tree::from_parents(&odd).to_string(), "b,a");
    }

    #[test]
    fn parses_the_issue_example_and_prints_it_back() {
        let tree = Tree::parse(" bank-a ( bank-b, bank-c ), bank-d ").expect("parses");
        assert_eq!(tree.names(), vec!["bank-a", "bank-b", "bank-c", "bank-d"]);
        assert_eq!(tree.depth(), 2);
        let flat = tree.flat();
        let names: Vec<(&str, u32)> = flat.iter().map(|(n, p)| (n.as_str(), *p)).collect();
        assert_eq!(
            names,
            vec![("bank-a", 0), ("bank-b", 1), ("bank-c", 1), ("bank-d", 0)]
        );
        assert_eq!(tree.to_string(), "bank-a(bank-b,bank-c),bank-d");
        assert_eq!(Tree::parse(&tree.to_string()), Ok(tree));
    }

    #[test]
    fn depth_four_is_allowed_and_five_is_refused_before_recursing_further() {
        let four = Tree::parse("a(b(c(d)))").expect("depth 4");
        assert_eq!(four.depth(), TREE_DEPTH_MAX);
        assert_eq!(
            Tree::parse("a(b(c(d(e))))"),
            Err(TreeError::TooDeep {
                name: "d".into(),
                depth: 5
            })
        );
        // Deep nesting fails fast instead of exhausting the stack.
        let deep = format!("{}x{}", "a(".repeat(2000), ")".repeat(2000));
        assert!(matches!(
            Tree::parse(&deep),
            Err(TreeError::Syntax { .. } | TreeError::TooDeep { .. })
        ));
    }

    #[test]
    fn bad_trees_get_clear_errors() {
        let err = |text: &str| Tree::parse(text).expect_err(text).to_string();
        assert!(
            err("a(b,a)").contains("a appears twice"),
            "{}",
            err("a(b,a)")
        );
        assert!(err("a,b(a)").contains("cycle"), "{}", err("a,b(a)"));
        assert_eq!(
            err("a(b"),
            "bad tree at byte 3: expected ',' or ')', found the end"
        );
        assert_eq!(
            err("a,,b"),
            "bad tree at byte 2: expected a participant name, found ','"
        );
        assert_eq!(
            err(""),
            "bad tree at byte 0: expected a participant name, found the end"
        );
        assert_eq!(
            err("a)b"),
            "bad tree at byte 1: expected ',' or the end, found ')'"
        );
        let wide: Vec<String> = (0..=TREE_FAN_OUT_MAX).map(|i| format!("c{i}")).collect();
        let text = format!("p({})", wide.join(","));
        assert!(err(&text).contains("p has 17 children"), "{}", err(&text));
        assert!(err(&wide.join(",")).contains("the coordinator has 17"));
        let long = "a".repeat(TREE_TEXT_BYTES_MAX + 1);
        assert!(err(&long).contains("longer than"));
    }

    #[test]
    fn unknown_participants_are_named_with_the_known_ones() {
        let tree = Tree::parse("bank-a(bank-z)").expect("parses");
        let known = vec!["bank-a".to_string(), "bank-b".to_string()];
        assert_eq!(
            tree.check_known(&known).expect_err("bank-z").to_string(),
            "unknown participant bank-z in the tree (known: bank-a, bank-b)"
        );
        assert!(Tree::parse("bank-b(bank-a)")
            .expect("parses")
            .check_known(&known)
            .is_ok());
    }
}
