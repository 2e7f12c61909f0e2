//! Benchmarks: resolving and rendering one guest's watchdog, patching a
//! realistic (~4 KB) Nova domain document, and patching 100, 1,000 and
//! 10,000 distinct such documents (`patch_scale/N`, throughput in domains)
//! to show that the cost per domain does not grow with the count.

// `criterion_group!` defines an undocumented public function.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
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

/// `n` distinct domains: the fixture with its own UUID and name each.
fn domains(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            FIXTURE
                .replace(
                    "6a1b1fd3-54f0-4bdc-8d0a-1e2f3c4d5e6f",
                    &format!("6a1b1fd3-54f0-4bdc-8d0a-{i:012x}"),
                )
                .replace("instance-0000002a", &format!("instance-{i:08x}"))
        })
        .collect()
}

fn scale(c: &mut Criterion) {
    let pc = Target::new("x86_64", "pc", LibvirtVersion::from_number(9_000_000));
    let setting = resolve(
        [("hw:watchdog_action", "reset")],
        [("hw_watchdog_action", "pause")],
        &OperatorPolicy::default(),
    )
    .unwrap()
    .setting;
    let mut g = c.benchmark_group("patch_scale");
    g.sample_size(10)
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(3));
    for n in [100usize, 1_000, 10_000] {
        let docs = domains(n);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::from_parameter(n), &docs, |b, docs| {
            b.iter(|| {
                docs.iter()
                    .map(|d| patch(black_box(d), setting, &pc).unwrap().len())
                    .sum::<usize>()
            })
        });
    }
    g.finish();
}

criterion_group!(xml, benches, scale);
criterion_main!(xml);
