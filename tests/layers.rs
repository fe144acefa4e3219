//! The layers of the sources, read from their `use` lines: each part imports only the parts
//! below it, and no modules import each other in a loop. The order, lowest first, is the one
//! README.md draws; a new part goes into `PARTS` where it belongs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The parts of `src/`, lowest first: a file may import its own part and the ones before it.
const PARTS: [&str; 11] = [
    "sys", "config", "access", "state", "release", "outputs", "steps", "live", "pipeline", "cli",
    "cmd",
];

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `sys::output` for `src/sys/output/mod.rs`, `pipeline::deploy` for `src/pipeline/deploy.rs`.
fn module_of(rel: &Path) -> String {
    let mut parts: Vec<String> = rel
        .with_extension("")
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts.join("::")
}

/// The module paths one line of code names: `crate::a::b::C`, `crate::a::{b, c}`,
/// `super::x`, made absolute from `module`.
fn named(code: &str, module: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut parent: Vec<&str> = module.split("::").collect();
    parent.pop();
    let parent = parent.join("::");
    for (prefix, base) in [("crate::", String::new()), ("super::", parent)] {
        let mut rest = code;
        while let Some(at) = rest.find(prefix) {
            let before = rest[..at].chars().last();
            rest = &rest[at + prefix.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let path: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            let path = path.trim_end_matches(':').to_string();
            let join = |tail: &str| match (base.is_empty(), tail.is_empty()) {
                (true, _) => tail.to_string(),
                (false, true) => base.clone(),
                (false, false) => format!("{base}::{tail}"),
            };
            let after = &rest[path.len()..];
            let group = match path.is_empty() {
                true => after.strip_prefix('{'),
                false => after.strip_prefix("::{"),
            };
            if let Some(group) = group {
                let group = group.split('}').next().unwrap_or_default();
                for item in group.split(',') {
                    let item = item.trim();
                    let item = if item == "self" { "" } else { item };
                    let sep = if path.is_empty() || item.is_empty() {
                        ""
                    } else {
                        "::"
                    };
                    found.push(join(&format!("{path}{sep}{item}")));
                }
            } else {
                found.push(join(&path));
            }
        }
    }
    found
}

/// The longest module of `known` that `path` starts with.
fn resolve<'a>(path: &str, known: &'a BTreeSet<String>) -> Option<&'a String> {
    let segments: Vec<&str> = path.split("::").collect();
    (1..=segments.len())
        .rev()
        .map(|n| segments[..n].join("::"))
        .find_map(|candidate| known.get(&candidate))
}

fn part(module: &str) -> usize {
    let top = module.split("::").next().unwrap_or_default();
    PARTS
        .iter()
        .position(|p| *p == top)
        .unwrap_or_else(|| panic!("`src/{top}` is in no layer: add it to `PARTS`"))
}

/// Each module and the modules it imports (none of its own descendants: a folder's `mod.rs`
/// declares and re-exports its children), with the line that names them.
fn graph() -> BTreeMap<String, BTreeMap<String, String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut modules = BTreeMap::new();
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap().to_path_buf();
        if rel == Path::new("lib.rs") || rel == Path::new("main.rs") {
            continue;
        }
        modules.insert(module_of(&rel), file.clone());
    }
    let known: BTreeSet<String> = modules.keys().cloned().collect();
    let mut graph = BTreeMap::new();
    for (module, file) in &modules {
        let mut edges = BTreeMap::new();
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            for path in named(code, module) {
                let Some(to) = resolve(&path, &known) else {
                    continue;
                };
                if to == module || to.starts_with(&format!("{module}::")) {
                    continue;
                }
                let rel = file.strip_prefix(env!("CARGO_MANIFEST_DIR")).unwrap();
                edges
                    .entry(to.clone())
                    .or_insert_with(|| format!("{}:{}: {}", rel.display(), n + 1, line.trim()));
            }
        }
        graph.insert(module.clone(), edges);
    }
    graph
}

#[test]
fn no_part_imports_one_above_it() {
    let graph = graph();
    let mut upward = Vec::new();
    for (module, edges) in &graph {
        for (to, line) in edges {
            if part(to) > part(module) {
                upward.push(format!("{line}  ({module} imports {to}, above it)"));
            }
        }
    }
    assert!(upward.is_empty(), "upward imports:\n{}", upward.join("\n"));
    // The check sees the imports at all: the pipeline uses the parts below it.
    let deploy = &graph["pipeline::deploy"];
    for below in ["config", "release", "state::record", "steps", "sys::output"] {
        assert!(
            deploy.contains_key(below),
            "pipeline::deploy lost `{below}`"
        );
    }
}

#[test]
fn no_modules_import_each_other_in_a_loop() {
    let graph = graph();
    // Depth-first, keeping the path: an edge back into it is a loop.
    fn visit(
        module: &str,
        graph: &BTreeMap<String, BTreeMap<String, String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        loops: &mut Vec<String>,
    ) {
        if done.contains(module) {
            return;
        }
        if let Some(at) = path.iter().position(|m| m == module) {
            let mut lines: Vec<&str> = Vec::new();
            let mut cycle = path[at..].to_vec();
            cycle.push(module.to_string());
            for pair in cycle.windows(2) {
                lines.push(&graph[&pair[0]][&pair[1]]);
            }
            loops.push(lines.join("\n  "));
            return;
        }
        path.push(module.to_string());
        for to in graph[module].keys() {
            visit(to, graph, path, done, loops);
        }
        path.pop();
        done.insert(module.to_string());
    }
    let mut done = BTreeSet::new();
    let mut loops = Vec::new();
    for module in graph.keys() {
        visit(module, &graph, &mut Vec::new(), &mut done, &mut loops);
    }
    assert!(
        loops.is_empty(),
        "import loops:\n  {}",
        loops.join("\n\n  ")
    );
}

#[test]
fn the_reader_finds_every_kind_of_import() {
    let names = |code| named(code, "pipeline::deploy");
    assert_eq!(
        names("use crate::state::layout::Layout;"),
        ["state::layout::Layout"]
    );
    assert_eq!(
        names("use crate::live::{health, restart};"),
        ["live::health", "live::restart"]
    );
    assert_eq!(names("use crate::{release, steps};"), ["release", "steps"]);
    assert_eq!(
        names("use super::session::Session;"),
        ["pipeline::session::Session"]
    );
    assert_eq!(
        named(
            "use super::{is_file, trusted_path};",
            "sys::owner::user_dir"
        ),
        ["sys::owner::is_file", "sys::owner::trusted_path"]
    );
    assert_eq!(
        named("use super::Duration;", "config::step"),
        ["config::Duration"]
    );
    assert_eq!(
        named("let x = crate::sys::http::agent();", "live::health"),
        ["sys::http::agent"]
    );
    assert_eq!(
        named("use super::{is_root};", "sys::owner"),
        ["sys::is_root"]
    );
    assert!(names("use ats_hook::crate_like::x;").is_empty());
}
