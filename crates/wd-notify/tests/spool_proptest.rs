//! Property test of the spool's recovery: write N entries through a real
//! [`Spool`], cut its segment file at any point (as a crash or a full disk
//! would), and recover. Every entry whose bytes end before the cut comes
//! back intact, in order, and nothing after the cut is invented, even with
//! garbage after the cut.

use std::time::Duration;

use async_trait::async_trait;
use proptest::prelude::*;
use uuid::Uuid;
use wd_notify::{
    Domain, Instance, Notification, Notifier, NotifyError, QueueConfig, RecordBody, Spool, recover,
};

/// A notifier that always fails retryably, so nothing is delivered and no
/// ack is written while the test runs.
struct Down;

#[async_trait]
impl Notifier for Down {
    async fn notify(&self, _: &Notification) -> Result<(), NotifyError> {
        Err(NotifyError::retryable("spool proptest: notifier down"))
    }
}

fn notification(name: &str, k: u128) -> Notification {
    let mut instance = Instance::new(Uuid::from_u128(k));
    instance.name = Some(name.to_owned());
    Notification::new(
        instance,
        "compute-1",
        Domain::new(Uuid::from_u128(k), format!("instance-{k:08x}")),
        "reset",
        time::OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(k as i64),
    )
}

/// Spools `ns` with a real spool and returns the bytes of its one segment.
fn spooled(ns: &[Notification]) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("a temp dir");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let config = QueueConfig::default()
            .retry_delays(Duration::from_secs(3600), Duration::from_secs(3600));
        let spool = Spool::open(dir.path(), config, Down).expect("open the spool");
        for n in ns {
            spool.notify(n).await.expect("spooled");
        }
        spool.shutdown(Duration::ZERO).await;
    });
    let mut segments: Vec<_> = std::fs::read_dir(dir.path())
        .expect("list the spool")
        .map(|e| e.expect("an entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    assert_eq!(segments.len(), 1, "{segments:?}");
    std::fs::read(segments.pop().expect("one segment")).expect("read the segment")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn recovery_keeps_every_entry_written_before_the_cut(
        names in proptest::collection::vec("\\PC{0,40}", 1..12),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 8),
        garbage in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let ns: Vec<Notification> = names
            .iter()
            .enumerate()
            .map(|(k, name)| notification(name, k as u128 + 1))
            .collect();
        let bytes = spooled(&ns);
        // Where each entry's record ends in the intact file.
        let (full, report) = recover(&bytes);
        prop_assert!(report.skipped.is_empty(), "{:?}", report);
        let ends: Vec<(usize, Notification)> = full
            .iter()
            .filter_map(|r| match &r.body {
                RecordBody::Entry(n) => Some((r.offset + r.len, (**n).clone())),
                RecordBody::Ack => None,
            })
            .collect();
        prop_assert_eq!(
            ends.iter().map(|(_, n)| n.clone()).collect::<Vec<_>>(),
            ns.clone()
        );

        let mut all_cuts: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
        // The record boundaries themselves, and one byte either side.
        all_cuts.extend(ends.iter().flat_map(|(e, _)| [e - 1, *e, (e + 1).min(bytes.len())]));
        for cut in all_cuts {
            for tail in [&[][..], &garbage[..]] {
                let mut damaged = bytes[..cut].to_vec();
                damaged.extend_from_slice(tail);
                // Garbage may happen to start with the very bytes that were
                // cut (a `}` after a cut one byte short of a record's end):
                // what survives is the prefix the damaged file shares with
                // the intact one.
                let intact = damaged
                    .iter()
                    .zip(&bytes)
                    .take_while(|(a, b)| a == b)
                    .count();
                let want: Vec<Notification> = ends
                    .iter()
                    .filter(|(end, _)| *end <= intact)
                    .map(|(_, n)| n.clone())
                    .collect();
                let (records, _) = recover(&damaged);
                let got: Vec<Notification> = records
                    .into_iter()
                    .filter_map(|r| match r.body {
                        RecordBody::Entry(n) => Some(*n),
                        RecordBody::Ack => None,
                    })
                    .collect();
                prop_assert_eq!(&got, &want, "cut at {} of {}, tail {:?}", cut, bytes.len(), tail);
            }
        }
    }
}
