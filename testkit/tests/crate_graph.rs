//! The workspace's crate graph points only down (docs/architecture.md draws it): each crate
//! links exactly the crates below it that it needs, test support is never linked by a
//! binary, and nothing links the runner, the operator or the command line for a type.

use std::collections::{BTreeMap, BTreeSet};

/// The workspace crates each crate may link (normal dependencies), lowest layer first.
const ALLOWED: &[(&str, &[&str])] = &[
    ("cliscale-core", &[]),
    ("cliscale-crd", &["cliscale-core"]),
    ("cliscale-serve", &["cliscale-core"]),
    ("cliscale-client", &["cliscale-core"]),
    ("cliscale-testkit", &["cliscale-core", "cliscale-crd", "cliscale-client"]),
    ("cliscale-runner", &["cliscale-core", "cliscale-serve"]),
    ("cliscale-api", &["cliscale-core"]),
    ("cliscale-gateway", &["cliscale-core", "cliscale-crd"]),
    ("cliscale-operator", &["cliscale-core", "cliscale-crd", "cliscale-serve", "cliscale-api"]),
    (
        "cliscale",
        &["cliscale-core", "cliscale-serve", "cliscale-client", "cliscale-api", "cliscale-gateway"],
    ),
    // Test support: drives the parsers that meet hostile bytes, the runner's archive extraction
    // among them.
    ("cliscale-fuzz", &["cliscale-core", "cliscale-runner", "cliscale-api"]),
];

fn workspace_links() -> BTreeMap<String, (BTreeSet<String>, BTreeSet<String>)> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let metadata: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut links = BTreeMap::new();
    for package in metadata["packages"].as_array().unwrap() {
        let (mut normal, mut dev) = (BTreeSet::new(), BTreeSet::new());
        for dep in package["dependencies"].as_array().unwrap() {
            let name = dep["name"].as_str().unwrap();
            if !name.starts_with("cliscale") {
                continue;
            }
            match dep["kind"].as_str() {
                Some("dev") => dev.insert(name.to_owned()),
                _ => normal.insert(name.to_owned()),
            };
        }
        links.insert(package["name"].as_str().unwrap().to_owned(), (normal, dev));
    }
    links
}

#[test]
fn every_crate_links_only_what_lies_below_it() {
    let links = workspace_links();
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    assert_eq!(
        links.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        allowed.keys().copied().collect::<BTreeSet<_>>(),
        "a crate was added or removed: place it in the graph (here and in docs/architecture.md)"
    );
    // A layer only links crates of lower layers: the order of ALLOWED is a topological order.
    for (i, (name, deps)) in ALLOWED.iter().enumerate() {
        let below: BTreeSet<&str> = ALLOWED[..i].iter().map(|(n, _)| *n).collect();
        for dep in *deps {
            assert!(below.contains(dep), "{name} may not link {dep}, which is not below it");
        }
    }
    for (name, (normal, dev)) in &links {
        let expected: BTreeSet<String> =
            allowed[name.as_str()].iter().map(|s| s.to_string()).collect();
        assert_eq!(normal, &expected, "{name} links other workspace crates than its place allows");
        assert!(
            !normal.contains("cliscale-testkit"),
            "{name} links test support outside its tests"
        );
        assert!(
            !dev.contains("cliscale-runner") && !dev.contains("cliscale"),
            "{name}'s tests link a binary crate; start the binary instead"
        );
    }
}
