//! Unit tests of the backoff policy.

use std::time::Duration;

use backon::BackoffBuilder;

use crate::{Attempts, Backoff, Error, MAX_DELAY_LIMIT};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The base delays of attempts 0.. as milliseconds.
fn check(backoff: Backoff, expected: &[u64]) {
    let got: Vec<u64> = (0..expected.len() as u32)
        .map(|n| backoff.base_delay(n).as_millis() as u64)
        .collect();
    assert_eq!(got, expected, "{backoff:?}");
}

#[test]
fn grows_by_the_factor_and_caps_at_max() {
    let b = Backoff::new(ms(800), ms(30_000));
    check(b, &[800, 1600, 3200, 6400, 12800, 25600, 30000, 30000]);
    check(b.factor(1.5), &[800, 1200, 1800, 2700, 4050]);
    check(b.factor(1.0), &[800, 800, 800]);
    // Without jitter, delay is the base delay.
    assert_eq!(b.jitter(false).delay(4), ms(12_800));
}

#[test]
fn saturates_instead_of_overflowing() {
    let b = Backoff::new(ms(1), ms(5_000));
    assert_eq!(b.base_delay(u32::MAX), ms(5_000));
    assert_eq!(b.factor(f32::MAX).base_delay(2), ms(5_000));
    assert_eq!(b.factor(f32::INFINITY).base_delay(1), ms(5_000));
    // Unchecked nonsense never panics either.
    assert_eq!(b.factor(f32::NAN).base_delay(7), ms(1));
    assert_eq!(b.factor(0.1).base_delay(7), ms(1));
    assert_eq!(Backoff::new(ms(10), ms(5)).base_delay(0), ms(5));
    assert_eq!(
        Backoff::new(Duration::ZERO, ms(5)).base_delay(9),
        Duration::ZERO
    );
    let huge = Backoff::new(Duration::from_secs(1), Duration::MAX);
    assert_eq!(huge.base_delay(u32::MAX), Duration::MAX);
    assert!(huge.delay(u32::MAX) >= Duration::MAX / 2);
    assert_eq!(huge.base_delay(10), Duration::from_secs(1024));
}

#[test]
fn jitter_is_within_half_and_whole_and_never_above_max() {
    let b = Backoff::new(ms(800), ms(30_000));
    assert_eq!(b.delay_with(0, 0.0), ms(400));
    assert_eq!(b.delay_with(0, 0.5), ms(600));
    assert_eq!(b.delay_with(0, 1.0), ms(800));
    assert_eq!(b.delay_with(2, 0.0), ms(1600));
    // Out-of-range draws are clamped.
    assert_eq!(b.delay_with(0, 7.0), ms(800));
    assert_eq!(b.delay_with(0, -1.0), ms(400));
    assert_eq!(b.delay_with(0, f64::NAN), ms(400));
    // At the cap, jitter never exceeds it.
    for unit in [0.0, 0.5, 0.999, 1.0] {
        let d = b.delay_with(40, unit);
        assert!((ms(15_000)..=ms(30_000)).contains(&d), "{d:?}");
    }
    // Real draws: within bounds, and actually spread.
    let draws: Vec<Duration> = (0..500).map(|_| b.delay(3)).collect();
    assert!(draws.iter().all(|d| (ms(3200)..=ms(6400)).contains(d)));
    let low = draws.iter().filter(|d| **d < ms(4800)).count();
    assert!((100..400).contains(&low), "{low} of 500 in the lower half");
}

#[test]
fn builder_follows_the_same_schedule() {
    let b = Backoff::new(ms(800), ms(30_000));
    let plain: Vec<Duration> = b.jitter(false).builder().build().take(10).collect();
    for (n, d) in plain.iter().enumerate() {
        let want = b.base_delay(n as u32);
        let diff = d.abs_diff(want);
        assert!(
            diff < Duration::from_micros(10),
            "attempt {n}: {d:?} vs {want:?}"
        );
    }
    // Jittered: each within [d / 2, d], never above max; endless.
    let jittered: Vec<Duration> = b.builder().build().take(1000).collect();
    assert_eq!(jittered.len(), 1000);
    for (n, d) in jittered.iter().enumerate() {
        let base = b.base_delay(n as u32);
        let slack = Duration::from_micros(10);
        assert!(
            *d + slack >= base / 2 && *d <= base + slack,
            "attempt {n}: {d:?}"
        );
        assert!(*d <= ms(30_000), "attempt {n}: {d:?}");
    }
    // An initial delay above max starts at max.
    let first = Backoff::new(ms(50), ms(20))
        .jitter(false)
        .builder()
        .build()
        .next();
    assert_eq!(first, Some(ms(20)));
}

#[test]
fn check_accepts_sane_policies() {
    for b in [
        Backoff::new(ms(800), ms(30_000)),
        Backoff::new(ms(1), ms(1)).factor(1.0),
        Backoff::new(Duration::from_nanos(1), MAX_DELAY_LIMIT).factor(10.0),
    ] {
        assert_eq!(b.check("x"), Ok(()), "{b:?}");
    }
}

#[test]
fn check_names_the_key_and_what_is_allowed() {
    let b = Backoff::new(ms(500), ms(30_000));
    let cases = [
        (
            Backoff::new(Duration::ZERO, ms(5)),
            "spool.retry: an initial delay of 0 is not allowed; it must be above 0",
        ),
        (
            Backoff::new(ms(10), ms(5)),
            "spool.retry: max delay 5ms is below the initial delay 10ms; it must be at least the initial delay",
        ),
        (
            Backoff::new(ms(10), MAX_DELAY_LIMIT + ms(1)),
            "spool.retry: max delay 86400.001s is too long; it must be at most 86400s",
        ),
        (
            b.factor(0.5),
            "spool.retry: factor 0.5 is not allowed; it must be a finite number of at least 1",
        ),
        (
            b.factor(f32::NAN),
            "spool.retry: factor NaN is not allowed; it must be a finite number of at least 1",
        ),
        (
            b.factor(f32::INFINITY),
            "spool.retry: factor inf is not allowed; it must be a finite number of at least 1",
        ),
    ];
    for (backoff, message) in cases {
        let err = backoff.check("spool.retry").unwrap_err();
        assert_eq!(err.to_string(), message);
    }
    assert!(matches!(
        Backoff::new(ms(10), ms(5)).check("k"),
        Err(Error::MaxBelowInitial { key, .. }) if key == "k"
    ));
}

#[test]
fn attempts_count_and_reset() {
    let mut a = Attempts::new(Backoff::new(ms(100), ms(1_000)));
    assert_eq!(a.attempt(), 0);
    assert_eq!(a.next_delay_with(1.0), ms(100));
    assert_eq!(a.next_delay_with(0.0), ms(100));
    assert_eq!(a.next_delay_with(1.0), ms(400));
    assert_eq!(a.attempt(), 3);
    assert!(!a.reset_if_healthy(ms(999), ms(1_000)));
    assert_eq!(a.next_delay_with(1.0), ms(800));
    assert!(a.reset_if_healthy(ms(1_000), ms(1_000)));
    assert_eq!(a.attempt(), 0);
    assert_eq!(a.next_delay_with(1.0), ms(100));
    a.reset();
    assert_eq!(a.next_delay_with(1.0), ms(100));
    assert_eq!(a.backoff().max, ms(1_000));
    // The real draw stays within the policy.
    let d = a.next_delay();
    assert!((ms(100)..=ms(200)).contains(&d), "{d:?}");
}

#[cfg(feature = "serde")]
#[test]
fn deserializes_from_seconds() {
    let b: Backoff = toml::from_str("initial_secs = 0.5\nmax_secs = 30").unwrap();
    assert_eq!(b, Backoff::new(ms(500), ms(30_000)));
    let b: Backoff =
        toml::from_str("initial_secs = 1\nmax_secs = 8\nfactor = 1.5\njitter = false").unwrap();
    assert_eq!(
        b,
        Backoff::new(ms(1_000), ms(8_000)).factor(1.5).jitter(false)
    );
    let err = toml::from_str::<Backoff>("initial_secs = -1\nmax_secs = 8")
        .unwrap_err()
        .to_string();
    assert!(err.contains("initial_secs: -1 is not a delay"), "{err}");
    let err = toml::from_str::<Backoff>("initial_secs = 1\nmax_secs = 8\nmin = 2")
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown field `min`"), "{err}");
    let b: Backoff = serde_json::from_str(r#"{"initial_secs": 2, "max_secs": 1}"#).unwrap();
    assert!(b.check("bus.reconnect").is_err());
}
