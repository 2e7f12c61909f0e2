//! The settle listings' schedule, without libvirt.

use super::*;

#[test]
fn settle_listings_come_at_1_4_12_units_then_while_busy_up_to_120() {
    let unit = Duration::from_millis(10);
    let t0 = Instant::now();
    assert!(Settle::new(Duration::ZERO, t0).is_none());
    let mut s = Settle::new(unit, t0).unwrap();
    let at = |s: &Settle| s.next().map(|n| (n - t0).as_millis());
    assert_eq!(at(&s), Some(10));
    assert!(!s.due(t0) && s.due(t0 + unit));
    // Busy or not, the fixed ones come.
    s.done(t0 + unit, 0);
    assert_eq!(at(&s), Some(40));
    s.done(t0 + unit * 4, 1);
    assert_eq!(at(&s), Some(120));
    // Then only while busy, every 4 units, up to 120.
    let mut now = t0 + unit * 12;
    s.done(now, 2);
    assert_eq!(at(&s), Some(160));
    while let Some(next) = s.next() {
        now = next;
        s.done(now, 1);
    }
    assert_eq!((now - t0).as_millis(), 1200);
    let mut s = Settle::new(unit, t0).unwrap();
    for units in [1, 4, 12] {
        s.done(t0 + unit * units, 0);
    }
    assert_eq!(s.next(), None, "not busy: done");
}
