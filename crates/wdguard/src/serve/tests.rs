//! The server's bounds, from outside: real sockets on 127.0.0.1.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// One whole request, and the whole answer (the server closes).
fn get(stream: &mut (impl std::io::Read + std::io::Write), request: &str) -> String {
    stream.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn sixty_four_slow_clients_do_not_starve_a_scrape() {
    let rt = runtime();
    let (addr, task) = rt.block_on(start("127.0.0.1:0", Metrics::new())).unwrap();
    // 64 connections that each send half a request head and then nothing.
    let mut slow = Vec::new();
    for _ in 0..64 {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            .unwrap();
        slow.push(s);
    }
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let answer = get(&mut s, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("wd_build_info"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(1));
    // The slow clients were closed to make room, oldest first: at most
    // MAX_PER_CLIENT of them are still open.
    let mut open = 0;
    for mut s in slow {
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut buf = [0u8; 1];
        match s.read(&mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => open += 1,
            other => panic!("a slow client got {other:?}"),
        }
    }
    assert!(open <= MAX_PER_CLIENT, "{open} slow clients still open");
    task.abort();
}

#[test]
fn a_request_body_is_refused() {
    let rt = runtime();
    let (addr, task) = rt.block_on(start("127.0.0.1:0", Metrics::new())).unwrap();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let answer = get(
        &mut s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\nxx",
    );
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    task.abort();
}

#[test]
fn the_table_closes_the_oldest_unanswered_connection() {
    let t = Table::default();
    let a: Option<IpAddr> = Some([10, 0, 0, 1].into());
    let b: Option<IpAddr> = Some([10, 0, 0, 2].into());
    let first = t.admit(a).unwrap();
    for _ in 1..MAX_PER_CLIENT {
        t.admit(a).unwrap();
    }
    // The client's bound: its oldest pending connection is told to close.
    t.admit(a).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let closed = |n: &Arc<Notify>| {
        rt.block_on(async { tokio::time::timeout(Duration::from_millis(20), n.notified()).await })
            .is_ok()
    };
    assert!(closed(&first.2));
    let conns = t.conns.lock().unwrap();
    assert!(!conns.iter().any(|c| c.id == first.0));
    assert_eq!(conns.len(), MAX_PER_CLIENT);
    let second = conns[0].close.clone();
    drop(conns);
    assert!(!closed(&second));
    // Every connection of `a` answered: a new one of `a` is refused, `b`
    // is not.
    for c in t.conns.lock().unwrap().iter() {
        c.answered.store(true, Ordering::Relaxed);
    }
    assert!(t.admit(a).is_none());
    assert!(t.admit(b).is_some());
}

#[test]
fn the_local_socket_answers_status_and_is_closed_to_others() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("status.sock");
    let rt = runtime();
    let task = rt
        .block_on(async {
            let (control, mut requests) = tokio::sync::mpsc::channel::<ControlRequest>(1);
            // The agent's side: refuses every name, naming it.
            tokio::spawn(async move {
                while let Some(r) = requests.recv().await {
                    let _ = r
                        .reply
                        .send(Err(format!("{:?} `{}` refused", r.op, r.name)));
                }
            });
            start_unix(&path, Metrics::new(), control).await
        })
        .unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    let mut s = std::os::unix::net::UnixStream::connect(&path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let answer = get(&mut s, "GET /status HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"destinations\""), "{answer}");
    // A control request reaches the agent, its name percent-decoded.
    let mut s = std::os::unix::net::UnixStream::connect(&path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let answer = get(
        &mut s,
        "POST /queue/drop?name=a%20b HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 409"), "{answer}");
    assert!(answer.contains("Drop `a b` refused"), "{answer}");
    // Without a name, or with a body, or with GET: refused before the agent.
    for (request, code) in [
        ("POST /queue/drain HTTP/1.1\r\nHost: x\r\n\r\n", "400"),
        (
            "POST /queue/drain?name=x HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi",
            "413",
        ),
        ("GET /queue/drain?name=x HTTP/1.1\r\nHost: x\r\n\r\n", "405"),
    ] {
        let mut s = std::os::unix::net::UnixStream::connect(&path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let answer = get(&mut s, request);
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {code}")),
            "{request}: {answer}"
        );
    }
    task.abort();
}

#[test]
fn the_tcp_address_refuses_control_requests() {
    let rt = runtime();
    let (addr, task) = rt
        .block_on(async { start("127.0.0.1:0", Metrics::new()).await })
        .unwrap();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let answer = get(
        &mut s,
        "POST /queue/drop?name=x HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(answer.contains("local socket"), "{answer}");
    task.abort();
}

#[test]
fn addresses() {
    assert_eq!(parse_addr("9187").unwrap().to_string(), "127.0.0.1:9187");
    assert_eq!(parse_addr("0.0.0.0:1").unwrap().to_string(), "0.0.0.0:1");
    let err = parse_addr("localhost:x").unwrap_err().to_string();
    assert!(err.contains("allowed: IP:PORT"), "{err}");
}
