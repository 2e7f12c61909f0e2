//! Benchmarks: resolving and rendering one guest's watchdog, and patching a
//! realistic (~4 KB) Nova domain document.

// `criterion_group!` defines an undocumented public function.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use wd_policy::{OperatorPolicy, resolve};
use wd_xml::{LibvirtVersion, NovaMetadata, Target, patch, render, watchdogs};

const FIXTURE: &str = include_str!("../tests/fixtures/nova-pc.xml");

fn benches(c: &mut Criterion) {
    let policy = OperatorPolicy::default();
    let flavor = [
        ("hw:cpu_policy", "shared"),
        ("hw:watchdog_action", "reset"),
        ("quota:cpu_shares", "2048"),
    ];
    let image = [
        ("os_distro", "debian"),
        ("hw_watchdog_action", "pause"),
        ("hw_disk_bus", "virtio"),
    ];
    let pc = Target::new("x86_64", "pc", LibvirtVersion::from_number(9_000_000));
    let q35 = Target::new("x86_64", "pc-q35-7.2", LibvirtVersion::IMPLICIT_ITCO);

    c.bench_function("resolve+render pc", |b| {
        b.iter(|| {
            let r = resolve(black_box(flavor), black_box(image), &policy).unwrap();
            render(r.setting, black_box(&pc)).unwrap()
        })
    });
    c.bench_function("resolve+render q35 9.1", |b| {
        b.iter(|| {
            let r = resolve(black_box(flavor), black_box(image), &policy).unwrap();
            render(r.setting, black_box(&q35)).unwrap()
        })
    });

    let setting = resolve(flavor, image, &policy).unwrap().setting;
    let q35_doc = FIXTURE.replace("machine=\"pc\"", "machine=\"pc-q35-7.2\"");
    let patched = patch(FIXTURE, setting, &pc).unwrap();
    c.bench_function("patch nova 4KB insert", |b| {
        b.iter(|| patch(black_box(FIXTURE), setting, &pc).unwrap())
    });
    c.bench_function("patch nova 4KB q35 9.1", |b| {
        b.iter(|| patch(black_box(&q35_doc), setting, &q35).unwrap())
    });
    c.bench_function("patch nova 4KB already patched", |b| {
        b.iter(|| patch(black_box(&patched), setting, &pc).unwrap())
    });
    c.bench_function("read watchdogs 4KB", |b| {
        b.iter(|| watchdogs(black_box(&patched)).unwrap())
    });
    // The floor: quick-xml's reader alone, then with attribute parsing.
    c.bench_function("raw reader 4KB", |b| {
        b.iter(|| {
            let mut r = quick_xml::Reader::from_str(black_box(FIXTURE));
            let mut n = 0;
            loop {
                match r.read_event().unwrap() {
                    quick_xml::events::Event::Eof => break,
                    _ => n += 1,
                }
            }
            n
        })
    });
    c.bench_function("raw reader+attrs 4KB", |b| {
        b.iter(|| {
            let mut r = quick_xml::Reader::from_str(black_box(FIXTURE));
            let mut n = 0;
            loop {
                match r.read_event().unwrap() {
                    quick_xml::events::Event::Eof => break,
                    quick_xml::events::Event::Start(t) | quick_xml::events::Event::Empty(t) => {
                        for a in t.attributes().with_checks(false) {
                            n += a.unwrap().value.len();
                        }
                    }
                    _ => n += 1,
                }
            }
            n
        })
    });
    c.bench_function("nova metadata 4KB", |b| {
        b.iter(|| NovaMetadata::parse(black_box(FIXTURE)).unwrap())
    });
}

criterion_group!(xml, benches);
criterion_main!(xml);
