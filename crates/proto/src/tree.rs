//! The participant tree of a hierarchical transaction (SPEC §1.7) as the
//! protocol carries it: flat, parents before children, each entry naming
//! its parent by index. Flat on purpose: a nested structure decoded from
//! the network would recurse once per level, and bad bytes could nest
//! deep enough to exhaust the stack; a flat list is checked in one pass.
//!
//! Index 0 is whoever holds the list (the coordinator for a whole tree, a
//! sub-coordinator for its subtree); entry `i` of the list is index
//! `i + 1`.

use crate::ids::NodeId;
use serde::{Deserialize, Serialize};

/// Deepest tree a transaction may have, counting the coordinator's direct
/// participants as depth 1 (SPEC: at least 4).
pub const TREE_DEPTH_MAX: usize = 4;
/// Most children one node (the coordinator or a sub-coordinator) may have.
pub const TREE_FAN_OUT_MAX: usize = 16;

/// One branch of a tree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeEntry {
    pub node: NodeId,
    /// 0: the holder of the list; `k`: entry `k - 1`, always an earlier one.
    pub parent: u32,
    pub work: Vec<u8>,
}

/// Why a tree was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TreeShapeError {
    /// An entry's parent is not an earlier entry.
    BadParent {
        node: NodeId,
        parent: u32,
    },
    NamedTwice {
        node: NodeId,
    },
    TooDeep {
        node: NodeId,
        depth: usize,
    },
    FanOut {
        parent: String,
        children: usize,
    },
}

impl std::fmt::Display for TreeShapeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TreeShapeError::BadParent { node, parent } => {
                write!(f, "{node}'s parent {parent} is not listed before it")
            }
            TreeShapeError::NamedTwice { node } => {
                write!(f, "participant {node} appears twice in the tree")
            }
            TreeShapeError::TooDeep { node, depth } => write!(
                f,
                "the tree is {depth} levels deep at {node}; at most {TREE_DEPTH_MAX} are allowed"
            ),
            TreeShapeError::FanOut { parent, children } => write!(
                f,
                "{parent} has {children} children in the tree; at most {TREE_FAN_OUT_MAX} \
                 are allowed"
            ),
        }
    }
}

/// Check that `entries` form a tree below its holder at `depth_held` (0
/// for the coordinator) within the limits, each node once. `holder` names
/// the holder in errors.
pub fn check(entries: &[TreeEntry], holder: &str, depth_held: usize) -> Result<(), TreeShapeError> {
    let mut depth = vec![depth_held; entries.len() + 1];
    let mut fan_out = vec![0usize; entries.len() + 1];
    for (i, entry) in entries.iter().enumerate() {
        let parent = entry.parent as usize;
        if parent > i {
            return Err(TreeShapeError::BadParent {
                node: entry.node.clone(),
                parent: entry.parent,
            });
        }
        if entries[..i].iter().any(|e| e.node == entry.node) {
            return Err(TreeShapeError::NamedTwice {
                node: entry.node.clone(),
            });
        }
        depth[i + 1] = depth[parent] + 1;
        if depth[i + 1] > TREE_DEPTH_MAX {
            return Err(TreeShapeError::TooDeep {
                node: entry.node.clone(),
                depth: depth[i + 1],
            });
        }
        fan_out[parent] += 1;
        if fan_out[parent] > TREE_FAN_OUT_MAX {
            let parent = match parent {
                0 => holder.to_string(),
                p => entries[p - 1].node.to_string(),
            };
            return Err(TreeShapeError::FanOut {
                parent,
                children: TREE_FAN_OUT_MAX + 1,
            });
        }
    }
    Ok(())
}

/// The indices (into `entries`) of the direct children of index `of` (0:
/// the holder).
pub fn children_of(entries: &[TreeEntry], of: usize) -> Vec<usize> {
    (0..entries.len())
        .filter(|&i| entries[i].parent as usize == of)
        .collect()
}

/// The entries below entry `i`, re-indexed so that entry `i` holds them
/// (parent 0 is entry `i`). Parents stay before children.
pub fn subtree(entries: &[TreeEntry], i: usize) -> Vec<TreeEntry> {
    // new_index[j]: where entry j lands in the subtree (1-based), or 0.
    let mut new_index = vec![0u32; entries.len()];
    let mut out = Vec::new();
    for j in i + 1..entries.len() {
        let parent = entries[j].parent as usize;
        let parent_new = if parent == i + 1 {
            Some(0)
        } else if parent > i + 1 && new_index[parent - 1] > 0 {
            Some(new_index[parent - 1])
        } else {
            None
        };
        if let Some(parent) = parent_new {
            out.push(TreeEntry {
                node: entries[j].node.clone(),
                parent,
                work: entries[j].work.clone(),
            });
            new_index[j] = out.len() as u32;
        }
    }
    out
}

/// Levels below the holder (0 for no entries).
pub fn height(entries: &[TreeEntry]) -> usize {
    let mut depth = vec![0usize; entries.len() + 1];
    for (i, entry) in entries.iter().enumerate() {
        depth[i + 1] = depth.get(entry.parent as usize).copied().unwrap_or(0) + 1;
    }
    depth.into_iter().max().unwrap_or(0)
}

/// A balanced binary tree over `nodes` in order (node `k`'s children are
/// `2k + 1` and `2k + 2`), below one root: the default tree of
/// `concord bench --shape hierarchical`. Deeper than `TREE_DEPTH_MAX` from
/// 16 nodes on; callers check.
pub fn balanced_binary(nodes: Vec<(NodeId, Vec<u8>)>) -> Vec<TreeEntry> {
    nodes
        .into_iter()
        .enumerate()
        .map(|(k, (node, work))| TreeEntry {
            node,
            // Node k's parent is (k - 1) / 2, which is entry index + 1.
            parent: if k == 0 { 0 } else { ((k - 1) / 2 + 1) as u32 },
            work,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(node: &str, parent: u32) -> TreeEntry {
        TreeEntry {
            node: node.to_string(),
            parent,
            work: node.as_bytes().to_vec(),
        }
    }

    #[test]
    fn subtrees_are_reindexed_below_their_root() {
        // a(b(c),d),e
        let tree = vec![
            entry("a", 0),
            entry("b", 1),
            entry("c", 2),
            entry("d", 1),
            entry("e", 0),
        ];
        assert_eq!(check(&tree, "the coordinator", 0), Ok(()));
        assert_eq!(children_of(&tree, 0), vec![0, 4]);
        assert_eq!(height(&tree), 3);
        let below_a = subtree(&tree, 0);
        assert_eq!(below_a, vec![entry("b", 0), entry("c", 1), entry("d", 0)]);
        assert_eq!(subtree(&below_a, 0), vec![entry("c", 0)]);
        assert!(subtree(&tree, 4).is_empty());
        assert_eq!(height(&[]), 0);
    }

    #[test]
    fn bad_trees_are_refused() {
        assert!(matches!(
            check(&[entry("a", 1)], "c", 0),
            Err(TreeShapeError::BadParent { .. })
        ));
        assert!(matches!(
            check(&[entry("a", 0), entry("a", 1)], "c", 0),
            Err(TreeShapeError::NamedTwice { .. })
        ));
        let chain: Vec<TreeEntry> = (0..5).map(|i| entry(&format!("n{i}"), i)).collect();
        assert_eq!(check(&chain[..4], "c", 0), Ok(()));
        assert!(matches!(
            check(&chain, "c", 0),
            Err(TreeShapeError::TooDeep { depth: 5, .. })
        ));
        // A subtree held at depth 3 may only be one level deep.
        assert!(check(&chain[..1], "s", 3).is_ok());
        assert!(check(&chain[..2], "s", 3).is_err());
        let wide: Vec<TreeEntry> = (0..17).map(|i| entry(&format!("w{i}"), 0)).collect();
        assert!(matches!(
            check(&wide, "c", 0),
            Err(TreeShapeError::FanOut { children: 17, .. })
        ));
    }

    #[test]
    fn balanced_binary_puts_children_at_2k_plus_1() {
        let nodes = (0..7).map(|i| (format!("p{i}"), Vec::new())).collect();
        let tree = balanced_binary(nodes);
        let parents: Vec<u32> = tree.iter().map(|e| e.parent).collect();
        assert_eq!(parents, vec![0, 1, 1, 2, 2, 3, 3]);
        assert_eq!(height(&tree), 3);
        assert_eq!(check(&tree, "c", 0), Ok(()));
    }
}
