//! `cargo xtask image`: the `wdguard` container image, built from Debian's
//! archive and our `.deb`, with no container registry.
//!
//! 1. **The base**, a root filesystem made by `mmdebstrap` (variant
//!    `minbase`, merged /usr) from Debian's archive with only what runs the
//!    agent: the `.deb`'s `Depends` (libvirt's client library `libvirt0`,
//!    `adduser`), `ca-certificates` for webhook and broker TLS, and `jq` for
//!    the entrypoint; the system user `wd` gets a fixed uid ([`DEFAULT_UID`]
//!    unless `--uid`), because the libvirtd serving the mounted socket must
//!    resolve it. `podman import` turns it into
//!    `localhost/wdguard-base:<hash>`. It is rebuilt only when its inputs
//!    change (suite, packages, uid, this recipe): a stamp in
//!    `target/wd-image/` and the tag record them.
//! 2. **The image**, `podman build --format docker` on that base (Docker's
//!    format: OCI has no `HEALTHCHECK`): `dpkg -i` of the `.deb` (its
//!    postinst finds user `wd` and makes `/var/lib/wd` 0700 and
//!    `/etc/wd/wd.toml` root:wd 0640), the entrypoint `wd-start` and the
//!    healthcheck `wd-healthcheck` from `crates/wdguard/container/`, and
//!    `USER`, `ENTRYPOINT`, `CMD`, `VOLUME`, `ENV`, `HEALTHCHECK`, labels.
//!    `--isolation chroot`: its one `RUN` needs no OCI runtime. Tagged
//!    `localhost/wdguard:<version>` and `:latest`, and labelled with the
//!    hash of all inputs: an image whose label matches is not rebuilt.
//!
//! A code change rebuilds only step 2 (seconds); see docs/deploy.md for how
//! to run the image, and `tests/tests/container.rs` for the test.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use wd_testkit::container::{
    DEFAULT_UID, IMAGE, LABEL_DEB, LABEL_INPUTS, LABEL_UID, LATEST, label, sha256, sha256_bytes,
};

use crate::setup::{self, cmd_ok};

/// The Debian packages `cargo xtask image` runs (also in setup::PACKAGES,
/// which `cargo xtask test` installs).
pub const TOOLS: &[&str] = &["mmdebstrap", "podman", "runc"];

/// The Debian release of the base.
const SUITE: &str = "bookworm";

/// Packages of the base beside the `.deb`'s own `Depends`.
const EXTRA: &[&str] = &["ca-certificates", "jq"];

/// What the base leaves out: documentation (but the copyrights), manuals,
/// translations.
const DPKG_EXCLUDES: &[&str] = &[
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
];

/// The entrypoint and the healthcheck, installed into /usr/local/bin.
const SCRIPTS: &[(&str, &str)] = &[
    (
        "wd-start",
        include_str!("../../crates/wdguard/container/wd-start"),
    ),
    (
        "wd-healthcheck",
        include_str!("../../crates/wdguard/container/wd-healthcheck"),
    ),
];

/// `cargo xtask image [--profile P | --deb FILE] [--uid N]`.
pub fn run(args: &[&str]) -> Result<()> {
    const USAGE: &str = "usage: cargo xtask image [--profile NAME | --deb FILE] [--uid N]";
    let (mut profile, mut deb, mut uid) = ("release", None, DEFAULT_UID);
    let mut rest = args;
    while let [flag, value, tail @ ..] = rest {
        match *flag {
            "--profile" => profile = value,
            "--deb" => deb = Some(PathBuf::from(value)),
            "--uid" => {
                uid =
                    value.parse().ok().filter(|u| *u != 0).with_context(|| {
                        format!("--uid `{value}` is not a non-zero uid\n{USAGE}")
                    })?;
            }
            _ => bail!("unknown flag `{flag}`\n{USAGE}"),
        }
        rest = tail;
    }
    if !rest.is_empty() {
        bail!("`{}` needs a value\n{USAGE}", rest.join(" "));
    }
    let deb = match deb {
        Some(deb) => deb,
        None => crate::package::build(profile, false)?,
    };
    build(&deb, uid).map(drop)
}

/// Builds the image from `deb` (unless it is up to date) and returns its
/// `:latest` reference.
pub fn build(deb: &Path, uid: u32) -> Result<String> {
    let mut tools = TOOLS.to_vec();
    if !setup::is_root() {
        // Rootless podman and mmdebstrap's unshare mode map subordinate ids.
        tools.push("uidmap");
    }
    setup::ensure(&tools)?;
    if !deb.is_file() {
        bail!("no .deb at {}; run `cargo xtask package`", deb.display());
    }
    let started = Instant::now();
    let work = crate::target_dir().join("wd-image");
    std::fs::create_dir_all(&work).with_context(|| format!("create {}", work.display()))?;
    let deb_sha = sha256(deb).map_err(anyhow::Error::msg)?;
    let depends = deb_depends(deb)?;
    let base = base(&work, &depends, uid)?;
    let version = env!("CARGO_PKG_VERSION");
    let containerfile = containerfile(&base, uid, version);
    let inputs = hash_of(&[&deb_sha, &containerfile, &scripts_text()]);
    let tag = format!("{IMAGE}:{version}");
    if label(&tag, LABEL_INPUTS).as_deref() == Some(inputs.as_str())
        && label(LATEST, LABEL_INPUTS).as_deref() == Some(inputs.as_str())
    {
        eprintln!("xtask: {tag} is up to date");
        return Ok(LATEST.to_owned());
    }
    let context = work.join("context");
    if context.exists() {
        std::fs::remove_dir_all(&context)
            .with_context(|| format!("clear {}", context.display()))?;
    }
    std::fs::create_dir_all(&context)?;
    std::fs::copy(deb, context.join("wdguard.deb")).context("copy the .deb")?;
    for (name, text) in SCRIPTS {
        std::fs::write(context.join(name), text).with_context(|| format!("write {name}"))?;
    }
    let labelled =
        format!("{containerfile}LABEL {LABEL_INPUTS}=\"{inputs}\" {LABEL_DEB}=\"{deb_sha}\"\n");
    std::fs::write(context.join("Containerfile"), labelled)?;
    let previous = podman_out(&["image", "inspect", "--format", "{{.Id}}", LATEST]).ok();
    eprintln!("xtask: podman build {tag}");
    cmd_ok(
        Command::new("podman")
            .args([
                "build",
                "--quiet",
                // One layer on the base, without the copied .deb.
                "--layers=false",
                "--format",
                "docker",
                "--isolation",
                "chroot",
            ])
            .args(["--tag", &tag, "--tag", LATEST, "--file"])
            .arg(context.join("Containerfile"))
            .arg(&context),
    )?;
    // The image this one replaces, now untagged (unless a container uses it).
    if let Some(old) = previous.as_deref().map(str::trim).filter(|o| !o.is_empty()) {
        let _ = Command::new("podman").args(["rmi", old]).output();
    }
    let size = podman_out(&["image", "inspect", "--format", "{{.Size}}", LATEST])?;
    let mb = size.trim().parse::<u64>().unwrap_or(0) / 1_000_000;
    eprintln!(
        "xtask: built {tag} (also {LATEST}), {mb} MB, in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(LATEST.to_owned())
}

/// The base image for `depends` and `uid`: its tag, built unless it exists.
fn base(work: &Path, depends: &[String], uid: u32) -> Result<String> {
    let mut packages: Vec<String> = depends.to_vec();
    packages.extend(EXTRA.iter().map(|p| (*p).to_owned()));
    packages.sort();
    packages.dedup();
    let args = mmdebstrap_args(&packages, uid);
    let key = hash_of(&[&args.join("\n")]);
    let tag = format!("{IMAGE}-base:{}", &key[..16]);
    let stamp = work.join("base.stamp");
    let exists = Command::new("podman")
        .args(["image", "exists", &tag])
        .status()
        .is_ok_and(|s| s.success());
    if exists && std::fs::read_to_string(&stamp).is_ok_and(|s| s.starts_with(&tag)) {
        return Ok(tag);
    }
    let started = Instant::now();
    let tar = work.join("rootfs.tar");
    eprintln!(
        "xtask: mmdebstrap {SUITE} with {} (about a minute)",
        packages.join(", ")
    );
    cmd_ok(Command::new("mmdebstrap").args(&args).arg(&tar))?;
    cmd_ok(
        Command::new("podman")
            .args(["import", "--quiet"])
            .arg(&tar)
            .arg(&tag),
    )?;
    let _ = std::fs::remove_file(&tar);
    let took = started.elapsed().as_secs_f64();
    eprintln!("xtask: base {tag} in {took:.1} s");
    std::fs::write(
        &stamp,
        format!("{tag}\n{}\nbuilt in {took:.1} s\n", args.join("\n")),
    )
    .with_context(|| format!("write {}", stamp.display()))?;
    remove_old_bases(&tag);
    Ok(tag)
}

/// mmdebstrap's arguments but the output: the recipe of the base.
fn mmdebstrap_args(packages: &[String], uid: u32) -> Vec<String> {
    let mut args = vec![
        "--variant=minbase".to_owned(),
        "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr".to_owned(),
        format!("--include={}", packages.join(",")),
    ];
    args.extend(DPKG_EXCLUDES.iter().map(|o| format!("--dpkgopt={o}")));
    // The user before the package: its postinst keeps an existing `wd`.
    args.push(format!(
        "--customize-hook=chroot \"$1\" groupadd --system --gid {uid} wd"
    ));
    args.push(format!(
        "--customize-hook=chroot \"$1\" useradd --system --uid {uid} --gid wd --home-dir /var/lib/wd --no-create-home --shell /usr/sbin/nologin --comment 'wd guest watchdog agent' wd"
    ));
    args.push(SUITE.to_owned());
    args
}

/// The image's recipe on `base`. Numeric `USER`, so that a runtime can
/// check it is not root without reading the image's passwd.
fn containerfile(base: &str, uid: u32, version: &str) -> String {
    let mut c = String::new();
    let _ = write!(
        c,
        "FROM {base}\n\
         COPY wdguard.deb wd-start wd-healthcheck /tmp/wd-image/\n\
         RUN dpkg -i /tmp/wd-image/wdguard.deb \\\n \
         && install -m 0755 /tmp/wd-image/wd-start /tmp/wd-image/wd-healthcheck /usr/local/bin/ \\\n \
         && install -d -o wd -g wd -m 0750 /run/wd \\\n \
         && chown root:wd /etc/wd && chmod 0770 /etc/wd \\\n \
         && rm -rf /tmp/wd-image\n\
         USER {uid}:{uid}\n\
         WORKDIR /var/lib/wd\n\
         ENV RUNTIME_DIRECTORY=/run/wd LANG=C.UTF-8\n\
         VOLUME [\"/etc/wd\", \"/var/lib/wd\"]\n\
         ENTRYPOINT [\"/usr/local/bin/wd-start\"]\n\
         CMD [\"wdguard\", \"watch\", \"--config\", \"/etc/wd/wd.toml\"]\n\
         HEALTHCHECK --interval=30s --timeout=10s --start-period=2m --retries=3 CMD [\"/usr/local/bin/wd-healthcheck\"]\n\
         STOPSIGNAL SIGTERM\n\
         LABEL org.opencontainers.image.title=\"wdguard\" \
         org.opencontainers.image.description=\"wd's guest watchdog agent (wdguard watch)\" \
         org.opencontainers.image.version=\"{version}\" {LABEL_UID}=\"{uid}\"\n"
    );
    c
}

/// The scripts' text, part of the image's inputs.
fn scripts_text() -> String {
    SCRIPTS.iter().map(|(n, t)| format!("{n}\n{t}")).collect()
}

/// The SHA-256 of `parts` joined by NUL bytes. A failure to hash only
/// costs a rebuild.
fn hash_of(parts: &[&str]) -> String {
    sha256_bytes(parts.join("\0").as_bytes()).unwrap_or_else(|_| "unhashed".to_owned())
}

/// The package names in the `.deb`'s `Depends` (versions dropped, the first
/// of each alternative).
fn deb_depends(deb: &Path) -> Result<Vec<String>> {
    let out = Command::new("dpkg-deb")
        .arg("--field")
        .arg(deb)
        .arg("Depends")
        .output()
        .context("run dpkg-deb")?;
    if !out.status.success() {
        bail!(
            "dpkg-deb --field {} Depends: {}",
            deb.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(parse_depends(&String::from_utf8_lossy(&out.stdout)))
}

fn parse_depends(field: &str) -> Vec<String> {
    field
        .split(',')
        .filter_map(|dep| {
            let first = dep.split('|').next()?;
            let name = first.split(['(', ':', ' ']).find(|s| !s.is_empty())?;
            Some(name.trim().to_owned())
        })
        .collect()
}

/// Removes the base images other than `keep` (an image still in use stays).
fn remove_old_bases(keep: &str) {
    let Ok(list) = podman_out(&[
        "images",
        "--format",
        "{{.Repository}}:{{.Tag}}",
        &format!("{IMAGE}-base"),
    ]) else {
        return;
    };
    for old in list
        .lines()
        .map(str::trim)
        .filter(|t| !t.is_empty() && *t != keep)
    {
        let _ = Command::new("podman").args(["rmi", old]).output();
    }
}

fn podman_out(args: &[&str]) -> Result<String> {
    let out = Command::new("podman")
        .args(args)
        .output()
        .context("run podman")?;
    if !out.status.success() {
        bail!(
            "podman {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the entrypoint (`sh wd-start ARGS`) with `config.json` holding
    /// `json` in a scratch directory (`@DIR@` in it names the directory);
    /// returns (success, stdout, stderr, the directory).
    fn wd_start(
        json: &str,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> (bool, String, String, PathBuf) {
        let dir = std::env::temp_dir().join(wd_testkit::unique_name("wd-start"));
        std::fs::create_dir_all(&dir).unwrap();
        let dir_str = dir.display().to_string();
        std::fs::write(dir.join("config.json"), json.replace("@DIR@", &dir_str)).unwrap();
        std::fs::write(dir.join("wd.toml"), "notify = [\"log\"]\n").unwrap();
        let script = dir.join("wd-start");
        std::fs::write(&script, SCRIPTS[0].1).unwrap();
        let out = Command::new("sh")
            .arg(&script)
            .args(args)
            .env("KOLLA_CONFIG_FILE", dir.join("config.json"))
            .env_remove("KOLLA_CONFIG_STRATEGY")
            .env_remove("WD_LOG_FILE")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
            dir,
        )
    }

    #[test]
    fn the_entrypoint_follows_kolla_config_json_and_refuses_what_it_cannot_do() {
        assert!(
            Command::new("jq").arg("--version").output().is_ok(),
            "jq is missing: run `cargo xtask deps`"
        );
        // Copied with its perm, then the command runs instead of the args.
        let (ok, out, err, dir) = wd_start(
            r#"{"command": "cat @DIR@/etc/wd.toml",
                "config_files": [
                  {"source": "@DIR@/wd.toml", "dest": "@DIR@/etc/wd.toml", "perm": "0600"},
                  {"source": "@DIR@/absent", "dest": "@DIR@/etc/", "optional": true}],
                "permissions": [{"path": "@DIR@", "owner": "wd:wd"}]}"#,
            &[],
            &["false"],
        );
        assert!(ok, "{err}");
        assert_eq!(out, "notify = [\"log\"]\n");
        assert!(err.contains("copied"), "{err}");
        let mode = std::fs::metadata(dir.join("etc/wd.toml"));
        let _ = std::fs::remove_dir_all(&dir);
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(mode.unwrap().permissions().mode() & 0o777, 0o600);

        // Each refusal names what was wrong, and nothing runs.
        for (json, env, expected) in [
            (
                r#"{"command": "true", "config_files": [{"source": "@DIR@/wd.toml", "dest": "@DIR@/x", "owner": "nova"}]}"#,
                &[][..],
                "owner `nova`",
            ),
            (
                r#"{"command": "true", "config_files": [{"source": "@DIR@/absent", "dest": "@DIR@/x"}]}"#,
                &[],
                "absent does not exist",
            ),
            (
                r#"{"command": "true", "config_files": [{"dest": "@DIR@/x"}]}"#,
                &[],
                "config_files is not in kolla's format",
            ),
            (
                r#"{"command": "true", "permissions": [{"path": "/proc/1"}]}"#,
                &[],
                "permissions: /proc/1 is not writable",
            ),
            (r#"{"config_files": []}"#, &[], "has no command"),
            (r#"["not", "an", "object"]"#, &[], "is not a JSON object"),
            (
                r#"{"command": "true"}"#,
                &[("KOLLA_CONFIG_STRATEGY", "COPY_ONCE")],
                "only COPY_ALWAYS",
            ),
        ] {
            let (ok, out, err, dir) = wd_start(json, env, &["echo", "ran"]);
            let _ = std::fs::remove_dir_all(&dir);
            assert!(!ok && !out.contains("ran"), "{json}: {out}{err}");
            assert!(err.contains(expected), "{json}: {err}");
        }
    }

    #[test]
    fn depends_become_package_names() {
        assert_eq!(
            parse_depends("adduser, libc6 (>= 2.34), libvirt0 (>= 0.10.0~rc2), a:any | b"),
            ["adduser", "libc6", "libvirt0", "a"]
        );
        assert!(parse_depends("").is_empty());
    }

    #[test]
    fn the_recipe_runs_as_the_uid_and_checks_health() {
        let c = containerfile("localhost/wdguard-base:0", 42650, "0.1.0");
        assert!(c.contains("\nUSER 42650:42650\n"), "{c}");
        assert!(c.contains("HEALTHCHECK "), "{c}");
        assert!(c.contains("VOLUME [\"/etc/wd\", \"/var/lib/wd\"]"), "{c}");
        let args = mmdebstrap_args(&["libvirt0".into()], 42650);
        assert!(args.iter().any(|a| a.contains("--uid 42650")));
        assert_eq!(args.last().map(String::as_str), Some(SUITE));
    }
}
