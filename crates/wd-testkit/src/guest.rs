//! A tiny QEMU guest whose watchdog really fires, about 6 s after it starts.
//!
//! The guest is a Debian kernel booted directly with an initramfs that holds a
//! static busybox and the `watchdog` and `i6300esb` modules. Its `/init` loads
//! the modules with `heartbeat=2`, opens `/dev/watchdog` (which arms it) and
//! then sleeps forever without petting it. QEMU then takes the domain's
//! watchdog action. With `reset` the guest reboots, re-arms and fires again,
//! every few seconds: a natural storm.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{target_dir, unavailable};

/// The guest's kernel and initramfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestAssets {
    /// The kernel image (`vmlinuz`).
    pub kernel: PathBuf,
    /// The gzipped newc initramfs.
    pub initrd: PathBuf,
}

/// Where `cargo xtask guest` puts the assets.
pub fn assets_dir() -> PathBuf {
    target_dir().join("wd-guest")
}

impl GuestAssets {
    /// The assets in `dir`, if both files are there.
    pub fn in_dir(dir: &Path) -> Option<GuestAssets> {
        let a = GuestAssets {
            kernel: dir.join("vmlinuz"),
            initrd: dir.join("initrd.img"),
        };
        (a.kernel.is_file() && a.initrd.is_file()).then_some(a)
    }
}

/// Returns the built guest assets, or skips (see [`crate::unavailable`]).
pub fn assets() -> Option<GuestAssets> {
    GuestAssets::in_dir(&assets_dir()).or_else(|| {
        unavailable(
            "the watchdog guest kernel and initramfs",
            "build them with `cargo xtask guest`",
        )
    })
}

/// The guest's `/init`: arm the watchdog, then hang.
pub const INIT_SCRIPT: &str = r#"#!/bin/busybox sh
/bin/busybox mkdir -p /dev /proc /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
/bin/busybox mount -t proc proc /proc
/bin/busybox insmod /watchdog.ko
/bin/busybox insmod /i6300esb.ko heartbeat=2
echo "wd-guest: arming the watchdog"
exec 3>/dev/watchdog
echo "wd-guest: armed; hanging without petting it"
while true; do /bin/busybox sleep 3600; done
"#;

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("run {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Builds the assets into `dir` unless they are there already: downloads the
/// kernel package that `linux-image-amd64` depends on with `apt-get
/// download`, unpacks it, and packs the initramfs with cpio. Needs the Debian
/// packages busybox-static, cpio and xz-utils, and apt lists.
pub fn build_assets(dir: &Path) -> Result<GuestAssets, String> {
    if let Some(a) = GuestAssets::in_dir(dir) {
        return Ok(a);
    }
    let work = dir.join("build");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).map_err(|e| format!("create {}: {e}", work.display()))?;

    let depends = run(Command::new("apt-cache").args(["depends", "linux-image-amd64"]))?;
    let pkg = depends
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-") && p.ends_with("-amd64"))
        .ok_or("apt-cache depends linux-image-amd64 names no linux-image-*-amd64 package; run apt-get update")?
        .to_owned();
    run(Command::new("apt-get")
        .args(["download", "-q", &pkg])
        .current_dir(&work))?;
    let deb = fs::read_dir(&work)
        .map_err(|e| format!("read {}: {e}", work.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or_else(|| format!("apt-get download {pkg} left no .deb in {}", work.display()))?;
    let root = work.join("root");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;

    let vmlinuz = fs::read_dir(root.join("boot"))
        .map_err(|e| format!("read boot dir of {pkg}: {e}"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .ok_or_else(|| format!("{pkg} has no /boot/vmlinuz-*"))?;
    let modules = fs::read_dir(root.join("lib/modules"))
        .map_err(|e| format!("read lib/modules of {pkg}: {e}"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .next()
        .ok_or_else(|| format!("{pkg} has no /lib/modules/*"))?
        .join("kernel/drivers/watchdog");

    let initramfs = work.join("initramfs");
    fs::create_dir_all(initramfs.join("bin")).map_err(|e| format!("create initramfs: {e}"))?;
    fs::copy("/bin/busybox", initramfs.join("bin/busybox"))
        .map_err(|e| format!("copy /bin/busybox (package busybox-static): {e}"))?;
    for module in ["watchdog", "i6300esb"] {
        let plain = modules.join(format!("{module}.ko"));
        let xz = modules.join(format!("{module}.ko.xz"));
        let dest = initramfs.join(format!("{module}.ko"));
        if plain.is_file() {
            fs::copy(&plain, &dest).map_err(|e| format!("copy {}: {e}", plain.display()))?;
        } else if xz.is_file() {
            let f =
                fs::File::create(&dest).map_err(|e| format!("create {}: {e}", dest.display()))?;
            let st = Command::new("xz")
                .arg("-dc")
                .arg(&xz)
                .stdout(f)
                .status()
                .map_err(|e| format!("run xz: {e}"))?;
            if !st.success() {
                return Err(format!("xz -dc {} failed", xz.display()));
            }
        } else {
            return Err(format!(
                "{pkg} has no {module}.ko under {}",
                modules.display()
            ));
        }
    }
    let init = initramfs.join("init");
    fs::write(&init, INIT_SCRIPT).map_err(|e| format!("write init: {e}"))?;
    run(Command::new("chmod").arg("0755").arg(&init))?;

    let initrd_tmp = work.join("initrd.img");
    let script = format!(
        "cd '{}' && find . | cpio -o -H newc --quiet | gzip -9 > '{}'",
        initramfs.display(),
        initrd_tmp.display()
    );
    run(Command::new("sh").args(["-c", &script]))?;
    // Move the finished files into place last, so a half-built set is never
    // mistaken for a good one.
    fs::copy(&vmlinuz, dir.join("vmlinuz.tmp")).map_err(|e| format!("copy kernel: {e}"))?;
    fs::rename(dir.join("vmlinuz.tmp"), dir.join("vmlinuz"))
        .map_err(|e| format!("rename kernel: {e}"))?;
    fs::rename(&initrd_tmp, dir.join("initrd.img")).map_err(|e| format!("rename initrd: {e}"))?;
    let _ = fs::remove_dir_all(&work);
    GuestAssets::in_dir(dir).ok_or_else(|| "guest assets vanished after building".to_owned())
}

/// The flavor id in every test guest's Nova metadata. The flavor has 256
/// MiB, 1 vCPU, a 1 GiB root disk and no ephemeral disk or swap, as the
/// guest itself.
pub const TEST_FLAVOR_ID: &str = "42";

/// The image id in every test guest's Nova metadata (`<nova:image>` and
/// `<nova:root type="image">`, as Nova 34 writes them).
pub const TEST_IMAGE: &str = "c0ffee00-1234-4567-89ab-cdef01234567";

/// Nova's owner metadata for a test guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NovaOwner {
    /// The instance's display name (`<nova:name>`).
    pub display_name: String,
    /// The flavor name (`<nova:flavor name=…>`).
    pub flavor: String,
    /// The owning user's id.
    pub user_id: String,
    /// The owning project's id.
    pub project_id: String,
}

/// A test guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestSpec {
    /// The domain name.
    pub name: String,
    /// The domain UUID (for Nova guests, the instance UUID).
    pub uuid: String,
    /// The `<watchdog action=…>` value; `None` for no watchdog device.
    pub action: Option<String>,
    /// Nova metadata, if the guest should look like a Nova instance.
    pub nova: Option<NovaOwner>,
    /// Where the serial console is written.
    pub serial_log: PathBuf,
}

impl GuestSpec {
    /// A guest named `name` with a fresh UUID and an i6300esb watchdog taking
    /// `action`, logging its console under `target/wd-guest/logs/`.
    pub fn new(name: &str, action: &str) -> GuestSpec {
        GuestSpec {
            name: name.to_owned(),
            uuid: random_uuid(),
            action: Some(action.to_owned()),
            nova: None,
            serial_log: assets_dir().join("logs").join(format!("{name}.log")),
        }
    }

    /// Adds Nova owner metadata.
    #[must_use]
    pub fn with_nova(mut self, owner: NovaOwner) -> GuestSpec {
        self.nova = Some(owner);
        self
    }

    /// The libvirt domain XML for this guest on `assets`.
    pub fn domain_xml(&self, assets: &GuestAssets) -> String {
        if let Some(parent) = self.serial_log.parent() {
            let _ = fs::create_dir_all(parent);
        }
        let metadata = match &self.nova {
            None => String::new(),
            Some(o) => format!(
                r#"  <metadata>
    <nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1">
      <nova:package version="34.0.0"/>
      <nova:name>{name}</nova:name>
      <nova:creationTime>2026-11-25 12:00:00</nova:creationTime>
      <nova:flavor name="{flavor}" id="{flavor_id}">
        <nova:memory>256</nova:memory>
        <nova:disk>1</nova:disk>
        <nova:swap>0</nova:swap>
        <nova:ephemeral>0</nova:ephemeral>
        <nova:vcpus>1</nova:vcpus>
        <nova:extraSpecs>
          <nova:extraSpec name="hw:watchdog_action">pause</nova:extraSpec>
        </nova:extraSpecs>
      </nova:flavor>
      <nova:image uuid="{image}">
        <nova:containerFormat>bare</nova:containerFormat>
        <nova:diskFormat>raw</nova:diskFormat>
        <nova:minDisk>1</nova:minDisk>
        <nova:minRam>0</nova:minRam>
        <nova:properties/>
      </nova:image>
      <nova:owner>
        <nova:user uuid="{user}">demo-user</nova:user>
        <nova:project uuid="{project}">demo-project</nova:project>
      </nova:owner>
      <nova:root type="image" uuid="{image}"/>
      <nova:ports/>
    </nova:instance>
  </metadata>
"#,
                name = xml_escape(&o.display_name),
                flavor = xml_escape(&o.flavor),
                flavor_id = TEST_FLAVOR_ID,
                image = TEST_IMAGE,
                user = xml_escape(&o.user_id),
                project = xml_escape(&o.project_id),
            ),
        };
        let watchdog = match &self.action {
            Some(a) => format!(
                "    <watchdog model='i6300esb' action='{}'/>\n",
                xml_escape(a)
            ),
            None => String::new(),
        };
        format!(
            r#"<domain type='qemu'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
{metadata}  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>console=ttyS0 quiet panic=-1</cmdline>
  </os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <serial type='file'>
      <source path='{serial}'/>
      <target port='0'/>
    </serial>
    <console type='file'>
      <source path='{serial}'/>
      <target type='serial' port='0'/>
    </console>
{watchdog}    <memballoon model='none'/>
  </devices>
</domain>
"#,
            name = xml_escape(&self.name),
            uuid = self.uuid,
            kernel = xml_escape(&assets.kernel.display().to_string()),
            initrd = xml_escape(&assets.initrd.display().to_string()),
            serial = xml_escape(&self.serial_log.display().to_string()),
        )
    }
}

/// Escapes text for XML content and attributes.
pub fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
        .replace('"', "&quot;")
}

/// A random version-4 UUID from the kernel's generator.
pub fn random_uuid() -> String {
    fs::read_to_string("/proc/sys/kernel/random/uuid")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| format!("00000000-0000-4000-8000-{:012x}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_xml_carries_the_watchdog_and_the_nova_owner() {
        let assets = GuestAssets {
            kernel: "/k".into(),
            initrd: "/i".into(),
        };
        let spec = GuestSpec::new("g1", "pause").with_nova(NovaOwner {
            display_name: "a<b".into(),
            flavor: "m1.tiny".into(),
            user_id: "u1".into(),
            project_id: "p1".into(),
        });
        let xml = spec.domain_xml(&assets);
        assert!(
            xml.contains("<watchdog model='i6300esb' action='pause'/>"),
            "{xml}"
        );
        assert!(xml.contains(r#"<nova:project uuid="p1">"#), "{xml}");
        assert!(xml.contains("<nova:name>a&lt;b</nova:name>"), "{xml}");
        assert!(
            xml.contains(r#"<nova:flavor name="m1.tiny" id="42">"#),
            "{xml}"
        );
        assert!(xml.contains(&format!(r#"<nova:image uuid="{TEST_IMAGE}">"#)));
        assert!(xml.contains(&format!("<uuid>{}</uuid>", spec.uuid)));
        assert_eq!(spec.uuid.len(), 36);
        assert_ne!(random_uuid(), random_uuid());
    }
}
