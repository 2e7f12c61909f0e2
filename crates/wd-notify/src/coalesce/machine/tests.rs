//! The machine's rules, input by input, without a runtime.

use super::*;
use crate::testing::firing_at;

const A: u128 = 0xa;
const B: u128 = 0xb;
const W: u64 = 60;

fn config() -> CoalesceConfig {
    CoalesceConfig::default().window(Duration::from_secs(W))
}

/// A firing of domain `dom`, run `run`, with `action`, at `secs`.
fn fire(dom: u128, run: Option<u32>, action: &str, secs: u64) -> Notification {
    let mut n = firing_at(dom, secs as i64);
    n.domain.id = run;
    n.action = action.to_owned();
    n
}

/// One input to the machine, at a time in seconds from the start.
#[derive(Debug, Clone, Copy)]
enum In {
    /// A firing: time, domain, run, action.
    Fire(u64, u128, Option<u32>, &'static str),
    /// The delivery of the first firing of the last firing of `dom` failed.
    FailFirst(u128),
    /// The clock reaches this time: what is due.
    Tick(u64),
    /// The oldest follow-up handed out and not yet reported ends so.
    Done(Outcome),
    Close,
    Drain,
}

fn name(dom: u128) -> &'static str {
    match dom {
        A => "a",
        B => "b",
        _ => "?",
    }
}

fn show(n: &Notification) -> String {
    let run = n.domain.id.map_or("?".into(), |r| r.to_string());
    format!(
        "{}#{run} {} x{}",
        name(n.domain.uuid.as_u128()),
        n.action,
        n.occurrences.count
    )
}

fn show_all(ns: &[Notification]) -> String {
    if ns.is_empty() {
        return "-".into();
    }
    ns.iter().map(show).collect::<Vec<_>>().join(", ")
}

/// Drives a fresh machine and renders what it decides.
struct Harness {
    m: Machine,
    t0: Instant,
    now: Instant,
    /// Follow-ups handed out and not yet reported, oldest first.
    out: VecDeque<Notification>,
    /// The episode each domain's last firing opened.
    opened: HashMap<u128, u64>,
}

impl Harness {
    fn new(config: &CoalesceConfig) -> Self {
        let t0 = Instant::now();
        Harness {
            m: Machine::new(config),
            t0,
            now: t0,
            out: VecDeque::new(),
            opened: HashMap::new(),
        }
    }

    fn at(&mut self, secs: u64) -> Instant {
        self.now = self.now.max(self.t0 + Duration::from_secs(secs));
        self.now
    }

    fn step(&mut self, input: In) -> String {
        match input {
            In::Fire(secs, dom, run, action) => {
                let now = self.at(secs);
                let n = fire(dom, run, action, secs);
                let what = match self.m.firing(&n, now) {
                    Verdict::Folded => "folded".to_owned(),
                    Verdict::Send { why, episode } => {
                        if let Some(id) = episode {
                            self.opened.insert(dom, id);
                        }
                        format!("send ({why:?})")
                    }
                };
                format!("@{secs} {}: {what}", show(&n))
            }
            In::FailFirst(dom) => {
                let id = self.opened[&dom];
                self.m.first_failed(Uuid::from_u128(dom), id);
                format!("first of {} failed", name(dom))
            }
            In::Tick(secs) => {
                let now = self.at(secs);
                let due = self.m.due(now);
                let shown = show_all(&due);
                self.out.extend(due);
                format!("@{secs} due: {shown}")
            }
            In::Done(outcome) => {
                let f = self.out.pop_front().expect("a follow-up to report on");
                let shown = show(&f);
                match self.m.followup_done(f, outcome, self.now) {
                    None => format!("{shown} {outcome:?}"),
                    Some((d, why)) => {
                        format!("{shown} {outcome:?}; dropped {} ({why:?})", show(&d))
                    }
                }
            }
            In::Close => {
                self.m.close();
                "closed".into()
            }
            In::Drain => {
                let due = self.m.drain();
                let shown = show_all(&due);
                self.out.extend(due);
                format!("drain: {shown}")
            }
        }
    }
}

fn run(config: &CoalesceConfig, inputs: &[In]) -> (Vec<String>, Harness) {
    let mut h = Harness::new(config);
    let got = inputs.iter().map(|i| h.step(*i)).collect();
    (got, h)
}

fn check(inputs: &[In], expected: &[&str]) -> Harness {
    check_with(&config(), inputs, expected)
}

fn check_with(config: &CoalesceConfig, inputs: &[In], expected: &[&str]) -> Harness {
    let (got, h) = run(config, inputs);
    assert_eq!(got, expected, "\n{}", got.join("\n"));
    h
}

use In::*;

#[test]
fn only_actions_that_leave_the_guest_running_fold() {
    for (action, folds) in [
        ("none", true),
        ("reset", true),
        ("debug", true),
        ("inject-nmi", true),
        ("pause", false),
        ("poweroff", false),
        ("shutdown", false),
        ("unknown-9", false),
        ("", false),
    ] {
        assert_eq!(leaves_the_guest_running(action), folds, "{action}");
        let (got, h) = run(
            &config(),
            &[Fire(0, A, Some(1), action), Fire(5, A, Some(1), action)],
        );
        let second = if folds {
            "folded"
        } else {
            "send (StopsTheGuest)"
        };
        assert!(got[1].ends_with(second), "{action}: {got:?}");
        assert_eq!(h.m.stats().tracked, u64::from(folds), "{action}");
    }
}

#[test]
fn every_pause_is_sent_at_once_even_within_a_window() {
    // Pause, hard reboot (new run), pause again 20 s later: two
    // notifications, both at once; nothing is left to follow up.
    let h = check(
        &[
            Fire(0, A, Some(1), "pause"),
            Fire(20, A, Some(2), "pause"),
            Fire(21, A, Some(2), "pause"),
            Tick(200),
        ],
        &[
            "@0 a#1 pause x1: send (StopsTheGuest)",
            "@20 a#2 pause x1: send (StopsTheGuest)",
            "@21 a#2 pause x1: send (StopsTheGuest)",
            "@200 due: -",
        ],
    );
    let s = h.m.stats();
    assert_eq!((s.forwarded, s.folded, s.tracked), (3, 0, 0));
    assert_eq!(h.m.next_deadline(h.now), None);
}

#[test]
fn a_reset_storm_is_one_followup_per_window() {
    // A guest that fires every 5 s for 150 s, then stops; the clock
    // reaches each time before the firing at that time.
    let mut inputs = Vec::new();
    for i in 0..30 {
        inputs.push(Tick(i * 5));
        inputs.push(Fire(i * 5, A, Some(1), "reset"));
    }
    inputs.extend([Tick(180), Tick(240), Fire(241, A, Some(1), "reset")]);
    let (got, h) = run(&config(), &inputs);
    let got: Vec<&String> = got.iter().filter(|g| !g.ends_with("due: -")).collect();
    assert_eq!(got[0], "@0 a#1 reset x1: send (Opened)");
    let folded = got.iter().filter(|g| g.ends_with("folded")).count();
    assert_eq!(folded, 29, "{got:#?}");
    let rest: Vec<&String> = got
        .into_iter()
        .filter(|g| !g.ends_with("folded"))
        .skip(1)
        .collect();
    assert_eq!(
        rest,
        [
            // 5..55 folded into the first window's follow-up (11 firings);
            // 60..115 (12) into the second; 120..145 (6) into the third.
            "@60 due: a#1 reset x11",
            "@120 due: a#1 reset x12",
            "@180 due: a#1 reset x6",
            // A window without repeats (ending at 240) ends the episode, so
            // the next firing is sent at once again.
            "@241 a#1 reset x1: send (Opened)",
        ]
    );
    let s = h.m.stats();
    assert_eq!((s.forwarded, s.folded, s.tracked), (2, 29, 1));
}

#[test]
fn a_followup_keeps_its_event_id_and_spans_its_repeats() {
    let mut m = Machine::new(&config());
    let t0 = Instant::now();
    let at = |secs| t0 + Duration::from_secs(secs);
    let first = fire(A, Some(1), "reset", 0);
    let r1 = fire(A, Some(1), "reset", 5);
    let r2 = fire(A, Some(1), "reset", 9);
    assert!(matches!(m.firing(&first, at(0)), Verdict::Send { .. }));
    assert_eq!(m.firing(&r1, at(5)), Verdict::Folded);
    assert_eq!(m.firing(&r2, at(9)), Verdict::Folded);
    let due = m.due(at(60));
    assert_eq!(due.len(), 1);
    let f = &due[0];
    assert!(![first.event_id, r1.event_id, r2.event_id].contains(&f.event_id));
    assert_eq!(f.occurrences.count, 2);
    assert_eq!(f.occurrences.first_at, r1.fired_at);
    assert_eq!(f.occurrences.last_at, r2.fired_at);
    assert_eq!(f.fired_at, r2.fired_at);
    // Failed, retried a window later: the same event id.
    let id = f.event_id;
    assert!(
        m.followup_done(due[0].clone(), Outcome::Retryable, at(60))
            .is_none()
    );
    assert_eq!(m.next_deadline(at(60)), Some(at(60 + W)));
    assert!(m.due(at(119)).is_empty());
    let again = m.due(at(120));
    assert_eq!(again.iter().map(|n| n.event_id).collect::<Vec<_>>(), [id]);
}

#[test]
fn a_new_run_is_a_new_episode_and_the_old_runs_followup_is_due_at_once() {
    check(
        &[
            Fire(0, A, Some(1), "reset"),
            Fire(5, A, Some(1), "reset"),
            Fire(9, A, Some(1), "reset"),
            // Hard reboot: destroy, start; the new run loops too.
            Fire(20, A, Some(2), "reset"),
            Tick(20),
            Fire(25, A, Some(2), "reset"),
            // Run 1's old window end (60) finds nothing of its own.
            Tick(60),
            Tick(80),
        ],
        &[
            "@0 a#1 reset x1: send (Opened)",
            "@5 a#1 reset x1: folded",
            "@9 a#1 reset x1: folded",
            "@20 a#2 reset x1: send (Opened)",
            "@20 due: a#1 reset x2",
            "@25 a#2 reset x1: folded",
            "@60 due: -",
            "@80 due: a#2 reset x1",
        ],
    );
}

#[test]
fn a_pause_ends_the_open_episode_of_its_domain() {
    let h = check(
        &[
            Fire(0, A, Some(1), "reset"),
            Fire(5, A, Some(1), "reset"),
            Fire(10, A, Some(1), "pause"),
            Tick(10),
            // The old episode's window (to 60) ended with it: a new
            // episode opened at 20 runs its own window, to 80.
            Fire(20, A, Some(1), "reset"),
            Fire(61, A, Some(1), "reset"),
            Tick(60),
            Tick(61),
            Tick(80),
        ],
        &[
            "@0 a#1 reset x1: send (Opened)",
            "@5 a#1 reset x1: folded",
            "@10 a#1 pause x1: send (StopsTheGuest)",
            "@10 due: a#1 reset x1",
            "@20 a#1 reset x1: send (Opened)",
            "@61 a#1 reset x1: folded",
            "@60 due: -",
            "@61 due: -",
            "@80 due: a#1 reset x1",
        ],
    );
    assert_eq!(h.m.stats().tracked, 1);
}

#[test]
fn a_pause_with_no_open_episode_needs_no_timer() {
    let mut h = Harness::new(&config());
    h.step(Fire(0, A, Some(1), "pause"));
    assert_eq!(h.m.next_deadline(h.now), None);
    h.step(Fire(0, B, Some(1), "reset"));
    assert_eq!(
        h.m.next_deadline(h.now),
        Some(h.t0 + Duration::from_secs(W))
    );
    h.step(Fire(1, B, Some(1), "pause"));
    // B's episode had no follow-up: nothing is ready, no timer is left.
    assert_eq!(h.m.stats().tracked, 0);
    assert_eq!(h.m.next_deadline(h.now), None);
    assert!(h.m.due(h.now).is_empty());
}

#[test]
fn an_unknown_run_matches_any_run() {
    check(
        &[
            Fire(0, A, None, "reset"),
            Fire(1, A, Some(3), "reset"),
            Fire(2, A, None, "reset"),
            Fire(3, A, Some(4), "reset"),
        ],
        &[
            "@0 a#? reset x1: send (Opened)",
            // The episode learns its run from the first firing that knows it.
            "@1 a#3 reset x1: folded",
            "@2 a#? reset x1: folded",
            "@3 a#4 reset x1: send (Opened)",
        ],
    );
}

#[test]
fn domains_are_independent() {
    check(
        &[
            Fire(0, A, Some(1), "reset"),
            Fire(1, B, Some(1), "reset"),
            Fire(2, A, Some(1), "reset"),
            Fire(3, B, Some(1), "pause"),
            Tick(60),
            Tick(61),
        ],
        &[
            "@0 a#1 reset x1: send (Opened)",
            "@1 b#1 reset x1: send (Opened)",
            "@2 a#1 reset x1: folded",
            "@3 b#1 pause x1: send (StopsTheGuest)",
            "@60 due: a#1 reset x1",
            "@61 due: -",
        ],
    );
}

#[test]
fn a_failed_first_firing_closes_its_episode_unless_repeats_wait() {
    check(
        &[
            Fire(0, A, Some(1), "reset"),
            FailFirst(A),
            // The caller's retry of the same firing is sent at once.
            Fire(1, A, Some(1), "reset"),
            // Here a repeat was folded before the first one failed: the
            // episode stays for its follow-up.
            Fire(2, B, Some(1), "reset"),
            Fire(3, B, Some(1), "reset"),
            FailFirst(B),
            Fire(4, B, Some(1), "reset"),
            Tick(62),
        ],
        &[
            "@0 a#1 reset x1: send (Opened)",
            "first of a failed",
            "@1 a#1 reset x1: send (Opened)",
            "@2 b#1 reset x1: send (Opened)",
            "@3 b#1 reset x1: folded",
            "first of b failed",
            "@4 b#1 reset x1: folded",
            "@62 due: b#1 reset x2",
        ],
    );
}

#[test]
fn a_stale_failure_report_does_not_close_a_newer_episode() {
    let mut h = Harness::new(&config());
    h.step(Fire(0, A, Some(1), "reset"));
    let old = h.opened[&A];
    h.step(Fire(1, A, Some(2), "reset"));
    h.m.first_failed(Uuid::from_u128(A), old);
    assert_eq!(h.m.stats().tracked, 1);
    assert_eq!(
        h.step(Fire(2, A, Some(2), "reset")),
        "@2 a#2 reset x1: folded"
    );
}

#[test]
fn followups_that_fail_are_retried_dropped_or_bounded() {
    let cfg = config().max_instances(2);
    let h = check_with(
        &cfg,
        &[
            Fire(0, A, Some(1), "reset"),
            Fire(0, A, Some(1), "reset"),
            Fire(0, B, Some(1), "none"),
            Fire(0, B, Some(1), "none"),
            Tick(60),
            Done(Outcome::Retryable),
            Done(Outcome::Permanent),
            Tick(119),
            Tick(120),
            Done(Outcome::Delivered),
        ],
        &[
            "@0 a#1 reset x1: send (Opened)",
            "@0 a#1 reset x1: folded",
            "@0 b#1 none x1: send (Opened)",
            "@0 b#1 none x1: folded",
            "@60 due: a#1 reset x1, b#1 none x1",
            "a#1 reset x1 Retryable",
            "b#1 none x1 Permanent; dropped b#1 none x1 (Permanent)",
            "@119 due: -",
            "@120 due: a#1 reset x1",
            "a#1 reset x1 Delivered",
        ],
    );
    let s = h.m.stats();
    assert_eq!((s.followups, s.dropped, s.unsent), (1, 1, 0));

    // At most `max_instances` wait; the oldest goes first.
    let cfg = config().max_instances(1);
    let h = check_with(
        &cfg,
        &[
            Fire(0, A, Some(1), "reset"),
            Fire(1, A, Some(1), "reset"),
            Tick(60),
            Fire(61, A, Some(1), "reset"),
            Fire(62, A, Some(1), "reset"),
            Tick(120),
            Done(Outcome::Retryable),
            Done(Outcome::Retryable),
        ],
        &[
            "@0 a#1 reset x1: send (Opened)",
            "@1 a#1 reset x1: folded",
            "@60 due: a#1 reset x1",
            "@61 a#1 reset x1: folded",
            "@62 a#1 reset x1: folded",
            "@120 due: a#1 reset x2",
            "a#1 reset x1 Retryable",
            "a#1 reset x2 Retryable; dropped a#1 reset x1 (TooManyUnsent)",
        ],
    );
    assert_eq!((h.m.stats().unsent, h.m.stats().dropped), (1, 1));
}

#[test]
fn a_full_table_passes_new_instances_through_but_pauses_need_no_room() {
    let cfg = config().max_instances(1);
    let h = check_with(
        &cfg,
        &[
            Fire(0, A, Some(1), "reset"),
            Fire(1, B, Some(1), "reset"),
            Fire(2, B, Some(1), "reset"),
            Fire(3, B, Some(1), "pause"),
            Fire(4, A, Some(1), "reset"),
            // A's new run takes A's own place in the table.
            Fire(5, A, Some(2), "reset"),
            Tick(5),
        ],
        &[
            "@0 a#1 reset x1: send (Opened)",
            "@1 b#1 reset x1: send (TableFull)",
            "@2 b#1 reset x1: send (TableFull)",
            "@3 b#1 pause x1: send (StopsTheGuest)",
            "@4 a#1 reset x1: folded",
            "@5 a#2 reset x1: send (Opened)",
            "@5 due: a#1 reset x1",
        ],
    );
    let s = h.m.stats();
    assert_eq!((s.untracked, s.tracked, s.forwarded), (2, 1, 5));
}

#[test]
fn drain_and_close_hand_over_everything_then_pass_through() {
    check(
        &[
            Fire(0, A, Some(1), "reset"),
            Fire(1, A, Some(1), "reset"),
            Fire(2, B, Some(1), "reset"),
            Fire(3, B, Some(1), "reset"),
            Tick(62),
            Done(Outcome::Retryable),
            Fire(63, A, Some(1), "reset"),
            Close,
            Fire(64, A, Some(1), "reset"),
            Drain,
            Drain,
        ],
        &[
            "@0 a#1 reset x1: send (Opened)",
            "@1 a#1 reset x1: folded",
            "@2 b#1 reset x1: send (Opened)",
            "@3 b#1 reset x1: folded",
            "@62 due: a#1 reset x1, b#1 reset x1",
            "a#1 reset x1 Retryable",
            "@63 a#1 reset x1: folded",
            "closed",
            "@64 a#1 reset x1: send (Closed)",
            "drain: a#1 reset x1, a#1 reset x1",
            "drain: -",
        ],
    );
}

#[test]
fn next_deadline_is_the_earliest_of_ready_window_and_retry() {
    let mut h = Harness::new(&config());
    assert_eq!(h.m.next_deadline(h.now), None);
    h.step(Fire(0, A, Some(1), "reset"));
    h.step(Fire(1, A, Some(1), "reset"));
    let w = Duration::from_secs(W);
    assert_eq!(h.m.next_deadline(h.now), Some(h.t0 + w));
    // A new run makes the old follow-up ready: due now.
    h.step(Fire(2, A, Some(2), "reset"));
    let now = h.now;
    assert_eq!(h.m.next_deadline(now), Some(now));
    h.step(Tick(2));
    // Run 1's window (60) ended with its episode; run 2's ends at 62.
    assert_eq!(
        h.m.next_deadline(h.now),
        Some(h.t0 + Duration::from_secs(62))
    );
    h.step(Fire(3, A, Some(2), "pause"));
    assert_eq!(h.m.next_deadline(h.now), None);
    // A failed follow-up is retried one window after the failure.
    h.step(Done(Outcome::Retryable));
    assert_eq!(
        h.m.next_deadline(h.now),
        Some(h.t0 + Duration::from_secs(63))
    );
}

/// Delivers `due` (failing the first one if `fail` is set) and checks that
/// no follow-up spans a folded firing of another run; returns the firings
/// delivered.
fn settle<S: std::fmt::Debug>(
    m: &mut Machine,
    due: Vec<Notification>,
    now: Instant,
    fail: &mut bool,
    folded: &[(u64, u32)],
    steps: &S,
) -> u64 {
    let mut got = 0;
    for f in due {
        let run = f.domain.id.unwrap();
        let (lo, hi) = (f.occurrences.first_at, f.occurrences.last_at);
        for (t, r) in folded {
            let at = fire(A, None, "reset", *t).fired_at;
            if at >= lo && at <= hi {
                assert_eq!(*r, run, "{steps:?}: a follow-up mixes runs");
            }
        }
        if std::mem::take(fail) {
            assert!(m.followup_done(f, Outcome::Retryable, now).is_none());
        } else {
            got += f.occurrences.count;
            assert!(m.followup_done(f, Outcome::Delivered, now).is_none());
        }
    }
    got
}

/// Every sequence of up to six inputs over a small alphabet (two runs of a
/// looping guest, a pause, a window's end, a failed follow-up): no firing
/// is lost or counted twice, a stopping firing is always sent at once, and
/// a follow-up never mixes runs.
#[test]
fn exhaustively_no_firing_is_lost_and_runs_never_mix() {
    #[derive(Clone, Copy, Debug)]
    enum Step {
        Reset(u32),
        Pause(u32),
        Wait,
        FailNext,
    }
    const ALPHABET: [Step; 5] = [
        Step::Reset(1),
        Step::Reset(2),
        Step::Pause(2),
        Step::Wait,
        Step::FailNext,
    ];
    let len = 6;
    let total = ALPHABET.len().pow(len);
    for code in 0..total {
        let mut c = code;
        let steps: Vec<Step> = (0..len)
            .map(|_| {
                let s = ALPHABET[c % ALPHABET.len()];
                c /= ALPHABET.len();
                s
            })
            .collect();
        let mut m = Machine::new(&config());
        let t0 = Instant::now();
        let mut secs = 0u64;
        let mut fired = 0u64;
        let mut counted = 0u64;
        // (time, run) of every folded firing.
        let mut folded: Vec<(u64, u32)> = Vec::new();
        let mut fail_next = false;
        for step in &steps {
            secs += 7;
            let now = t0 + Duration::from_secs(secs);
            match *step {
                Step::Reset(run) | Step::Pause(run) => {
                    let action = if matches!(step, Step::Pause(_)) {
                        "pause"
                    } else {
                        "reset"
                    };
                    fired += 1;
                    match m.firing(&fire(A, Some(run), action, secs), now) {
                        Verdict::Send { .. } => counted += 1,
                        Verdict::Folded => {
                            assert_eq!(action, "reset", "{steps:?}: a pause was folded");
                            folded.push((secs, run));
                        }
                    }
                }
                Step::Wait => {
                    secs += W;
                    let now = t0 + Duration::from_secs(secs);
                    let due = m.due(now);
                    counted += settle(&mut m, due, now, &mut fail_next, &folded, &steps);
                }
                Step::FailNext => fail_next = true,
            }
        }
        // The end: everything still held is handed over.
        let now = t0 + Duration::from_secs(secs + 1000);
        fail_next = false;
        let due = m.drain();
        counted += settle(&mut m, due, now, &mut fail_next, &folded, &steps);
        assert_eq!(counted, fired, "{steps:?}: firings lost or doubled");
        assert_eq!(m.stats().unsent, 0, "{steps:?}");
    }
}
