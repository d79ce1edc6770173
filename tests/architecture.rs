//! The shape of the code, checked: dependencies between the top-level
//! modules point down the layers only, and no two files import each other,
//! directly or around a loop. Reads the `crate::` and `super::` paths of
//! every file under `src/` (test modules left out).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each top-level module and its layer: a module may use modules of a lower
/// layer, never one of its own layer or above.
const LAYERS: &[(&str, u32)] = &[
    ("error", 0),
    ("clock", 0),
    ("settings", 0),
    ("metrics", 0),
    ("backoff_policy", 1),
    ("telemetry", 1),
    ("domain", 1),
    ("store", 2),
    ("protocol", 3),
    ("broker", 4),
    ("usage", 5),
    ("billing", 6),
    ("provisioning", 7),
    ("context", 8),
    ("workers", 9),
    ("http", 9),
    ("client", 9),
    ("app", 10),
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module path of a file: `src/billing/issue.rs` is `["billing", "issue"]`.
fn module_of(file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src()).expect("under src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib" || p == "main") {
        parts.pop();
    }
    parts
}

/// The code of a file without its test module (by convention at the end,
/// after `#[cfg(test)]`) and without comments.
fn code(file: &Path) -> String {
    let text = std::fs::read_to_string(file).expect("read");
    let text = text.split("#[cfg(test)]").next().unwrap_or_default();
    text.lines()
        .map(|l| l.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every module path a file names: `crate::a::b::c` and `super::x`, with
/// `use` groups (`crate::a::{b, c::d}`) expanded.
fn referenced_paths(code: &str, own: &[String]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let text = code;
    let parent = own[..own.len().saturating_sub(1)].to_vec();
    for (anchor, base) in [
        ("crate::", Vec::new()),
        ("super::", parent),
        ("self::", own.to_vec()),
        // A relative `use child::...` of a module file.
        ("use ", own.to_vec()),
        ("pub use ", own.to_vec()),
        ("pub(crate) use ", own.to_vec()),
    ] {
        let mut from = 0;
        while let Some(pos) = text[from..].find(anchor) {
            let start = from + pos;
            from = start + anchor.len();
            let before = text[..start].chars().last();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let rest = &text[from..];
            if anchor.ends_with("use ")
                && ["crate::", "super::", "self::", "std::", "core::", "alloc::"]
                    .iter()
                    .any(|p| rest.starts_with(p))
            {
                continue;
            }
            expand(rest, &base, &mut out);
        }
    }
    out
}

/// Reads one path (and its braces) at the start of `rest`.
fn expand(rest: &str, prefix: &[String], out: &mut Vec<Vec<String>>) {
    let mut path = prefix.to_vec();
    let mut segment = String::new();
    for (i, c) in rest.char_indices() {
        if c.is_alphanumeric() || c == '_' {
            segment.push(c);
        } else if c == ':' {
            if !segment.is_empty() {
                path.push(std::mem::take(&mut segment));
            }
        } else if c == '{' && segment.is_empty() {
            // A group: each item is a path below `path`.
            let inner = &rest[i + 1..];
            let mut depth = 1;
            let mut end = inner.len();
            for (j, d) in inner.char_indices() {
                match d {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            end = j;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            let group = &inner[..end];
            let mut depth = 0;
            let mut item_start = 0;
            for (j, d) in group.char_indices() {
                match d {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        expand(group[item_start..j].trim(), &path, out);
                        item_start = j + 1;
                    }
                    _ => {}
                }
            }
            expand(group[item_start..].trim(), &path, out);
            return;
        } else {
            break;
        }
    }
    if !segment.is_empty() {
        path.push(segment);
    }
    if !path.is_empty() {
        out.push(path);
    }
}

/// The file that defines the longest prefix of `path` that is a module.
fn file_of(path: &[String], modules: &BTreeMap<Vec<String>, PathBuf>) -> Option<PathBuf> {
    (1..=path.len())
        .rev()
        .find_map(|n| modules.get(&path[..n].to_vec()).cloned())
}

fn graph() -> (BTreeMap<PathBuf, BTreeSet<PathBuf>>, BTreeMap<Vec<String>, PathBuf>) {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    files.retain(|f| !f.ends_with("main.rs"));
    let modules: BTreeMap<Vec<String>, PathBuf> = files.iter().map(|f| (module_of(f), f.clone())).collect();
    let mut edges: BTreeMap<PathBuf, BTreeSet<PathBuf>> = BTreeMap::new();
    for file in &files {
        let own = module_of(file);
        let targets = edges.entry(file.clone()).or_default();
        for path in referenced_paths(&code(file), &own) {
            if let Some(target) = file_of(&path, &modules)
                && &target != file
                && !module_of(&target).is_empty()
            {
                targets.insert(target);
            }
        }
    }
    (edges, modules)
}

fn rel(p: &Path) -> String {
    p.strip_prefix(src()).unwrap_or(p).display().to_string()
}

#[test]
fn top_level_modules_only_point_down_the_layers() {
    let layers: BTreeMap<&str, u32> = LAYERS.iter().copied().collect();
    let (edges, _) = graph();
    let mut wrong = Vec::new();
    for (file, targets) in &edges {
        let Some(from) = module_of(file).first().cloned() else {
            continue; // lib.rs declares the modules
        };
        let Some(&from_layer) = layers.get(from.as_str()) else {
            wrong.push(format!("{}: module `{from}` has no layer in LAYERS", rel(file)));
            continue;
        };
        for target in targets {
            let to = module_of(target).first().cloned().unwrap_or_default();
            if to == from {
                continue;
            }
            let to_layer = layers.get(to.as_str()).copied().unwrap_or(u32::MAX);
            if to_layer >= from_layer {
                wrong.push(format!("{} uses {} ({from} may not use {to})", rel(file), rel(target)));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "dependencies that point up or sideways:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn no_two_files_import_each_other() {
    let (edges, _) = graph();
    // Depth-first search for a cycle, reporting it.
    fn visit(
        node: &PathBuf,
        edges: &BTreeMap<PathBuf, BTreeSet<PathBuf>>,
        state: &mut BTreeMap<PathBuf, u8>,
        stack: &mut Vec<PathBuf>,
    ) -> Option<Vec<PathBuf>> {
        state.insert(node.clone(), 1);
        stack.push(node.clone());
        for next in edges.get(node).into_iter().flatten() {
            match state.get(next).copied().unwrap_or(0) {
                1 => {
                    let start = stack.iter().position(|n| n == next).unwrap_or(0);
                    let mut cycle = stack[start..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(cycle) = visit(next, edges, state, stack) {
                        return Some(cycle);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(node.clone(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in edges.keys() {
        if state.get(node).copied().unwrap_or(0) == 0 {
            let mut stack = Vec::new();
            if let Some(cycle) = visit(node, &edges, &mut state, &mut stack) {
                let names: Vec<String> = cycle.iter().map(|p| rel(p)).collect();
                panic!("files import each other: {}", names.join(" -> "));
            }
        }
    }
}

#[test]
fn the_reader_sees_groups_and_nested_paths() {
    let own = vec!["billing".to_string(), "issue".to_string()];
    let paths = referenced_paths(
        "use crate::store::{self, bills::BillRow};\nuse super::debits::x; let y = crate::domain::money::Currency::parse(s);",
        &own,
    );
    let names: Vec<String> = paths.iter().map(|p| p.join("::")).collect();
    assert!(names.contains(&"store::bills::BillRow".to_string()), "{names:?}");
    assert!(names.contains(&"billing::debits::x".to_string()), "{names:?}");
    assert!(
        names.contains(&"domain::money::Currency::parse".to_string()),
        "{names:?}"
    );
}
