//! The `sluice` binary under test, as a child process.
#![allow(dead_code)]
use super::process;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

/// Bytes of the worker log printed when a test fails.
const LOG_ON_FAILURE: u64 = 256 << 10;

/// `sluice run --config <file>` with a config the test passes. stdout and
/// stderr go to `worker.log` in the worker's temp dir; the log is printed
/// when the test panics. Dropping the worker kills it.
///
/// The child's environment is the test's, minus every `SLUICE*` variable
/// (so a developer's settings cannot leak into config overrides), plus
/// `RUST_BACKTRACE=1`, `NO_COLOR=1` (plain log text to search) and the
/// overrides given to [`Worker::spawn_with_env`].
pub struct Worker {
    pid: u32,
    child: Child,
    status: Option<ExitStatus>,
    dir: tempfile::TempDir,
}

impl Worker {
    pub fn spawn(config_toml: &str) -> Worker {
        Self::spawn_with_env(config_toml, &[])
    }

    pub fn spawn_with_env(config_toml: &str, env: &[(&str, &str)]) -> Worker {
        Self::spawn_args(config_toml, &[], env)
    }

    /// `sluice run --config <file> <extra args...>` with env overrides.
    pub fn spawn_args(config_toml: &str, extra_args: &[&str], env: &[(&str, &str)]) -> Worker {
        Self::spawn_command("run", config_toml, extra_args, env)
    }

    /// `sluice <command> --config <file> <extra args...>` (e.g. `console`).
    pub fn spawn_command(
        command: &str,
        config_toml: &str,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> Worker {
        let bin = Path::new(env!("CARGO_BIN_EXE_sluice"));
        Self::spawn_binary(bin, command, config_toml, extra_args, env)
    }

    /// Like [`Worker::spawn_command`] with another build of `sluice` (a
    /// bench comparing it with the current one in the same sitting).
    pub fn spawn_binary(
        bin: &Path,
        command: &str,
        config_toml: &str,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> Worker {
        let dir = tempfile::Builder::new()
            .prefix("sluice-it-worker-")
            .tempdir()
            .expect("create worker temp dir");
        let config = dir.path().join("sluice.toml");
        std::fs::write(&config, config_toml).expect("write worker config");
        let log = dir.path().join("worker.log");
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("open worker log");
        let err = out.try_clone().expect("dup worker log");

        let mut cmd = Command::new(bin);
        cmd.arg(command)
            .arg("--config")
            .arg(&config)
            .args(extra_args)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        for (key, _) in std::env::vars_os() {
            if key
                .to_string_lossy()
                .to_ascii_uppercase()
                .starts_with("SLUICE")
            {
                cmd.env_remove(&key);
            }
        }
        cmd.env("RUST_BACKTRACE", "1").env("NO_COLOR", "1");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = process::spawn(cmd).expect("spawn sluice binary");
        Worker {
            pid: child.id(),
            child,
            status: None,
            dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("sluice.toml")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("worker.log")
    }

    /// Everything the worker wrote to stdout and stderr so far.
    pub fn log_contents(&self) -> String {
        std::fs::read(self.log_path())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Its consumer name, from the `starting worker consumer=…` log line
    /// (a consumer is in the group only once it has read or claimed).
    pub fn consumer(&self) -> Option<String> {
        let log = self.log_contents();
        let line = log.lines().find(|l| l.contains("starting worker"))?;
        let name = line.split("consumer=").nth(1)?.split_whitespace().next()?;
        Some(name.to_string())
    }

    /// Its exit status if it has exited (non-blocking).
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    pub fn is_running(&mut self) -> bool {
        self.try_exit().is_none()
    }

    /// SIGKILL and reap: a crash at an arbitrary instant.
    pub fn kill(&mut self) {
        if self.status.is_none() {
            self.status = process::kill_and_reap(&mut self.child);
        }
    }

    /// SIGTERM (graceful shutdown); does not wait — see [`Worker::wait_exit`].
    pub fn term(&self) {
        if self.status.is_none() {
            process::signal(self.pid, libc::SIGTERM);
        }
    }

    /// Sends any signal, e.g. `libc::SIGSTOP` / `libc::SIGCONT`.
    pub fn signal(&self, sig: libc::c_int) {
        if self.status.is_none() {
            process::signal(self.pid, sig);
        }
    }

    /// Waits up to `timeout` for the worker to exit; `None` if it is still running.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = process::wait_child(&mut self.child, timeout).await;
        }
        self.status
    }

    /// Peak resident set size in kB (`VmHWM`), while the process is alive.
    pub fn peak_rss_kb(&self) -> Option<u64> {
        process::proc_status_kb(self.pid, "VmHWM")
    }

    /// Current resident set size in kB (`VmRSS`), while the process is alive.
    pub fn rss_kb(&self) -> Option<u64> {
        process::proc_status_kb(self.pid, "VmRSS")
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "----- worker pid {} log ({}) -----\n{}\n----- end worker {} log -----",
                self.pid,
                self.log_path().display(),
                process::tail(&self.log_path(), LOG_ON_FAILURE),
                self.pid
            );
        }
    }
}
