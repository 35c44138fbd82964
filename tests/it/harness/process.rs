//! Child processes that die with the test binary.
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, not
//! the process. Test threads and tokio's blocking threads come and go, so all
//! children are forked by one spawner thread that lives as long as the test
//! binary; the signal then fires exactly when the test process dies (even by
//! SIGKILL). Drop impls kill children on the normal path.
#![allow(dead_code)]
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

type Job = (Command, mpsc::Sender<io::Result<Child>>);

fn spawner() -> &'static Mutex<mpsc::Sender<Job>> {
    static TX: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    TX.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("harness-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("start harness spawner thread");
        Mutex::new(tx)
    })
}

/// Spawns `cmd` so that the child gets SIGKILL when this process dies.
pub fn spawn(mut cmd: Command) -> io::Result<Child> {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs between fork and exec and only makes
    // async-signal-safe calls (prctl, getppid, _exit).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let (tx, rx) = mpsc::channel();
    spawner()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, tx))
        .expect("harness spawner thread is gone");
    rx.recv()
        .expect("harness spawner thread dropped the request")
}

/// Sends `sig` to `pid`; errors (already gone) are ignored.
pub fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: plain syscall.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// Polls the child until it exits or `timeout` passes.
pub async fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => {}
            Err(e) => panic!("waiting for pid {}: {e}", child.id()),
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// SIGKILL and reap (blocking, but SIGKILL makes it immediate).
pub fn kill_and_reap(child: &mut Child) -> Option<ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    let _ = child.kill();
    child.wait().ok()
}

/// SIGTERM, wait up to `grace`, then SIGKILL. Returns the exit status.
pub async fn terminate(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    signal(child.id(), libc::SIGTERM);
    match wait_child(child, grace).await {
        Some(status) => Some(status),
        None => {
            eprintln!(
                "harness: pid {} ignored SIGTERM for {grace:?}; killing it",
                child.id()
            );
            kill_and_reap(child)
        }
    }
}

/// The last `max` bytes of a file (lossy UTF-8), or a note why not.
pub fn tail(path: &Path, max: u64) -> String {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) => return format!("<cannot open {}: {e}>", path.display()),
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let mut out = String::new();
    if len > max {
        let _ = f.seek(SeekFrom::Start(len - max));
        out.push_str(&format!("<... first {} bytes cut ...>\n", len - max));
    }
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    out.push_str(&String::from_utf8_lossy(&buf));
    out
}

/// A value from `/proc/PID/status` in kB (e.g. `VmHWM`, `VmRSS`).
pub fn proc_status_kb(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Whether something accepts TCP connections on `127.0.0.1:port`.
pub async fn port_open(port: u16) -> bool {
    matches!(
        tokio::time::timeout(
            Duration::from_millis(500),
            tokio::net::TcpStream::connect(("127.0.0.1", port))
        )
        .await,
        Ok(Ok(_))
    )
}
