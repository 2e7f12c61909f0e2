//! Runs the built `wdguard` binary: output formats, patching through stdin and
//! files, and the contract for every error (exit 2, one stderr line, empty
//! stdout).

use std::io::Write as _;
use std::process::{Command, Output, Stdio};

use serde_json::{Value, json};

/// A realistic Nova domain (machine `pc`), shared with wd-xml's tests.
const NOVA: &str = include_str!("../../wd-xml/tests/fixtures/nova-pc.xml");

fn run(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wdguard"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A failing run may exit before reading its input.
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    child.wait_with_output().unwrap()
}

/// Runs a command that must succeed quietly; returns its stdout.
fn ok(args: &[&str], stdin: &str) -> String {
    let out = run(args, stdin);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?} failed: {stderr}");
    assert_eq!(stderr, "", "{args:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// Runs a command that must fail: status 2, exactly `wdguard: <message>` on
/// stderr, nothing on stdout.
fn fails(args: &[&str], stdin: &str, message: &str) {
    let out = run(args, stdin);
    assert_eq!(out.status.code(), Some(2), "{args:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "", "{args:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!("wdguard: {message}\n"),
        "{args:?}"
    );
}

/// Like [`fails`], for messages that end with details that vary (such as a
/// temporary file's name).
fn fails_with_prefix(args: &[&str], stdin: &str, prefix: &str) {
    let out = run(args, stdin);
    assert_eq!(out.status.code(), Some(2), "{args:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "", "{args:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(&format!("wdguard: {prefix}")),
        "{args:?}: {stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

fn json(args: &[&str]) -> Value {
    let mut all = vec!["resolve", "--format", "json"];
    all.extend_from_slice(args);
    let out = ok(&all, "");
    assert_eq!(out.lines().count(), 1, "one object on one line: {out}");
    serde_json::from_str(&out).unwrap()
}

#[test]
fn resolve_json_reports_setting_provenance_and_devices() {
    let v = json(&[
        "--flavor",
        "hw:watchdog_action=reset",
        "--image",
        "hw_watchdog_action=pause",
        "--libvirt-version",
        "9.0.0",
    ]);
    assert_eq!(
        v,
        json!({
            "action": "pause",
            "setting": "pause",
            "source": "image",
            "key": "hw_watchdog_action",
            "arch": "x86_64",
            "machine": "pc",
            "libvirt_version": "9.0.0",
            "devices": [{"model": "i6300esb", "action": "pause"}],
        })
    );

    let v = json(&["--libvirt-version", "9.1.0"]);
    assert_eq!(v["action"], Value::Null);
    assert_eq!(v["source"], "default");
    assert_eq!(v["key"], Value::Null);
    assert_eq!(v["devices"], json!([]));

    let v = json(&[
        "--flavor",
        "watchdog=poweroff",
        "--arch",
        "s390x",
        "--machine",
        "s390-ccw-virtio",
        "--libvirt-version",
        "9.1.0",
    ]);
    assert_eq!(
        (&v["source"], &v["key"]),
        (&json!("flavor"), &json!("watchdog"))
    );
    assert_eq!(
        v["devices"],
        json!([{"model": "diag288", "action": "poweroff"}])
    );

    // q35 on libvirt 9.1: the iTCO follows the action, or is `none` when disabled.
    let v = json(&["--machine", "pc-q35-8.2", "--libvirt-version", "9.1.0"]);
    assert_eq!(v["devices"], json!([{"model": "itco", "action": "none"}]));
}

#[test]
fn resolve_defaults_to_the_local_libvirt_version() {
    let v = json(&["--flavor", "hw:watchdog_action=none"]);
    let version = v["libvirt_version"].as_str().unwrap();
    let parts: Vec<u32> = version.split('.').map(|p| p.parse().unwrap()).collect();
    assert_eq!(parts.len(), 3, "{version}");
    assert!(parts[0] >= 1, "{version}");
}

#[test]
fn resolve_text_and_xml() {
    assert_eq!(
        ok(
            &[
                "resolve",
                "--image",
                "hw_watchdog_action=pause",
                "--libvirt-version",
                "9.0.0"
            ],
            ""
        ),
        "watchdog=pause (image property hw_watchdog_action)\ndevice: i6300esb action=pause\n"
    );
    assert_eq!(
        ok(
            &[
                "resolve",
                "--format",
                "xml",
                "--flavor",
                "hw:watchdog_action=reset",
                "--machine",
                "q35",
                "--libvirt-version",
                "9.1.0",
            ],
            ""
        ),
        "<watchdog model='i6300esb' action='reset'/>\n<watchdog model='itco' action='reset'/>\n"
    );
    assert_eq!(
        ok(
            &[
                "resolve",
                "--format",
                "xml",
                "--machine",
                "q35",
                "--libvirt-version",
                "9.0.0"
            ],
            ""
        ),
        ""
    );
}

#[test]
fn resolve_applies_an_operator_policy_file() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "default = \"pause\"\n\n[[image_rules]]\ndeny = [\"disabled\"]\nscope = \"when-flavor-enables\"\n",
    )
    .unwrap();
    let p = policy.to_str().unwrap();
    let v = json(&["--policy", p, "--libvirt-version", "9.0.0"]);
    assert_eq!(
        (&v["action"], &v["source"]),
        (&json!("pause"), &json!("operator"))
    );
    fails(
        &[
            "resolve",
            "--policy",
            p,
            "--image",
            "hw_watchdog_action=disabled",
            "--libvirt-version",
            "9.0.0",
        ],
        "",
        "image property hw_watchdog_action=disabled is forbidden by operator policy on a flavor that enables the watchdog; allowed: none, pause, poweroff, reset",
    );

    std::fs::write(&policy, "default = \"pause\"\ndefualt = \"reset\"\n").unwrap();
    fails(
        &["resolve", "--policy", p, "--libvirt-version", "9.0.0"],
        "",
        &format!(
            "invalid policy file `{p}`: line 2: unknown field `defualt`, expected `default` or `image_rules`"
        ),
    );
    std::fs::write(
        &policy,
        "[[image_rules]]\ndeny = [\"pause\"]\nscoop = \"always\"\n",
    )
    .unwrap();
    fails(
        &["resolve", "--policy", p, "--libvirt-version", "9.0.0"],
        "",
        &format!(
            "invalid policy file `{p}`: line 3: unknown field `scoop`, expected `deny` or `scope`"
        ),
    );
}

#[test]
fn patch_through_stdin_and_stdout() {
    let out = ok(
        &[
            "patch",
            "--flavor",
            "hw:watchdog_action=poweroff",
            "--libvirt-version",
            "9.0.0",
        ],
        NOVA,
    );
    let line = "    <watchdog model='i6300esb' action='poweroff'/>\n";
    assert_eq!(out.replace(line, ""), NOVA, "only the device is added");
    assert!(
        out.contains(&format!("</rng>\n{line}  </devices>")),
        "{out}"
    );
    // Patching the output again changes nothing.
    let again = ok(
        &[
            "patch",
            "--flavor",
            "hw:watchdog_action=poweroff",
            "--libvirt-version",
            "9.0.0",
        ],
        &out,
    );
    assert_eq!(again, out);
    // And `disabled` takes it out again.
    let removed = ok(
        &[
            "patch",
            "--image",
            "hw_watchdog_action=disabled",
            "--libvirt-version",
            "9.0.0",
        ],
        &out,
    );
    assert_eq!(removed, NOVA);
}

#[test]
fn patch_takes_arch_and_machine_from_the_document() {
    let q35 = NOVA.replace("machine=\"pc\"", "machine=\"pc-q35-7.2\"");
    let out = ok(
        &[
            "patch",
            "--flavor",
            "hw:watchdog_action=pause",
            "--libvirt-version",
            "9.1.0",
        ],
        &q35,
    );
    assert!(
        out.contains("    <watchdog model='i6300esb' action='pause'/>\n    <watchdog model='itco' action='pause'/>\n  </devices>"),
        "{out}"
    );
    // The command line overrides the document.
    let out = ok(
        &[
            "patch",
            "--flavor",
            "hw:watchdog_action=pause",
            "--machine",
            "pc",
            "--libvirt-version",
            "9.1.0",
        ],
        &q35,
    );
    assert!(!out.contains("itco"), "{out}");

    let s390 = NOVA.replace(
        "<type arch=\"x86_64\" machine=\"pc\">",
        "<type arch=\"s390x\" machine=\"s390-ccw-virtio\">",
    );
    let out = ok(
        &[
            "patch",
            "--image",
            "watchdog=reset",
            "--libvirt-version",
            "9.0.0",
        ],
        &s390,
    );
    assert!(
        out.contains("<watchdog model='diag288' action='reset'/>"),
        "{out}"
    );

    let arm = NOVA.replace(
        "<type arch=\"x86_64\" machine=\"pc\">",
        "<type arch=\"aarch64\" machine=\"virt\">",
    );
    fails(
        &[
            "patch",
            "--image",
            "watchdog=reset",
            "--libvirt-version",
            "9.0.0",
        ],
        &arm,
        "no watchdog model for architecture `aarch64`; supported: x86_64, i686, s390x",
    );
    // Disabled needs no model.
    assert_eq!(ok(&["patch", "--libvirt-version", "9.0.0"], &arm), arm);
}

#[test]
fn patch_with_in_and_out_files() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("domain.xml");
    let output = dir.path().join("patched.xml");
    std::fs::write(&input, NOVA).unwrap();
    let (i, o) = (input.to_str().unwrap(), output.to_str().unwrap());
    let args = [
        "patch",
        "--in",
        i,
        "--out",
        o,
        "--flavor",
        "hw:watchdog_action=none",
        "--libvirt-version",
        "9.0.0",
    ];
    assert_eq!(ok(&args, ""), "", "nothing on stdout with --out");
    let patched = std::fs::read_to_string(&output).unwrap();
    assert!(patched.contains("<watchdog model='i6300esb' action='none'/>"));

    // Patching in place works, and keeps the file's permissions.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&input, std::fs::Permissions::from_mode(0o644)).unwrap();
        ok(
            &[
                "patch",
                "--in",
                i,
                "--out",
                i,
                "--flavor",
                "hw:watchdog_action=none",
                "--libvirt-version",
                "9.0.0",
            ],
            "",
        );
        let mode = std::fs::metadata(&input).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
    }
    assert_eq!(std::fs::read_to_string(&input).unwrap(), patched);

    // A failed patch leaves the output untouched and no temporary files.
    std::fs::write(&input, "<domain><devices></domain>").unwrap();
    let out = run(&args, "");
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(std::fs::read_to_string(&output).unwrap(), patched);
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let mut names = names;
    names.sort();
    assert_eq!(names, ["domain.xml", "patched.xml"]);
}

#[test]
fn every_error_exits_2_with_one_stderr_line_and_empty_stdout() {
    let v = ["--libvirt-version", "9.0.0"];
    let with = |args: &[&'static str]| -> Vec<&'static str> {
        let mut all = args.to_vec();
        all.extend_from_slice(&v);
        all
    };
    fails(
        &with(&["resolve", "--flavor", "hw:watchdog_action=explode"]),
        "",
        "Provided watchdog action (explode) is not supported: flavor extra spec hw:watchdog_action; allowed: disabled, none, pause, poweroff, reset",
    );
    fails(
        &with(&[
            "resolve",
            "--image",
            "hw_watchdog_action=pause",
            "--image",
            "watchdog=reset",
        ]),
        "",
        "image property hw_watchdog_action=pause conflicts with watchdog=reset; give one key, or the same value for both",
    );
    fails(
        &with(&["resolve", "--flavor", "watchdog=reset", "--arch", "ppc64le"]),
        "",
        "no watchdog model for architecture `ppc64le`; supported: x86_64, i686, s390x",
    );
    fails(
        &with(&["resolve", "--flavor", "hw:watchdog_action"]),
        "",
        "invalid value 'hw:watchdog_action' for '--flavor <KEY=VALUE>': `hw:watchdog_action` is not KEY=VALUE",
    );
    fails(
        &with(&["resolve", "--image", "=pause"]),
        "",
        "invalid value '=pause' for '--image <KEY=VALUE>': `=pause` is not KEY=VALUE",
    );
    fails(
        &["resolve", "--libvirt-version", "9.1"],
        "",
        "invalid value '9.1' for '--libvirt-version <X.Y.Z>': invalid libvirt version `9.1`; expected MAJOR.MINOR.MICRO such as 9.1.0, minor and micro below 1000",
    );
    fails(
        &with(&["resolve", "--format", "yaml"]),
        "",
        "invalid value 'yaml' for '--format <FORMAT>' [possible values: text, json, xml]",
    );
    fails(&["frobnicate"], "", "unrecognized subcommand 'frobnicate'");
    fails(
        &[
            "queue",
            "drain",
            "project-00",
            "--socket",
            "/nonexistent/s.sock",
        ],
        "",
        "no agent answers on `/nonexistent/s.sock` (give --socket PATH)",
    );
    fails(
        &[
            "queue",
            "drop",
            "../etc",
            "--socket",
            "/nonexistent/s.sock",
            "--spool",
            "/nonexistent",
        ],
        "",
        "`../etc` is not a queue directory; allowed offline: a `dir` as `wdguard status --spool` lists it (e.g. project-<hex>)",
    );
    fails(
        &[],
        "",
        "a subcommand is required (resolve, patch, watch, status, queue); see wdguard --help",
    );
    fails(
        &with(&["resolve", "--policy", "/nonexistent/policy.toml"]),
        "",
        "cannot read policy file `/nonexistent/policy.toml`: No such file or directory (os error 2)",
    );

    // Patching.
    fails(
        &with(&["patch", "--in", "/nonexistent/domain.xml"]),
        "",
        "cannot read `/nonexistent/domain.xml`: No such file or directory (os error 2)",
    );
    fails(&with(&["patch"]), "", "domain XML is empty");
    fails(
        &with(&["patch"]),
        "<domain type='kvm'><devices>",
        "malformed domain XML at byte 28: element `devices` is not closed",
    );
    fails(
        &with(&["patch"]),
        "<domain><devices></domain>",
        "cannot parse domain XML at byte 17: ill-formed document: expected `</devices>`, but `</domain>` was found",
    );
    fails(
        &with(&["patch"]),
        "<domain type='kvm",
        "cannot parse domain XML at byte 0: syntax error: tag not closed: `>` not found before end of input",
    );
    fails(
        &with(&["patch"]),
        "hello",
        "malformed domain XML at byte 0: text outside the root element",
    );
    fails(
        &with(&["patch"]),
        "<network/>",
        "root element is `network`; expected `domain`",
    );
    fails_with_prefix(
        &with(&[
            "patch",
            "--out",
            "/nonexistent/dir/out.xml",
            "--flavor",
            "watchdog=reset",
        ]),
        NOVA,
        "cannot write `/nonexistent/dir/out.xml`: cannot create a temporary file in `/nonexistent/dir`: No such file or directory (os error 2)",
    );
}
