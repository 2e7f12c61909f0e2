//! Unit tests of the directory's bounds: grace period, cap, eviction counts.

use super::*;

const PROJECT: &str = "6f70656e737461636b20697320636f6f6c";

fn dom(n: u128) -> DomainId {
    DomainId {
        uuid: Uuid::from_u128(n),
        name: format!("instance-{n:08x}"),
    }
}

fn owner() -> Option<Owner> {
    Some(Owner {
        display_name: Some("web-1".into()),
        project_id: PROJECT.into(),
        user_id: None,
        flavor: None,
        image: None,
    })
}

fn dir(grace_s: u64, max: usize) -> NovaDirectory {
    NovaDirectory::with_config(
        DirectoryConfig::default()
            .retire_after(Duration::from_secs(grace_s))
            .max_entries(max),
    )
}

#[test]
fn a_retired_entry_outlives_its_domain_for_the_grace_period_only() {
    let d = dir(60, 100);
    let t0 = Instant::now();
    let s = |n| t0 + Duration::from_secs(n);
    d.observe_at(&dom(1), owner(), s(0));
    d.observe_at(&dom(2), owner(), s(0));
    d.retire_at(&dom(1).uuid, s(10));
    // Within the grace period: still there (a poweroff firing of a
    // transient domain is built after it vanished).
    d.observe_at(&dom(3), owner(), s(69));
    assert_eq!(d.lookup(&dom(1)), owner());
    let c = d.cache();
    assert_eq!(
        (c.entries.len(), c.retired_now, c.evicted_expired),
        (3, 1, 0)
    );
    drop(c);
    // After it: forgotten, and counted.
    d.observe_at(&dom(3), owner(), s(70));
    assert_eq!(d.lookup(&dom(1)), None);
    assert_eq!(d.lookup(&dom(2)), owner());
    let c = d.cache();
    assert_eq!(
        (c.entries.len(), c.retired_now, c.evicted_expired),
        (2, 0, 1)
    );
}

#[test]
fn observing_again_cancels_the_retirement() {
    let d = dir(60, 100);
    let t0 = Instant::now();
    let s = |n| t0 + Duration::from_secs(n);
    d.observe_at(&dom(1), owner(), s(0));
    d.retire_at(&dom(1).uuid, s(1));
    // Nova's hard reboot: undefined, defined again with the same UUID.
    d.observe_at(&dom(1), owner(), s(2));
    d.observe_at(&dom(2), owner(), s(1000));
    assert_eq!(d.lookup(&dom(1)), owner());
    let c = d.cache();
    assert_eq!((c.retired_now, c.evicted_expired), (0, 0));
    assert!(c.retired.is_empty(), "the stale retirement was dropped");
    drop(c);
    // Retired again later: its own, new grace period.
    d.retire_at(&dom(1).uuid, s(1000));
    d.retire_at(&dom(1).uuid, s(1050)); // a repeat does not restart the clock
    d.observe_at(&dom(2), owner(), s(1060));
    assert_eq!(d.lookup(&dom(1)), None);
}

#[test]
fn the_cap_evicts_retired_entries_first_then_the_least_recently_observed() {
    let d = dir(3600, 3);
    let t0 = Instant::now();
    for n in 1..=3 {
        d.observe_at(&dom(n), owner(), t0);
    }
    d.retire_at(&dom(2).uuid, t0);
    d.observe_at(&dom(4), owner(), t0);
    assert_eq!(d.lookup(&dom(2)), None, "the retired one went first");
    d.observe_at(&dom(1), owner(), t0); // 1 is now newer than 3
    d.observe_at(&dom(5), owner(), t0);
    assert_eq!(d.lookup(&dom(3)), None, "then the least recently observed");
    for n in [1, 4, 5] {
        assert_eq!(d.lookup(&dom(n)), owner(), "{n}");
    }
    let c = d.cache();
    assert_eq!((c.entries.len(), c.evicted_full), (3, 2));
    assert_eq!(c.order.len(), 3);
}

#[test]
fn churn_stays_bounded_and_every_eviction_is_counted() {
    let d = dir(0, 50);
    let t0 = Instant::now();
    for n in 0..10_000u128 {
        d.observe_at(&dom(n), owner(), t0);
        if n % 2 == 0 {
            d.retire_at(&dom(n).uuid, t0);
        }
        let c = d.cache();
        assert!(c.entries.len() <= 50);
        assert_eq!(c.order.len(), c.entries.len());
        assert!(c.retired.len() <= 64.max(2 * c.retired_now) + 1);
    }
    let stats = d.stats();
    assert_eq!(stats.evicted_expired, 5_000);
    assert_eq!(
        stats.entries as u64 + stats.evicted_expired + stats.evicted_full,
        10_000
    );
}

#[test]
fn stats_and_unknown_owners_are_counted() {
    let d = NovaDirectory::new();
    assert!(d.is_empty());
    d.observe(&dom(1), "<domain><name>plain</name></domain>");
    assert_eq!(d.lookup(&dom(1)), None, "no Nova metadata, no owner");
    assert_eq!(d.lookup(&dom(2)), None);
    let s = d.stats();
    assert_eq!((s.entries, s.unknown_owner), (1, 2));
    assert_eq!(
        DirectoryConfig::default().max_entries(0).max_entries,
        1,
        "clamped"
    );
}

/// A domain with Nova's metadata: `flavor` and `image` are the bodies of
/// `<nova:flavor>` and `<nova:image>` (attributes included), if any.
fn nova_xml(flavor: Option<&str>, image: Option<&str>) -> String {
    let flavor = flavor.map_or(String::new(), |f| format!("<nova:flavor {f}</nova:flavor>"));
    let image = image.map_or(String::new(), |i| format!("<nova:image {i}</nova:image>"));
    format!(
        r#"<domain><name>instance-1</name><uuid>00000000-0000-4000-8000-000000000001</uuid><metadata>
        <nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1">
        <nova:name>web-1</nova:name>{flavor}{image}
        <nova:owner><nova:user uuid="u-1">alice</nova:user><nova:project uuid="{PROJECT}">web</nova:project></nova:owner>
        </nova:instance></metadata></domain>"#
    )
}

#[test]
fn the_owner_carries_the_flavor_and_image_of_novas_metadata() {
    let full = nova_owner(&nova_xml(
        Some(r#"name="m1.small" id="2"><nova:memory>2048</nova:memory><nova:disk>20</nova:disk><nova:swap>0</nova:swap><nova:ephemeral>1</nova:ephemeral><nova:vcpus>2</nova:vcpus>"#),
        Some(r#"uuid="img-1"><nova:containerFormat>bare</nova:containerFormat><nova:minRam>64</nova:minRam>"#),
    ))
    .unwrap();
    assert_eq!(full.project_id, PROJECT);
    assert_eq!(
        full.flavor,
        Some(wd_notify::Flavor {
            name: Some("m1.small".into()),
            id: Some("2".into()),
            memory_mb: Some(2048),
            vcpus: Some(2),
            root_gb: Some(20),
            ephemeral_gb: Some(1),
            swap_mb: Some(0),
        })
    );
    assert_eq!(
        full.image,
        Some(wd_notify::Image {
            uuid: Some("img-1".into()),
            container_format: Some("bare".into()),
            min_ram: Some(64),
            ..wd_notify::Image::default()
        })
    );
    // No flavor or image in the metadata: none, and the owner still.
    let bare = nova_owner(&nova_xml(None, None)).unwrap();
    assert_eq!((bare.flavor, bare.image), (None, None));
    assert_eq!(bare.user_id.as_deref(), Some("u-1"));
    // Hostile sizes are left out; the rest of the owner is kept.
    let hostile = nova_owner(&nova_xml(
        Some(r#"name="x"><nova:memory>-1</nova:memory><nova:vcpus>NaN</nova:vcpus><nova:disk>99999999999</nova:disk>"#),
        None,
    ))
    .unwrap();
    assert_eq!(
        hostile.flavor,
        Some(wd_notify::Flavor {
            name: Some("x".into()),
            ..wd_notify::Flavor::default()
        })
    );
    assert_eq!(hostile.display_name.as_deref(), Some("web-1"));
}
