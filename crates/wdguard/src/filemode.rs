//! Who may read the configuration file.
//!
//! The rule, for a config file that holds a secret (a webhook signing
//! secret, a project endpoint's secret, a webhook URL that is itself a
//! secret because of its user info, query or token-like path, or a broker
//! password, in `[amqp] password` or in an AMQP URL):
//!
//! * **others** (`o`) have no access at all (`mode & 0o007 == 0`);
//! * **group read** is allowed only when the file's group is the agent's own
//!   effective group: the packaged `/etc/wd/wd.toml` is `root:wd 0640`, read
//!   by the agent running as `wd:wd`. A file whose group is some other group
//!   (say `libvirt`, whose members are many) would hand the secrets to every
//!   member, so it is refused;
//! * the **owner** is root or the agent's own user: anyone else could rewrite
//!   the file or open it up with `chmod`.
//!
//! Whether or not it holds secrets, a file anyone may **write** (`o+w`) is
//! refused: whoever edits the config chooses where notifications go.
//! Secrets given in the environment (`WD_WEBHOOK_SECRET`,
//! `WD_AMQP_PASSWORD`) do not make the file secret.
//!
//! The agent's effective user and group are read from `/proc/self`, whose
//! owner they are, so this needs no `unsafe` call.

use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use anyhow::{Context, Result, bail};

/// Who the agent runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    /// The effective user id.
    pub uid: u32,
    /// The effective group id.
    pub gid: u32,
}

impl Identity {
    /// This process's effective user and group.
    pub fn current() -> Result<Identity> {
        let m = std::fs::metadata("/proc/self").context("read /proc/self")?;
        Ok(Identity {
            uid: m.uid(),
            gid: m.gid(),
        })
    }
}

/// What [`check`] judges: a file's owner, group and permission bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileMode {
    /// The owner's user id.
    pub uid: u32,
    /// The file's group id.
    pub gid: u32,
    /// The permission bits (`mode & 0o7777`).
    pub mode: u32,
}

impl FileMode {
    /// The owner, group and mode of the file at `path` (following links).
    pub fn of(path: &Path) -> Result<FileMode> {
        let m = std::fs::metadata(path)
            .with_context(|| format!("cannot read config file `{}`", path.display()))?;
        Ok(FileMode {
            uid: m.uid(),
            gid: m.gid(),
            mode: m.mode() & 0o7777,
        })
    }
}

/// Checks `file` against the rule in the module docs. `secrets` names the
/// keys that hold a secret (empty when none does); `path` and `secrets` are
/// for the message, which never shows a value.
pub fn check(path: &Path, file: FileMode, secrets: &[String], me: Identity) -> Result<()> {
    let mode = file.mode;
    let secret = !secrets.is_empty();
    let keys = secrets.join(", ");
    if mode & 0o002 != 0 {
        bail!(
            "config file `{}` is writable by others (mode {mode:04o}); allowed: no write access for others (chmod o-w)",
            path.display()
        );
    }
    if !secret {
        return Ok(());
    }
    if mode & 0o007 != 0 {
        bail!(
            "config file `{}` holds secrets ({keys}) but is readable by others (mode {mode:04o}); allowed: no access for others (chmod o-rwx), e.g. root:wd 0640",
            path.display()
        );
    }
    if mode & 0o070 != 0 && file.gid != me.gid {
        bail!(
            "config file `{}` holds secrets ({keys}) but is open to group {} (mode {mode:04o}), which is not the agent's group {}; allowed: group access only for the agent's own group (e.g. root:wd 0640), or none (chmod g-rwx)",
            path.display(),
            file.gid,
            me.gid
        );
    }
    if file.uid != 0 && file.uid != me.uid {
        bail!(
            "config file `{}` holds secrets ({keys}) but is owned by user {}, who could open it to anyone; allowed: owned by root or by the agent's user {}",
            path.display(),
            file.uid,
            me.uid
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const WD: Identity = Identity { uid: 998, gid: 997 };
    const ROOT: Identity = Identity { uid: 0, gid: 0 };

    fn check_mode(uid: u32, gid: u32, mode: u32, secret: bool, me: Identity) -> Result<(), String> {
        let keys = if secret {
            vec!["webhook.secrets".to_owned()]
        } else {
            Vec::new()
        };
        check(
            Path::new("/etc/wd/wd.toml"),
            FileMode { uid, gid, mode },
            &keys,
            me,
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn the_packaged_file_and_private_files_are_allowed() {
        // root:wd 0640, read by the agent as wd:wd.
        check_mode(0, 997, 0o640, true, WD).unwrap();
        // The agent's own file, or root's, closed to group and others.
        check_mode(998, 997, 0o600, true, WD).unwrap();
        check_mode(0, 0, 0o600, true, WD).unwrap();
        // root running with a root:root 0640 file.
        check_mode(0, 0, 0o640, true, ROOT).unwrap();
        // No secrets: readable by anyone is fine.
        check_mode(0, 0, 0o644, false, WD).unwrap();
        check_mode(1000, 1000, 0o664, false, WD).unwrap();
    }

    #[test]
    fn refusals_name_the_mode_and_what_is_allowed() {
        let err = check_mode(0, 0, 0o644, true, WD).unwrap_err();
        assert!(
            err.contains("holds secrets (webhook.secrets) but is readable by others (mode 0644)"),
            "{err}"
        );
        assert!(err.contains("root:wd 0640"), "{err}");
        let err = check_mode(0, 0, 0o604, true, ROOT).unwrap_err();
        assert!(err.contains("(mode 0604)"), "{err}");
        // Group libvirt (many members) may not read the secrets.
        let err = check_mode(0, 120, 0o640, true, WD).unwrap_err();
        assert!(
            err.contains("open to group 120 (mode 0640), which is not the agent's group 997"),
            "{err}"
        );
        // Someone else's file.
        let err = check_mode(1000, 997, 0o640, true, WD).unwrap_err();
        assert!(err.contains("owned by user 1000"), "{err}");
        // World-writable, secrets or not.
        let err = check_mode(0, 0, 0o646, false, WD).unwrap_err();
        assert!(err.contains("writable by others (mode 0646)"), "{err}");
    }

    #[test]
    fn the_real_identity_and_mode_are_read() {
        let me = Identity::current().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("wd.toml");
        std::fs::write(&p, "").unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        let m = FileMode::of(&p).unwrap();
        assert_eq!(m.mode, 0o640);
        assert_eq!(m.uid, me.uid);
        let keys = ["notify[0]".to_owned()];
        check(&p, m, &keys, me).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = check(&p, FileMode::of(&p).unwrap(), &keys, me).unwrap_err();
        assert!(err.to_string().contains("mode 0644"), "{err}");
    }
}
