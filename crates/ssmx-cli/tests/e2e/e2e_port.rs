//! Port forwarding end to end: `ssmx port-forward` and `ssmx ssh-proxy` through gateway and agent
//! to real TCP servers, with many connections at once.

use std::io::{ErrorKind, Read, Write};
use std::process::Stdio;

use crate::common::{echo_roundtrip, ChildGuard, Stack};

/// Starts `ssmx port-forward` to `remote_port` on a local port it picks itself, and returns it
/// with that port, read from its "Port N opened" line (no port is freed and taken again).
fn port_forward(stack: &Stack, remote_port: u16) -> (ChildGuard, u16) {
    let mut child = ChildGuard(
        stack
            .ssmx()
            .args([
                "port-forward",
                &stack.instance_id,
                "--remote-port",
                &remote_port.to_string(),
                "--local-port",
                "0",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
        "port-forward",
    );
    let mut status = std::io::BufReader::new(child.0.stderr.take().unwrap());
    let line = crate::common::read_until(&mut status, " opened for sessionId");
    let port = line
        .rsplit("Port ")
        .next()
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"));
    // Keep reading what it prints, so it never blocks on a full pipe.
    std::thread::spawn(move || std::io::copy(&mut status, &mut std::io::sink()));
    (child, port)
}

/// Bytes read through the forward before the crash.
const BEFORE_CRASH: usize = 1024 * 1024;

/// Downloads through `ssmx port-forward` from a source that never stops, runs `crash` part way,
/// and insists that the local connection is reset, not ended as if the download were complete,
/// and that the client reports the failure.
fn download_cut_short_by(crash: fn(&mut Stack)) {
    let mut stack = Stack::start();
    let source = crate::common::endless_source();
    let (mut forward, local) = port_forward(&stack, source);
    let mut conn = crate::common::connect(local);
    conn.set_read_timeout(Some(crate::common::STEP_DEADLINE))
        .unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let mut received = 0;
    while received < BEFORE_CRASH {
        let n = conn.read(&mut buf).unwrap();
        assert!(n > 0, "the download ended after {received} bytes");
        received += n;
    }
    crash(&mut stack);
    let failure = loop {
        match conn.read(&mut buf) {
            Ok(0) => panic!(
                "the local connection ended normally after {received} bytes, as if complete\n{}",
                stack.logs()
            ),
            Ok(n) => received += n,
            Err(e) => break e,
        }
    };
    assert_eq!(failure.kind(), ErrorKind::ConnectionReset, "{failure}");
    let status = crate::common::wait_for(|| forward.0.try_wait().unwrap(), "port-forward to exit");
    assert_eq!(status.code(), Some(1), "{}", stack.logs());
}

#[test]
fn an_agent_crash_resets_the_forwarded_connection() {
    download_cut_short_by(Stack::kill_agent);
}

#[test]
fn a_gateway_crash_resets_the_forwarded_connection() {
    download_cut_short_by(Stack::kill_gateway);
}

#[test]
fn parallel_connections_through_one_forward_arrive_byte_exact() {
    let stack = Stack::start();
    let echo = crate::common::echo_server();
    let (_forward, local) = port_forward(&stack, echo);
    crate::common::connect(local);

    let workers: Vec<_> = (0..20)
        .map(|i| {
            std::thread::spawn(move || {
                let data = crate::common::pattern(256 * 1024 + i * 1000, i as u64 + 1);
                let mut conn = crate::common::connect(local);
                let back = echo_roundtrip(&mut conn, &data);
                assert!(back == data, "stream {i} corrupted");
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
}

/// Sends SIGSTOP to a process and SIGCONT when dropped.
struct Stopped(u32);

impl Stopped {
    fn signal(pid: u32, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal} {pid}");
    }

    fn new(pid: u32) -> Stopped {
        Self::signal(pid, "-STOP");
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        Self::signal(self.0, "-CONT");
    }
}

/// An agent frozen (SIGSTOP) for seconds in the middle of an echo transfer picks up where it
/// was when it runs again: every byte comes back once, in order.
#[test]
fn a_frozen_agent_resumes_the_transfer_byte_exact() {
    const TOTAL: usize = 16 * 1024 * 1024;
    let stack = Stack::start();
    let echo = crate::common::echo_server();
    let (_forward, local) = port_forward(&stack, echo);
    let data = crate::common::pattern(TOTAL, 11);
    let mut conn = crate::common::connect(local);
    conn.set_read_timeout(Some(crate::common::STEP_DEADLINE))
        .unwrap();
    let mut writer = conn.try_clone().unwrap();
    let payload = data.clone();
    let sender = std::thread::spawn(move || writer.write_all(&payload));
    let mut back = vec![0u8; TOTAL];
    let frozen_at = TOTAL / 8;
    conn.read_exact(&mut back[..frozen_at]).unwrap();
    {
        let _frozen = Stopped::new(stack.agent_pid().unwrap());
        // The fault itself: the agent stays frozen this long.
        std::thread::sleep(std::time::Duration::from_secs(3));
    }
    conn.read_exact(&mut back[frozen_at..]).unwrap();
    sender.join().unwrap().unwrap();
    assert!(
        back == data,
        "the echo came back corrupted\n{}",
        stack.logs()
    );
}

#[test]
fn forward_to_a_port_that_refuses_keeps_the_listener_usable() {
    let stack = Stack::start();
    // Nothing listens on port 1 (tcpmux), and only root could make something listen there.
    let closed = 1;
    let echo = crate::common::echo_server();
    let local_bad = crate::common::free_port();
    let local_good = crate::common::free_port();
    let _forward = ChildGuard(
        stack
            .ssmx()
            .args([
                "port-forward",
                &stack.instance_id,
                "-L",
                &format!("{local_bad}:localhost:{closed}"),
                "-L",
            ])
            .arg(format!("127.0.0.1:{local_good}:localhost:{echo}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
        "port-forward",
    );
    // The refused destination closes our local connection instead of hanging it.
    let mut conn = crate::common::connect(local_bad);
    conn.set_read_timeout(Some(crate::common::STEP_DEADLINE))
        .unwrap();
    let mut buf = [0u8; 16];
    let n = std::io::Read::read(&mut conn, &mut buf).unwrap_or(0);
    assert_eq!(n, 0, "expected EOF from a refused destination");
    // The other forward of the same invocation still works.
    let mut conn = crate::common::connect(local_good);
    assert_eq!(echo_roundtrip(&mut conn, b"still alive"), b"still alive");
}

#[test]
fn ssh_proxy_pipes_bytes_to_the_remote_port() {
    let stack = Stack::start();
    let echo = crate::common::echo_server();
    let mut proxy = stack
        .ssmx()
        .args(["ssh-proxy", &stack.instance_id, "--port", &echo.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let data = crate::common::pattern(300_000, 7);
    let mut stdin = proxy.stdin.take().unwrap();
    let mut stdout = proxy.stdout.take().unwrap();
    let payload = data.clone();
    // stdin stays open until the echo is back: EOF on stdin ends the proxy, as ssh expects.
    let writer =
        std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &payload).map(|()| stdin));
    let mut back = vec![0u8; data.len()];
    std::io::Read::read_exact(&mut stdout, &mut back).unwrap();
    let _stdin = writer.join().unwrap().unwrap();
    assert!(back == data, "ssh-proxy stream corrupted");
    crate::common::terminate(&mut proxy);
}
