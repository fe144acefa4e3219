//! The import direction of the sources, as far as it is laid out yet: the commands sit on top
//! (nothing below `src/cmd/` imports them), and the deploy's own parts (`recover`, `spare`,
//! `steps`, `plan`) do not import the deploy that runs them.

use std::path::Path;

/// Every `.rs` file under `dir`, relative to the crate.
fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn no_module_imports_one_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut upward = Vec::new();
    for file in &files {
        let rel = file
            .strip_prefix(&src)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let text = std::fs::read_to_string(file).unwrap();
        let mut above: Vec<&str> = Vec::new();
        if !rel.starts_with("cmd/") && rel != "lib.rs" && rel != "main.rs" {
            above.push("crate::cmd");
        }
        if ["recover.rs", "spare.rs", "steps.rs", "plan.rs"].contains(&rel.as_str()) {
            above.push("crate::pipeline::deploy");
        }
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            for name in &above {
                if code.contains(&format!("{name}::")) || code.contains(&format!("{name};")) {
                    upward.push(format!("src/{rel}:{}: {}", n + 1, line.trim()));
                }
            }
        }
    }
    assert!(upward.is_empty(), "upward imports:\n{}", upward.join("\n"));
}
