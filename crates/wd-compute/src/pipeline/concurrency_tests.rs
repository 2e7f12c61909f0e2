//! The pipeline's `run` loop hands firings of different domains over
//! concurrently, a domain's own in order, and finishes what is in flight.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use wd_events::WatchdogAction;

use super::tests::{dom, fire, resumed};
use super::*;
use crate::directory::NovaDirectory;

/// Takes `hold` per notification and records how many were in flight at
/// once, overall and per instance, and the order each instance's arrived.
#[derive(Default)]
struct Slow {
    hold: Duration,
    state: Mutex<SlowState>,
}

#[derive(Default)]
struct SlowState {
    now: usize,
    max: usize,
    per_instance: HashMap<Uuid, usize>,
    max_per_instance: usize,
    order: HashMap<Uuid, Vec<Uuid>>,
    done: usize,
}

#[async_trait]
impl Notifier for Slow {
    async fn notify(&self, n: &Notification) -> Result<(), NotifyError> {
        {
            let mut s = self.state.lock().unwrap();
            s.now += 1;
            s.max = s.max.max(s.now);
            let mine = s.per_instance.entry(n.instance.uuid).or_default();
            *mine += 1;
            let mine = *mine;
            s.max_per_instance = s.max_per_instance.max(mine);
            s.order.entry(n.instance.uuid).or_default().push(n.event_id);
        }
        tokio::time::sleep(self.hold).await;
        let mut s = self.state.lock().unwrap();
        s.now -= 1;
        *s.per_instance.entry(n.instance.uuid).or_default() -= 1;
        s.done += 1;
        Ok(())
    }
}

fn firing(domain: u128, action: WatchdogAction, episode: u128) -> Item {
    fire(&dom(domain), action, Origin::Live, episode)
}

fn pipeline(notifier: Arc<dyn Notifier>, ledger: Ledger) -> Pipeline {
    Pipeline::new(
        "compute-1",
        Arc::new(NovaDirectory::new()),
        notifier,
        ledger,
    )
}

#[tokio::test]
async fn other_domains_go_out_together_and_a_domains_own_in_order() {
    let slow = Arc::new(Slow {
        hold: Duration::from_millis(50),
        ..Slow::default()
    });
    // 20 domains fire once each; domain 100 fires five times among them.
    let mut items = Vec::new();
    for i in 0..20u128 {
        items.push(firing(i, WatchdogAction::Reset, 1000 + i));
        if i % 4 == 0 {
            items.push(firing(100, WatchdogAction::Reset, 2000 + i));
        }
    }
    let p = pipeline(slow.clone(), Ledger::in_memory());
    let stats = p
        .run(futures::stream::iter(items), std::future::pending())
        .await;
    assert_eq!((stats.firings, stats.accepted), (25, 25));
    let s = slow.state.lock().unwrap();
    assert_eq!(s.done, 25, "everything in flight was finished");
    assert!(s.max >= 10, "only {} were handed over at once", s.max);
    assert_eq!(s.max_per_instance, 1, "a domain's firings overlapped");
    let order: Vec<u128> = s.order[&Uuid::from_u128(100)]
        .iter()
        .map(|u| u.as_u128())
        .collect();
    assert_eq!(order, [2000, 2004, 2008, 2012, 2016]);
}

#[tokio::test]
async fn a_pause_whose_episode_ends_while_in_flight_is_not_marked_accepted() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("episodes.json");
    let slow = Arc::new(Slow {
        hold: Duration::from_millis(100),
        ..Slow::default()
    });
    let d = Uuid::from_u128(7);
    let resumed = resumed(&dom(7));
    // Pauses of domains 7 and 8 go out; 7 is resumed before its pause is
    // accepted, 8 stays paused.
    let items = vec![
        firing(7, WatchdogAction::Pause, 1),
        firing(8, WatchdogAction::Pause, 2),
        resumed,
    ];
    let p = pipeline(slow.clone(), Ledger::open(&path).unwrap());
    let stats = p
        .run(futures::stream::iter(items), std::future::pending())
        .await;
    assert_eq!(stats.accepted, 2);
    let ledger = Ledger::open(&path).unwrap();
    assert_eq!(ledger.get(&d), None, "an ended episode came back");
    let open = ledger
        .get(&Uuid::from_u128(8))
        .expect("8's episode is open");
    assert!(
        open.accepted && open.event_id == Uuid::from_u128(2),
        "{open:?}"
    );
}

#[tokio::test]
async fn shutdown_finishes_the_deliveries_in_flight() {
    let slow = Arc::new(Slow {
        hold: Duration::from_millis(200),
        ..Slow::default()
    });
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    for i in 0..3u128 {
        tx.send(firing(i, WatchdogAction::Reset, 10 + i))
            .await
            .unwrap();
    }
    let items = tokio_stream_from(rx);
    let p = pipeline(slow.clone(), Ledger::in_memory());
    // Shut down while all three are still being handed over.
    let stats = p
        .run(items, tokio::time::sleep(Duration::from_millis(50)))
        .await;
    assert_eq!(stats.accepted, 3);
    assert_eq!(slow.state.lock().unwrap().done, 3);
    drop(tx);
}

/// A stream over a channel's receiver (the sender stays open: the stream
/// never ends by itself).
fn tokio_stream_from(mut rx: tokio::sync::mpsc::Receiver<Item>) -> impl Stream<Item = Item> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
