//! The workspace's packages, as `cargo metadata` reports them.
//!
//! Cargo reads the manifests (workspace inheritance, `[target.…]` tables,
//! renames) so that tidy does not have to: `cargo metadata --format-version
//! 1 --no-deps --offline` reads no registry and builds nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// One workspace package, reduced to what tidy checks.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Package {
    /// `name`.
    pub name: String,
    /// `version`.
    pub version: String,
    /// The package's directory, relative to the root (`crates/wd-xml`;
    /// empty for a package at the root).
    pub dir: String,
    /// The manifest's path, relative to the root.
    pub path: String,
    /// Normal and build dependencies (all names, not only ours).
    pub deps: BTreeSet<String>,
    /// Dev-dependencies.
    pub dev_deps: BTreeSet<String>,
    /// Whether `cargo publish` may publish it (`publish` is not `false`).
    pub publishable: bool,
    /// The names of its binary targets.
    pub bins: BTreeSet<String>,
    /// `[package.metadata.deb] name`, if any.
    pub deb_name: Option<String>,
    /// `[package.metadata.deb] systemd-units.unit-name`, if any.
    pub deb_unit: Option<String>,
}

/// The workspace members under `root`, by name; or why cargo could not
/// tell.
pub fn packages(root: &Path) -> Result<BTreeMap<String, Package>, String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .arg("--manifest-path")
        .arg(root.join("Cargo.toml"))
        .output()
        .map_err(|e| format!("cannot run cargo metadata: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let json: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("cargo metadata printed no JSON: {e}"))?;
    parse(root, &json)
}

/// The packages of a `cargo metadata` document.
pub fn parse(root: &Path, json: &Value) -> Result<BTreeMap<String, Package>, String> {
    // Cargo reports canonical paths; compare like with like.
    let root = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
    let str_of = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_owned);
    let mut out = BTreeMap::new();
    let packages = json
        .get("packages")
        .and_then(Value::as_array)
        .ok_or("cargo metadata: no `packages`")?;
    for p in packages {
        let name = str_of(p, "name").ok_or("cargo metadata: a package without a name")?;
        let manifest = str_of(p, "manifest_path").unwrap_or_default();
        let manifest = Path::new(&manifest);
        let rel = manifest.strip_prefix(&root).unwrap_or(manifest);
        let dir = rel
            .parent()
            .map(|d| d.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut pkg = Package {
            name: name.clone(),
            version: str_of(p, "version").unwrap_or_default(),
            dir,
            path: rel.to_string_lossy().into_owned(),
            // `null` is "anywhere", `[]` is `publish = false`.
            publishable: p
                .get("publish")
                .and_then(Value::as_array)
                .is_none_or(|r| !r.is_empty()),
            ..Package::default()
        };
        for d in p
            .get("dependencies")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(dep) = str_of(d, "name") else {
                continue;
            };
            if d.get("kind").and_then(Value::as_str) == Some("dev") {
                pkg.dev_deps.insert(dep);
            } else {
                pkg.deps.insert(dep);
            }
        }
        for t in p
            .get("targets")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let bin = t
                .get("kind")
                .and_then(Value::as_array)
                .is_some_and(|k| k.iter().any(|k| k == "bin"));
            if let (true, Some(n)) = (bin, str_of(t, "name")) {
                pkg.bins.insert(n);
            }
        }
        let deb = p.pointer("/metadata/deb");
        pkg.deb_name = deb.and_then(|d| str_of(d, "name"));
        pkg.deb_unit = deb
            .and_then(|d| d.pointer("/systemd-units/unit-name"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        out.insert(name, pkg);
    }
    Ok(out)
}
