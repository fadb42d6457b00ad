//! A unified-style line diff of two policy sets, file by file.

use std::fmt::Write as _;

use palisade_policies::PolicyFile;

/// Lines of unchanged context around each change.
const CONTEXT: usize = 3;

/// Above this many line pairs the LCS table is not built and the file is
/// shown as wholly replaced.
const MAX_CELLS: usize = 4_000_000;

/// How a file differs between two sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileChange {
    /// Only in the new set.
    Added,
    /// Only in the old set.
    Removed,
    /// In both, with different text.
    Modified,
}

/// One file that differs, with its hunks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileDiff {
    /// The file's name.
    pub name: String,
    /// Added, removed or modified.
    pub change: FileChange,
    /// The hunks, each starting with `@@ -a,b +c,d @@`, lines prefixed
    /// with ` `, `-` or `+`.
    pub hunks: String,
}

/// The files that differ between `old` and `new`, in name order.
#[must_use]
pub fn diff_files(old: &[PolicyFile], new: &[PolicyFile]) -> Vec<FileDiff> {
    let mut names: Vec<&str> = old.iter().chain(new).map(|f| f.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let text = |set: &[PolicyFile], name: &str| set.iter().find(|f| f.name == name).map(|f| f.text.clone());
    names
        .into_iter()
        .filter_map(|name| {
            let (before, after) = (text(old, name), text(new, name));
            let change = match (&before, &after) {
                (None, Some(_)) => FileChange::Added,
                (Some(_), None) => FileChange::Removed,
                (Some(a), Some(b)) if a != b => FileChange::Modified,
                _ => return None,
            };
            let hunks = hunks(before.as_deref().unwrap_or(""), after.as_deref().unwrap_or(""));
            Some(FileDiff { name: name.to_owned(), change, hunks })
        })
        .collect()
}

/// The whole diff as text, with `---`/`+++` headers naming the versions.
#[must_use]
pub fn render_diff(diffs: &[FileDiff], old_label: &str, new_label: &str) -> String {
    let mut out = String::new();
    for diff in diffs {
        let old = if diff.change == FileChange::Added { "/dev/null".to_owned() } else { format!("a/{}", diff.name) };
        let new = if diff.change == FileChange::Removed { "/dev/null".to_owned() } else { format!("b/{}", diff.name) };
        let _ = writeln!(out, "--- {old}\t({old_label})\n+++ {new}\t({new_label})");
        out.push_str(&diff.hunks);
    }
    out
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Keep,
    Delete,
    Insert,
}

/// The edit script from `a` to `b`: each op with the line it refers to.
fn edit_script<'t>(a: &[&'t str], b: &[&'t str]) -> Vec<(Op, &'t str)> {
    let (n, m) = (a.len(), b.len());
    if n.saturating_mul(m) > MAX_CELLS {
        let deleted = a.iter().map(|l| (Op::Delete, *l));
        return deleted.chain(b.iter().map(|l| (Op::Insert, *l))).collect();
    }
    // lcs[i][j]: the longest common subsequence of a[i..] and b[j..].
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
        }
    }
    let (mut i, mut j, mut ops) = (0, 0, Vec::with_capacity(n + m));
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            ops.push((Op::Keep, a[i]));
            (i, j) = (i + 1, j + 1);
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            // Deletions before insertions, as diff(1) shows them.
            ops.push((Op::Delete, a[i]));
            i += 1;
        } else {
            ops.push((Op::Insert, b[j]));
            j += 1;
        }
    }
    ops
}

fn hunks(old: &str, new: &str) -> String {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let ops = edit_script(&a, &b);
    let changed: Vec<usize> = ops.iter().enumerate().filter(|(_, (op, _))| *op != Op::Keep).map(|(i, _)| i).collect();
    // Group changes whose context would touch or overlap.
    let mut groups: Vec<(usize, usize)> = Vec::new();
    for &at in &changed {
        match groups.last_mut() {
            Some((_, end)) if at <= *end + 2 * CONTEXT + 1 => *end = at,
            _ => groups.push((at, at)),
        }
    }
    // Line numbers (0-based) in a and b before each op.
    let mut positions = Vec::with_capacity(ops.len() + 1);
    let (mut ai, mut bi) = (0usize, 0usize);
    for (op, _) in &ops {
        positions.push((ai, bi));
        match op {
            Op::Keep => (ai, bi) = (ai + 1, bi + 1),
            Op::Delete => ai += 1,
            Op::Insert => bi += 1,
        }
    }
    let mut out = String::new();
    for (first, last) in groups {
        let start = first.saturating_sub(CONTEXT);
        let end = (last + CONTEXT + 1).min(ops.len());
        let slice = &ops[start..end];
        let old_count = slice.iter().filter(|(op, _)| *op != Op::Insert).count();
        let new_count = slice.iter().filter(|(op, _)| *op != Op::Delete).count();
        let (a_at, b_at) = positions[start];
        let from = |at: usize, count: usize| if count == 0 { at } else { at + 1 };
        let _ = writeln!(out, "@@ -{},{old_count} +{},{new_count} @@", from(a_at, old_count), from(b_at, new_count));
        for (op, line) in slice {
            let mark = match op {
                Op::Keep => ' ',
                Op::Delete => '-',
                Op::Insert => '+',
            };
            let _ = writeln!(out, "{mark}{line}");
        }
    }
    out
}
