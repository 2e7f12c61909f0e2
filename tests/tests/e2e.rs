//! End to end: real guests under the system libvirtd, the real `wdguard watch`
//! agent, and a webhook receiver that verifies every signature.
//!
//! Each test builds its own receiver, agent configuration, spool and guests
//! (unique names and project ids), so that other guests on this shared host
//! cannot disturb the assertions, which always filter by domain UUID.

#[path = "e2e/world.rs"]
mod world;

#[path = "e2e/remote.rs"]
mod remote;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use wd_e2e::agent::AgentProcess;
use wd_e2e::receiver::{Received, Receiver};
use wd_e2e::scratch::{RestartLibvirtd, Scratch};
use wd_e2e::virsh::{EventWatch, Guest};
use wd_testkit::Libvirtd;
use wd_testkit::guest::{GuestSpec, NovaOwner};

use world::*;

/// Each watchdog action, on its own guest, all at once: libvirt takes the
/// action, and the owner's project endpoint (and the operator's) gets a
/// signed notification naming the owner from Nova's metadata; the other
/// project's endpoint gets nothing; a reset storm is folded into a
/// follow-up that counts the repeats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libvirtd_each_watchdog_action_notifies_the_owner_signed_and_routed() {
    let _serial = SERIAL.lock().await;
    let Some(_libvirtd) = wd_testkit::libvirtd() else {
        return;
    };
    let Some(assets) = wd_testkit::guest::assets() else {
        return;
    };
    // A reset guest fires every 7 to 10 s here, so a window of 20 s holds at
    // least two repeats: its follow-up counts more than one firing.
    let w = World::new(20.0).await;
    let agent = w.agent("agent.log").await;
    let t0 = Instant::now();
    let actions = ["pause", "reset", "poweroff", "none"];
    let guests: Vec<(&str, Guest)> = actions
        .iter()
        .map(|&a| (a, start(w.spec(a), &assets)))
        .collect();

    let uuids: Vec<String> = guests.iter().map(|(_, g)| g.spec.uuid.clone()).collect();
    let reset_uuid = guests[1].1.spec.uuid.clone();
    let all = w
        .receiver
        .wait_for(Duration::from_secs(120), |got| {
            let project_a = got.iter().filter(|r| r.path == PROJECT_A);
            let mut seen: BTreeSet<&str> = BTreeSet::new();
            let mut followup = false;
            for r in project_a {
                seen.insert(r.instance_uuid());
                followup |= r.instance_uuid() == reset_uuid && r.count() > 1;
            }
            followup && uuids.iter().all(|u| seen.contains(u.as_str()))
        })
        .await;
    eprintln!(
        "all four notified, reset follow-up in: {:.1} s",
        t0.elapsed().as_secs_f64()
    );

    for (action, guest) in &guests {
        let mine = of(&all, PROJECT_A, guest);
        assert!(
            !mine.is_empty(),
            "no notification for the {action} guest; agent log:\n{}",
            agent.log_text()
        );
        // The first one is the live firing itself.
        check_notification(&mine[0], guest, action, false);
        assert_eq!(mine[0].count(), 1, "{:#}", mine[0].event);
        // The operator endpoint gets every event the project endpoint gets
        // (each endpoint is sent to on its own, so it may lag a little).
        let want = event_ids(&mine);
        let got = w
            .receiver
            .wait_for(Duration::from_secs(10), |all| {
                want.is_subset(&event_ids(&of(all, OPS, guest)))
            })
            .await;
        let ops = event_ids(&of(&got, OPS, guest));
        assert!(
            want.is_subset(&ops),
            "{action}: {want:?} not all in {ops:?}"
        );
    }

    // What libvirt did to each guest.
    let state = |i: usize| &guests[i].1;
    assert_eq!(
        state(0)
            .wait_state_async("paused", Duration::from_secs(10))
            .await,
        "paused (watchdog)"
    );
    let off = state(2)
        .wait_state_async("shut off", Duration::from_secs(10))
        .await;
    assert!(off.starts_with("shut off"), "poweroff guest is {off}");
    for i in [1, 3] {
        let s = state(i).state();
        assert!(s.starts_with("running"), "{} is {s}", actions[i]);
    }

    // A pause and a poweroff fire once: one event each.
    for i in [0, 2] {
        let got = w.got(PROJECT_A, state(i));
        assert_eq!(got.len(), 1, "{}: {got:#?}", actions[i]);
    }
    // The reset storm: the first firing at once, then a follow-up with a new
    // event id that stands for the repeats it folded.
    let reset = w.got(PROJECT_A, state(1));
    for r in &reset {
        let d = r.data();
        eprintln!(
            "reset notification: count {} fired_at {} first_at {} last_at {}",
            r.count(),
            str_of(d, "/fired_at"),
            str_of(d, "/occurrences/first_at"),
            str_of(d, "/occurrences/last_at")
        );
    }
    let followup = reset.iter().find(|r| r.count() > 1).unwrap();
    check_notification(followup, state(1), "reset", false);
    assert_ne!(followup.event_id(), reset[0].event_id());
    let first_at = str_of(followup.data(), "/occurrences/first_at");
    let last_at = str_of(followup.data(), "/occurrences/last_at");
    assert!(first_at < last_at, "{:#}", followup.event);
    assert!(
        event_ids(&reset).len() == reset.len(),
        "each reset notification has its own event id: {reset:#?}"
    );

    // Routing: nothing for project B, and no request failed verification.
    let b: Vec<_> = all.iter().filter(|r| r.path == PROJECT_B).collect();
    assert!(b.is_empty(), "project B received {b:#?}");
    assert_eq!(w.receiver.rejected_signatures(), 0);

    let code = agent.terminate(Duration::from_secs(10)).unwrap();
    assert_eq!(code, 0);
}

/// A guest pauses while no agent runs; the agent started later finds it in
/// its catch-up and notifies once, marked recovered; a restarted agent does
/// not announce it again (the episode ledger).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libvirtd_a_pause_while_the_agent_is_down_is_delivered_once_when_it_starts() {
    let _serial = SERIAL.lock().await;
    let Some(_libvirtd) = wd_testkit::libvirtd() else {
        return;
    };
    let Some(assets) = wd_testkit::guest::assets() else {
        return;
    };
    let w = World::new(4.0).await;
    let guest = start(w.spec("pause"), &assets);
    let state = guest
        .wait_state_async("paused", Duration::from_secs(60))
        .await;
    assert_eq!(state, "paused (watchdog)");

    let agent = w.agent("agent-1.log").await;
    let got = w
        .receiver
        .wait_for(Duration::from_secs(30), |all| {
            !of(all, PROJECT_A, &guest).is_empty()
        })
        .await;
    let mine = of(&got, PROJECT_A, &guest);
    assert!(
        !mine.is_empty(),
        "nothing delivered; agent log:\n{}",
        agent.log_text()
    );
    check_notification(&mine[0], &guest, "pause", true);

    // No duplicate, now or after the agent restarts.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(agent.terminate(Duration::from_secs(10)).unwrap(), 0);
    let agent = w.agent("agent-2.log").await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        agent.log_count(&["already notified", &guest.spec.name]),
        1,
        "{}",
        agent.log_text()
    );
    assert_eq!(
        w.got(PROJECT_A, &guest).len(),
        1,
        "{:#?}",
        w.got(PROJECT_A, &guest)
    );
    assert_eq!(w.got(OPS, &guest).len(), 1);
    assert_eq!(w.receiver.rejected_signatures(), 0);
    assert_eq!(agent.terminate(Duration::from_secs(10)).unwrap(), 0);
}

/// libvirtd goes away while a guest's watchdog fires: once libvirtd is back,
/// the agent reconnects and delivers that pause once, as recovered; a pause
/// notified before the restart is not notified again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libvirtd_a_pause_during_a_libvirtd_restart_is_delivered_once() {
    let _serial = SERIAL.lock().await;
    let Some(libvirtd) = wd_testkit::libvirtd() else {
        return;
    };
    let Some(assets) = wd_testkit::guest::assets() else {
        return;
    };
    let w = World::new(4.0).await;
    let agent = w.agent("agent.log").await;

    // Guest B fires and is notified before the restart.
    let before = start(w.spec("pause"), &assets);
    w.receiver
        .wait_for(Duration::from_secs(60), |all| {
            !of(all, PROJECT_A, &before).is_empty()
        })
        .await;
    let notified = w.got(PROJECT_A, &before);
    assert_eq!(notified.len(), 1, "agent log:\n{}", agent.log_text());
    check_notification(&notified[0], &before, "pause", false);

    // Guest A starts; libvirtd stops before its watchdog can fire (that
    // takes about 6 s from the start), and stays down until it has fired.
    let during = start(w.spec("pause"), &assets);
    let _restart = RestartLibvirtd;
    let stopping = Instant::now();
    libvirtd.stop();
    eprintln!(
        "libvirtd stopped in {:.1} s",
        stopping.elapsed().as_secs_f64()
    );
    assert!(!Libvirtd::is_up());
    assert!(
        during.wait_armed(Duration::from_secs(60)).await,
        "the guest never armed its watchdog"
    );
    // It fires 4 s after arming (two 2 s stages); leave some slack.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let started = Instant::now();
    Libvirtd::start().unwrap();
    eprintln!(
        "libvirtd started in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        during
            .wait_state_async("paused", Duration::from_secs(10))
            .await,
        "paused (watchdog)"
    );

    let got = w
        .receiver
        .wait_for(Duration::from_secs(90), |all| {
            !of(all, PROJECT_A, &during).is_empty()
        })
        .await;
    let mine = of(&got, PROJECT_A, &during);
    assert!(
        !mine.is_empty(),
        "nothing delivered after the restart; agent log:\n{}",
        agent.log_text()
    );
    check_notification(&mine[0], &during, "pause", true);
    assert!(
        agent.log_count(&["lost the libvirt connection"]) >= 1,
        "{}",
        agent.log_text()
    );

    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(w.got(PROJECT_A, &during).len(), 1);
    let again = w.got(PROJECT_A, &before);
    assert_eq!(
        again.len(),
        1,
        "notified again after the restart: {again:#?}"
    );
    assert_eq!(w.receiver.rejected_signatures(), 0);
    assert_eq!(agent.terminate(Duration::from_secs(10)).unwrap(), 0);
}

/// The webhook endpoints answer 503 while a pause and a reset storm fire;
/// the agent is killed with SIGKILL in the middle of the outage and started
/// again on the same spool; once the endpoints recover, every event that was
/// tried is delivered, and the pause keeps its one event id throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libvirtd_webhook_outage_and_agent_kill_lose_nothing_and_keep_event_ids() {
    let _serial = SERIAL.lock().await;
    let Some(_libvirtd) = wd_testkit::libvirtd() else {
        return;
    };
    let Some(assets) = wd_testkit::guest::assets() else {
        return;
    };
    let w = World::new(4.0).await;
    w.receiver.set_status(503);
    let agent = w.agent("agent-1.log").await;
    let pause = start(w.spec("pause"), &assets);
    let reset = start(w.spec("reset"), &assets);

    // Both fired, and their notifications were tried and refused.
    let refused = w
        .receiver
        .wait_for_refused(Duration::from_secs(60), |r| {
            !of(r, PROJECT_A, &pause).is_empty() && !of(r, PROJECT_A, &reset).is_empty()
        })
        .await;
    assert!(
        !of(&refused, PROJECT_A, &pause).is_empty() && !of(&refused, PROJECT_A, &reset).is_empty(),
        "agent log:\n{}",
        agent.log_text()
    );
    assert!(w.receiver.accepted().is_empty());
    agent.kill9().unwrap();

    // Restarted on the same spool, still during the outage: the spooled
    // events are tried again, with their ids.
    let agent = w.agent("agent-2.log").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    w.receiver.set_status(200);
    let tried = w.receiver.refused();
    // Each endpoint is owed every event it was tried with: (path, event id).
    let ours = |r: &&Received| {
        r.instance_uuid() == pause.spec.uuid || r.instance_uuid() == reset.spec.uuid
    };
    let pairs = |got: &[Received]| -> BTreeSet<(String, String)> {
        got.iter()
            .filter(ours)
            .map(|r| (r.path.clone(), r.event_id().to_owned()))
            .collect()
    };
    let owed = pairs(&tried);
    let all = w
        .receiver
        .wait_for(Duration::from_secs(60), |got| owed.is_subset(&pairs(got)))
        .await;
    let delivered = pairs(&all);
    let lost: Vec<_> = owed.difference(&delivered).collect();
    assert!(
        lost.is_empty(),
        "tried but never delivered: {lost:?}; agent log:\n{}",
        agent.log_text()
    );

    // The pause: one event id everywhere, tried or delivered, before and
    // after the kill; the live firing, not re-announced by the catch-up.
    let pause_seen: Vec<Received> = tried
        .iter()
        .chain(all.iter())
        .filter(|r| r.instance_uuid() == pause.spec.uuid)
        .cloned()
        .collect();
    assert_eq!(event_ids(&pause_seen).len(), 1, "{pause_seen:#?}");
    let pause_got = of(&all, PROJECT_A, &pause);
    assert!(!pause_got.is_empty());
    check_notification(&pause_got[0], &pause, "pause", false);
    assert_eq!(
        agent.log_count(&["already notified", &pause.spec.name]),
        1,
        "{}",
        agent.log_text()
    );
    let reset_got = of(&all, PROJECT_A, &reset);
    assert!(!reset_got.is_empty());
    check_notification(&reset_got[0], &reset, "reset", false);

    // Duplicates, if any, are the same event: same id, same content.
    for r in &all {
        for other in all.iter().filter(|o| o.event_id() == r.event_id()) {
            assert_eq!(r.data(), other.data());
        }
    }
    assert_eq!(w.receiver.rejected_signatures(), 0);
    assert_eq!(pause.state(), "paused (watchdog)");

    // A graceful stop in the middle of the reset storm.
    assert_eq!(agent.terminate(Duration::from_secs(10)).unwrap(), 0);
}

/// Issue 10, failure 4: a guest pauses, its owner hard-reboots it (destroy,
/// then start, as Nova does), and its watchdog pauses it again within the
/// coalescing window; the agent is then killed with SIGKILL and
/// started again. The owner gets exactly two notifications, with distinct
/// event ids and distinct runs, the second within 1 s of the firing libvirt
/// reported; the restarted agent announces neither again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libvirtd_a_second_pause_after_a_hard_reboot_is_its_own_prompt_notification() {
    let _serial = SERIAL.lock().await;
    let Some(_libvirtd) = wd_testkit::libvirtd() else {
        return;
    };
    let Some(assets) = wd_testkit::guest::assets() else {
        return;
    };
    // A window longer than the default 60 s, so that the second pause
    // falls inside it even on a slow, shared host (the guest's second boot
    // took up to 40 s here).
    const WINDOW: Duration = Duration::from_secs(300);
    let w = World::new(WINDOW.as_secs_f64()).await;
    let agent = w.agent("agent-1.log").await;
    let events = EventWatch::start("watchdog").unwrap();
    let guest = start(w.spec("pause"), &assets);

    // The first pause.
    let first = w
        .receiver
        .wait_for(Duration::from_secs(60), |all| {
            !of(all, PROJECT_A, &guest).is_empty()
        })
        .await;
    let first = of(&first, PROJECT_A, &guest);
    assert_eq!(first.len(), 1, "agent log:\n{}", agent.log_text());
    check_notification(&first[0], &guest, "pause", false);
    assert_eq!(
        guest
            .wait_state_async("paused", Duration::from_secs(10))
            .await,
        "paused (watchdog)"
    );
    let run_1 = guest.run_id();

    // Hard reboot; the new run fires again about 8 s later.
    let rebooted = Instant::now();
    guest.hard_reboot().unwrap();
    let run_2 = guest.run_id();
    assert_ne!(run_1, run_2, "a start gives the domain a new runtime id");
    let both = w
        .receiver
        .wait_for(Duration::from_secs(120), |all| {
            of(all, PROJECT_A, &guest).len() >= 2
        })
        .await;
    let second_after = rebooted.elapsed();
    let got = of(&both, PROJECT_A, &guest);
    assert_eq!(
        got.len(),
        2,
        "the second pause was not notified; agent log:\n{}",
        agent.log_text()
    );
    assert_eq!(
        guest
            .wait_state_async("paused", Duration::from_secs(10))
            .await,
        "paused (watchdog)"
    );
    eprintln!(
        "second pause notified {:.1} s after the hard reboot",
        second_after.as_secs_f64()
    );
    // Let the spool record the delivery before the kill (it would only be
    // delivered again with the same id otherwise).
    tokio::time::sleep(Duration::from_secs(1)).await;
    agent.kill9().unwrap();

    // The restarted agent's catch-up finds run 2 paused: already notified.
    let agent = w.agent("agent-2.log").await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        agent.log_count(&["already notified", &guest.spec.name]),
        1,
        "{}",
        agent.log_text()
    );

    let got = w.got(PROJECT_A, &guest);
    assert_eq!(got.len(), 2, "{got:#?}");
    assert_eq!(event_ids(&got).len(), 2, "distinct event ids: {got:#?}");
    for r in &got {
        check_notification(r, &guest, "pause", false);
        assert_eq!(r.count(), 1, "{:#}", r.event);
    }
    assert_eq!(
        got.iter().map(Received::run_id).collect::<Vec<_>>(),
        [run_1.map(u64::from), run_2.map(u64::from)],
        "each notification names its run"
    );
    // The operator's endpoint got the same two.
    assert_eq!(event_ids(&w.got(OPS, &guest)), event_ids(&got));

    // Promptness: each notification against libvirt's own time of the
    // firing it reports, as `virsh event --timestamp` printed it.
    let fired = events.of(&guest.spec.name);
    assert_eq!(
        fired.iter().map(|e| e.detail.as_str()).collect::<Vec<_>>(),
        ["pause", "pause"],
        "{fired:#?}"
    );
    let gap = fired[1].at.duration_since(fired[0].at).unwrap_or_default();
    assert!(
        gap < WINDOW,
        "the second pause ({gap:?} after the first) fell outside the window"
    );
    eprintln!("second pause {:.1} s after the first", gap.as_secs_f64());
    for (n, e) in got.iter().zip(&fired) {
        // virsh stamps the event when it prints it, which may be a hair
        // after the agent got the same event: a negative lag counts as 0.
        let lag = n.received_at.duration_since(e.at).unwrap_or_default();
        eprintln!(
            "firing at {:?}: notified {:.0} ms later",
            e.at,
            lag.as_secs_f64() * 1000.0
        );
        assert!(
            lag < Duration::from_secs(1),
            "notified {lag:?} after its firing; agent log:\n{}",
            agent.log_text()
        );
    }
    assert_eq!(w.receiver.rejected_signatures(), 0);
    assert_eq!(agent.terminate(Duration::from_secs(10)).unwrap(), 0);
}

/// SIGTERM stops the agent cleanly: exit code 0 within a few seconds, with
/// its final report logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libvirtd_sigterm_stops_the_agent_cleanly() {
    let _serial = SERIAL.lock().await;
    let Some(_libvirtd) = wd_testkit::libvirtd() else {
        return;
    };
    let w = World::new(4.0).await;
    let agent = w.agent("agent.log").await;
    let log = agent.log.clone();
    let t = Instant::now();
    let code = agent.terminate(Duration::from_secs(5)).unwrap();
    let took = t.elapsed();
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(code, 0, "{text}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(text.contains("SIGTERM: shutting down"), "{text}");
    assert!(text.contains("wdguard watch stopped"), "{text}");
    eprintln!("stopped in {:.2} s", took.as_secs_f64());
}

/// Project A's endpoints are all hostile (hang, 503 with a u64::MAX
/// Retry-After, 503 forever, a dripping body, connection resets, a
/// self-signed certificate, 410 Gone). A's guest pauses and every one of
/// them gets the notification; then B's guest pauses, and B's own endpoint
/// has it within 1 s of the firing. The agent is still alive and never
/// panicked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libvirtd_hostile_endpoints_of_one_project_delay_no_other_project() {
    use wd_e2e::hostile::{Behaviour, Hostile};
    let _serial = SERIAL.lock().await;
    let Some(_libvirtd) = wd_testkit::libvirtd() else {
        return;
    };
    let Some(assets) = wd_testkit::guest::assets() else {
        return;
    };
    let receiver = Receiver::start_with(OPERATOR_SECRET, &[(PROJECT_B, SECRET_B)])
        .await
        .unwrap();
    let mut hostiles = Vec::new();
    for b in Behaviour::ALL {
        hostiles.push(Hostile::start(b).await.unwrap());
    }
    let dir = Scratch::new("wd-e2e-hostile");
    let project_a = uuid::Uuid::new_v4().simple().to_string();
    let project_b = uuid::Uuid::new_v4().simple().to_string();
    let mut text = format!(
        "host = \"{HOST}\"\nnotify = [\"{ops}\"]\nspool = \"{spool}\"\nwait = true\n\n\
         [[webhook.projects]]\nproject = \"{project_b}\"\nurl = \"{url_b}\"\nsecrets = [\"{SECRET_B}\"]\n",
        ops = receiver.url(OPS),
        spool = dir.0.join("spool").display(),
        url_b = receiver.url(PROJECT_B),
    );
    for h in &hostiles {
        text.push_str(&format!(
            "\n[[webhook.projects]]\nproject = \"{project_a}\"\nurl = \"{}\"\nsecrets = [\"{SECRET_A}\"]\n",
            h.url()
        ));
    }
    let config = dir.0.join("wd.toml");
    std::fs::write(&config, text).unwrap();
    // It holds secrets: the agent refuses it readable by others.
    std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let mut agent =
        AgentProcess::start(&config, OPERATOR_SECRET, &dir.0.join("agent.log")).unwrap();
    agent.wait_ready(Duration::from_secs(60)).await.unwrap();

    let spec = |project: &str, tag: &str| {
        let name = wd_testkit::unique_name(&format!("wd-e2e-hostile-{tag}"));
        GuestSpec::new(&name, "pause").with_nova(NovaOwner {
            display_name: format!("web-{tag}"),
            flavor: "m1.tiny".into(),
            user_id: format!("user-{tag}"),
            project_id: project.to_owned(),
        })
    };
    let guest_a = start(spec(&project_a, "a"), &assets);
    let got = receiver
        .wait_for(Duration::from_secs(60), |all| {
            !of(all, OPS, &guest_a).is_empty()
        })
        .await;
    assert!(
        !of(&got, OPS, &guest_a).is_empty(),
        "A's pause reached the operator; log:\n{}",
        agent.log_text()
    );
    // Every hostile endpoint has been tried (except the TLS one, which is
    // counted by openssl, not by us).
    for h in hostiles.iter().filter(|h| h.behaviour != Behaviour::BadTls) {
        let t0 = Instant::now();
        while h.connections() == 0 && t0.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(h.connections() > 0, "{:?} was never tried", h.behaviour);
    }

    let guest_b = start(spec(&project_b, "b"), &assets);
    let mut arrived = None;
    let t0 = Instant::now();
    while arrived.is_none() && t0.elapsed() < Duration::from_secs(60) {
        let got = receiver
            .wait_for(Duration::from_millis(20), |all| {
                !of(all, PROJECT_B, &guest_b).is_empty()
            })
            .await;
        if let Some(r) = of(&got, PROJECT_B, &guest_b).first() {
            arrived = Some((std::time::SystemTime::now(), r.clone()));
        }
    }
    let (at, r) = arrived.expect("B's pause reached B's endpoint");
    let n = wd_notify::Notification::from_json(&r.data().to_string()).unwrap();
    let fired = std::time::SystemTime::from(n.fired_at);
    let took = at.duration_since(fired).unwrap_or_default();
    eprintln!("project B notified {took:?} after its firing");
    assert!(took < Duration::from_secs(1), "project B waited {took:?}");
    check_notification(&r, &guest_b, "pause", false);
    assert!(
        of(&receiver.accepted(), PROJECT_B, &guest_a).is_empty(),
        "A's event never reaches B"
    );

    assert_eq!(
        agent.log_count(&["panicked"]),
        0,
        "log:\n{}",
        agent.log_text()
    );
    assert!(
        agent.log_count(&["delivery attempt failed", "certificate"]) > 0,
        "the TLS failure's cause is logged; log:\n{}",
        agent.log_text()
    );
    let code = agent.terminate(Duration::from_secs(10)).unwrap();
    assert_eq!(code, 0, "the agent was alive and stops cleanly");
}
