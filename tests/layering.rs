//! The crate's layering, read from its source: which top-level module
//! reaches which (`crate::<module>` outside comments and tests). Layers go
//! one way: server → runtime (the core) → sandbox/container/image/network/
//! storage/store/cgroups/stats/streaming → monitor client ‖ monitor → executor.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Graph = BTreeMap<String, BTreeSet<String>>;

/// Code of a source file without comments and without its test module.
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or("");
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Each top-level module of `src/` and the top-level modules it names, and
/// the external crates it names.
fn graph() -> (Graph, Graph) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    let (mut modules, mut externs) = (Graph::new(), Graph::new());
    for f in files {
        let rel = f.strip_prefix(&src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let module = first.trim_end_matches(".rs").to_string();
        if matches!(module.as_str(), "lib" | "main" | "bin") {
            continue;
        }
        let text = code(&std::fs::read_to_string(&f).unwrap());
        let entry = modules.entry(module.clone()).or_default();
        for part in text.split("crate::").skip(1) {
            let name: String = part
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() && name != module {
                entry.insert(name);
            }
        }
        let ext = externs.entry(module).or_default();
        for krate in ["tonic", "hyper", "tokio"] {
            if text.contains(&format!("{krate}::")) {
                ext.insert(krate.to_string());
            }
        }
    }
    (modules, externs)
}

/// A cycle through `start`, if any.
fn cycle(g: &Graph, start: &str) -> Option<Vec<String>> {
    fn dfs(
        g: &Graph,
        at: &str,
        start: &str,
        path: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        for next in g.get(at).into_iter().flatten() {
            if next == start {
                return true;
            }
            if seen.insert(next.clone()) {
                path.push(next.clone());
                if dfs(g, next, start, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![start.to_string()];
    dfs(g, start, start, &mut path, &mut BTreeSet::new()).then_some(path)
}

#[test]
fn modules_form_no_cycle() {
    let (g, _) = graph();
    println!("{g:#?}");
    for m in g.keys() {
        if let Some(c) = cycle(&g, m) {
            panic!("module cycle: {} -> {m}", c.join(" -> "));
        }
    }
}

#[test]
fn layers_go_one_way() {
    let (g, ext) = graph();
    let reaches = |m: &str| g.get(m).cloned().unwrap_or_default();
    // The processes outside the daemon and the code they run.
    for low in ["executor", "monitor"] {
        for high in [
            "server",
            "runtime",
            "sandbox",
            "container",
            "image",
            "streaming",
            "store",
            "network",
        ] {
            assert!(!reaches(low).contains(high), "{low} reaches {high}");
        }
        assert!(!ext[low].contains("tonic"), "{low} uses tonic");
    }
    // Handlers reach only the core (and its error type).
    let server: BTreeSet<String> = reaches("server");
    let allowed: BTreeSet<String> = ["runtime", "error"].iter().map(|s| s.to_string()).collect();
    assert!(
        server.is_subset(&allowed),
        "server reaches {:?}",
        server.difference(&allowed).collect::<Vec<_>>()
    );
    // Stats read cgroups and namespaces by path; what to sample is the
    // core's business.
    let stats = reaches("stats");
    assert!(
        stats.iter().all(|m| m == "cgroups"),
        "stats reaches {stats:?}"
    );
    // Images know nothing of pods and containers.
    for m in ["sandbox", "container", "runtime"] {
        assert!(!reaches("image").contains(m), "image reaches {m}");
    }
    // Only the daemon and the core wire subsystems together.
    for sub in [
        "sandbox",
        "container",
        "image",
        "network",
        "storage",
        "store",
        "cgroups",
        "stats",
        "telemetry",
    ] {
        assert!(!reaches(sub).contains("runtime"), "{sub} reaches the core");
        assert!(!reaches(sub).contains("server"), "{sub} reaches the server");
    }
}
