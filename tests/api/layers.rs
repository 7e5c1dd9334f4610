//! The one-way layering of `src/`, checked over the code itself: every `crate::` path
//! a module's files name must point to a lower floor. Run it alone with
//! `cargo test --test api layers`; a new top-level module must be given its floor here.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

/// Floors, lowest first. A module may use those on lower floors only (entry points, on
/// the top floors, also each other's lower ones).
const FLOORS: &[(&str, u8)] = &[
    ("domain", 0),
    ("config", 0),
    ("secrets", 1),
    ("telemetry", 1),
    ("sharding", 1),
    ("storage", 2),
    ("messaging", 3),
    ("ledger", 3),
    ("gateways", 4),
    ("transfer", 5),
    ("resharding", 5),
    ("payments", 5),
    ("api", 6),
    ("startup", 7),
    ("testdata", 7),
    ("bench", 8),
    ("cli", 9),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src").flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules named by `crate::` paths in `code` (comments left out).
fn uses(code: &str) -> BTreeSet<String> {
    let code: String = code.lines().map(|l| l.split("//").next().unwrap_or_default()).collect::<Vec<_>>().join("\n");
    let mut found = BTreeSet::new();
    let ident = |s: &str| s.chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect::<String>();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `use crate::{a::x, b::{y, z}};`: the first name of each top-level item.
            let (mut depth, mut start) = (0, 0);
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        found.insert(ident(group[start..j].trim()));
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        found.insert(ident(group[start..j].trim()));
                        start = j + 1;
                    }
                    _ => {}
                }
            }
        } else {
            found.insert(ident(rest));
        }
    }
    found.retain(|m| !m.is_empty());
    found
}

#[test]
fn lower_layers_never_use_higher_ones() {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let floors: BTreeMap<&str, u8> = FLOORS.iter().copied().collect();
    let mut edges: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let relative = file.strip_prefix(&src).expect("under src");
        let first = relative.components().next().expect("a path").as_os_str().to_string_lossy();
        let module = first.trim_end_matches(".rs").to_string();
        if module == "lib" || module == "main" {
            continue;
        }
        let code = std::fs::read_to_string(file).expect("read");
        for used in uses(&code) {
            if used != module {
                edges.entry((module.clone(), used)).or_default().insert(relative.display().to_string());
            }
        }
    }
    let mut unplaced = BTreeSet::new();
    let mut upward = Vec::new();
    for ((from, to), files) in &edges {
        match (floors.get(from.as_str()), floors.get(to.as_str())) {
            (Some(a), Some(b)) if a > b => {}
            (Some(_), Some(_)) => upward.push(format!("{from} -> {to} in {files:?}")),
            (a, b) => {
                if a.is_none() {
                    unplaced.insert(from.clone());
                }
                if b.is_none() {
                    unplaced.insert(to.clone());
                }
            }
        }
    }
    assert!(unplaced.is_empty(), "modules with no floor in tests/api/layers.rs: {unplaced:?}");
    assert!(upward.is_empty(), "imports that do not point down:\n{}", upward.join("\n"));
    // The checker itself sees the arrows it should.
    assert!(edges.contains_key(&("api".into(), "ledger".into())));
    assert!(edges.contains_key(&("transfer".into(), "messaging".into())));
}

#[test]
fn the_use_parser_reads_groups_paths_and_skips_comments() {
    let code = "use crate::{a::x, b::{y, z}, c};\n// crate::hidden\nlet v = crate::d::f();";
    let found: Vec<String> = uses(code).into_iter().collect();
    assert_eq!(found, ["a", "b", "c", "d"]);
}
