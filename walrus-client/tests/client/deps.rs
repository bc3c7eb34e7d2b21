//! The client crate stays lean: an application that only talks to Walrus
//! must not build the server's storage engines.

use std::process::Command;

/// Crates that belong to the server's storage, never to a client.
const FORBIDDEN: [&str; 3] = ["openraft", "redb", "memmap2"];

#[test]
fn given_the_client_crate_when_listing_its_dependency_tree_should_hold_no_storage_engine() {
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let out = Command::new(env!("CARGO"))
        .args(["tree", "--offline", "--edges", "normal,build"])
        .args(["--prefix", "none", "--format", "{p}"])
        .args(["--manifest-path", manifest, "-p", "walrus-client"])
        .output()
        .expect("cargo runs this test, so it can run `cargo tree`");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "cargo tree failed: {stderr}");
    let tree = String::from_utf8_lossy(&out.stdout);
    let names: Vec<&str> = tree.lines().filter_map(|l| l.split(' ').next()).collect();
    assert!(
        names.contains(&"walrus-client") && names.contains(&"tokio"),
        "cargo tree printed no tree: {tree}"
    );
    let found: Vec<&&str> = FORBIDDEN.iter().filter(|f| names.contains(f)).collect();
    assert!(
        found.is_empty(),
        "walrus-client depends on {found:?}; keep storage engines out of the client:\n{tree}"
    );
}
