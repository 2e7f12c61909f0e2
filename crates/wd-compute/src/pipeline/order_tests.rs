//! The per-domain order, without a runtime: examples, then a model test
//! over random interleavings.

use std::collections::HashMap;

use proptest::prelude::*;

use super::*;

fn backoff() -> Backoff {
    Backoff {
        initial: Duration::from_secs(1),
        max: Duration::from_secs(8),
        factor: 2.0,
        jitter: false,
    }
}

fn t0() -> Instant {
    Instant::now()
}

fn uuid(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

#[test]
fn a_free_domain_goes_at_once_and_a_busy_ones_items_wait_in_order() {
    let now = t0();
    let mut o = Order::new(backoff());
    let a = uuid(1);
    assert_eq!(o.offer(a, "pause 1"), Some("pause 1"));
    o.start(a, now);
    assert_eq!(o.offer(a, "resume 1"), None);
    assert_eq!(o.offer(a, "pause 2"), None);
    assert_eq!(o.offer(a, "resume 2"), None);
    // Another domain is not held up.
    assert_eq!(o.offer(uuid(2), "reset"), Some("reset"));
    assert_eq!(o.load(), 4);
    assert_eq!(o.next(a), None, "busy");
    assert_eq!(o.finish(a, Outcome::Done, now, 0.0), None);
    assert_eq!(o.next(a), Some("resume 1"));
    assert_eq!(o.next(a), Some("pause 2"));
    o.start(a, now);
    assert_eq!(o.next(a), None, "busy with pause 2");
    o.finish(a, Outcome::Done, now, 0.0);
    assert_eq!(o.next(a), Some("resume 2"));
    assert_eq!(o.next(a), None);
    assert_eq!(o.load(), 0);
    assert!(!o.is_busy(&a));
}

#[test]
fn a_failed_hand_over_is_held_with_the_backoff_and_its_domain_waits() {
    let now = t0();
    let mut o = Order::new(backoff());
    let a = uuid(1);
    o.start(a, now);
    assert_eq!(o.offer(a, "resumed"), None);
    let due = o.finish(a, Outcome::Retry, now, 0.0).unwrap();
    assert_eq!(due, now + Duration::from_secs(1));
    assert_eq!(o.held(), 1);
    assert_eq!(o.next(a), None, "held: the resume waits behind it");
    assert!(
        !o.stalled(Duration::from_millis(1), now + Duration::from_secs(60)),
        "a held firing is not a stuck loop"
    );
    assert!(o.due(now).is_empty());
    assert_eq!(o.next_due(), Some(due));
    assert_eq!(o.due(due), vec![a]);
    assert_eq!(o.held(), 0);
    // It fails again: the wait doubles.
    let due2 = o.finish(a, Outcome::Retry, due, 0.0).unwrap();
    assert_eq!(due2, due + Duration::from_secs(2));
    assert_eq!(o.due(due2), vec![a]);
    assert!(o.stalled(Duration::from_secs(1), due2 + Duration::from_secs(2)));
    o.finish(a, Outcome::Done, due2, 0.0);
    assert_eq!(o.next(a), Some("resumed"));
    assert_eq!(o.load(), 0);
    assert_eq!(o.next_due(), None);
}

#[test]
fn the_wait_is_capped_by_the_policy() {
    let now = t0();
    let mut o: Order<()> = Order::new(backoff());
    let a = uuid(1);
    o.start(a, now);
    let mut at = now;
    for _ in 0..20 {
        let due = o.finish(a, Outcome::Retry, at, 1.0).unwrap();
        assert!(due - at <= Duration::from_secs(8));
        assert_eq!(o.due(due), vec![a]);
        at = due;
    }
}

/// One step of the model test.
#[derive(Debug, Clone)]
enum Step {
    /// Domain `d` reports a firing (true) or a lifecycle event (false).
    Item(u8, bool),
    /// The oldest hand-over of domain `d` in flight ends.
    End(u8, bool),
    /// The clock moves on by this many seconds.
    Wait(u8),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0u8..3, any::<bool>()).prop_map(|(d, f)| Step::Item(d, f)),
        (0u8..3, any::<bool>()).prop_map(|(d, ok)| Step::End(d, ok)),
        (0u8..10).prop_map(Step::Wait),
    ]
}

/// A shell like `Pipeline::run`: applies what the core releases (a
/// firing starts a hand-over), and records each domain's applied items.
struct Shell {
    o: Order<(bool, u32)>,
    now: Instant,
    applied: HashMap<u8, Vec<u32>>,
    in_flight: HashMap<u8, u32>,
    held: std::collections::HashSet<u8>,
}

impl Shell {
    fn apply(&mut self, d: u8, (firing, n): (bool, u32)) {
        self.applied.entry(d).or_default().push(n);
        if firing {
            self.o.start(uuid(u128::from(d)), self.now);
            assert!(
                self.in_flight.insert(d, n).is_none(),
                "one hand-over per domain"
            );
        }
    }

    fn release(&mut self, d: u8) {
        while let Some(w) = self.o.next(uuid(u128::from(d))) {
            self.apply(d, w);
        }
    }
}

proptest! {
    /// Whatever the interleaving of items, completions, failures and
    /// time: each domain's items are applied exactly once, in the order
    /// they came; a domain has at most one hand-over at a time; what the
    /// core holds adds up; and once everything succeeds nothing is left.
    #[test]
    fn each_domains_items_are_applied_once_in_order(steps in proptest::collection::vec(step(), 0..200)) {
        let mut s = Shell { o: Order::new(backoff()), now: t0(), applied: HashMap::new(), in_flight: HashMap::new(), held: Default::default() };
        let mut offered: HashMap<u8, Vec<u32>> = HashMap::new();
        let mut n = 0u32;
        for st in steps {
            match st {
                Step::Item(d, firing) => {
                    n += 1;
                    offered.entry(d).or_default().push(n);
                    if let Some(w) = s.o.offer(uuid(u128::from(d)), (firing, n)) {
                        s.apply(d, w);
                    }
                }
                Step::End(d, ok) => {
                    let u = uuid(u128::from(d));
                    if s.in_flight.contains_key(&d) && !s.held.contains(&d) {
                        let outcome = if ok { Outcome::Done } else { Outcome::Retry };
                        s.o.finish(u, outcome, s.now, 0.5);
                        if ok {
                            s.in_flight.remove(&d);
                            s.release(d);
                        } else {
                            prop_assert!(s.o.is_busy(&u));
                            s.held.insert(d);
                        }
                    }
                }
                Step::Wait(secs) => {
                    s.now += Duration::from_secs(u64::from(secs));
                    // Due hand-overs are in flight again (the shell keeps
                    // their firing; nothing new is applied).
                    for u in s.o.due(s.now) {
                        prop_assert!(s.o.is_busy(&u));
                        let d = u8::try_from(u.as_u128()).unwrap();
                        prop_assert!(s.held.remove(&d));
                    }
                }
            }
            let waiting: usize = offered.iter().map(|(d, v)| v.len() - s.applied.get(d).map_or(0, Vec::len)).sum();
            prop_assert_eq!(s.o.load(), waiting + s.in_flight.len());
        }
        // Drain: everything succeeds from now on.
        for _ in 0..1000 {
            if s.in_flight.is_empty() {
                break;
            }
            s.now += Duration::from_secs(10);
            s.o.due(s.now);
            s.held.clear();
            let ds: Vec<u8> = s.in_flight.keys().copied().collect();
            for d in ds {
                s.o.finish(uuid(u128::from(d)), Outcome::Done, s.now, 0.5);
                s.in_flight.remove(&d);
                s.release(d);
            }
        }
        prop_assert_eq!(s.o.load(), 0);
        prop_assert_eq!(&s.applied, &offered);
    }
}
