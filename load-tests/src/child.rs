//! The `soak` scenario's server when no `--target` is given: this same binary started again as
//! a child process (`--serve-child DIR`), serving the real HTTP front on `DIR` and port 0.
//!
//! # Why a child and not the in-process server
//! The soak judges the *server's* memory. In one process the load generator's own memory would
//! be counted with it, and that grows by design: every peer keeps each seq it received (for the
//! coverage checks) and a yrs replica of every document. A child process is the same code with
//! the same defaults as `replicate-server` (the actors' `Config::new`,
//! `ServerSettings::default()` and its malloc tuning), measured alone through
//! `/proc/PID/status`.
//!
//! The child serves until its stdin closes, so it cannot outlive the parent.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use replicate_actors::Config;

/// How long a child may take to exit after its stdin closed before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(15);

/// A server running in a child process; stopped (and its directory removed) when dropped.
pub struct ChildServer {
    child: Child,
    /// Closing it tells the child to stop.
    stdin: Option<ChildStdin>,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    pub pid: u32,
    /// The child's sled directory.
    pub data: PathBuf,
    _dir: tempfile::TempDir,
}

impl ChildServer {
    /// Starts `current_exe() --serve-child DIR` on a new temporary directory, remembering op
    /// ids for `op_id_ttl`, and waits for the URL it prints once listening.
    ///
    /// # Errors
    /// If the binary cannot be started or exits before printing its URL.
    pub fn start(op_id_ttl: Duration) -> Result<ChildServer> {
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("data");
        let exe = std::env::current_exe().context("cannot find this binary to start a server")?;
        let mut child = Command::new(exe)
            .arg("--serve-child")
            .arg(&data)
            .arg("--child-op-id-ttl-secs")
            .arg(op_id_ttl.as_secs().max(1).to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start the server process")?;
        let stdin = child.stdin.take();
        let stdout = child
            .stdout
            .take()
            .context("no stdout from the server process")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let url = line.trim().to_string();
        if !url.starts_with("http://") {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the server process did not start (it printed {line:?})");
        }
        Ok(ChildServer {
            pid: child.id(),
            child,
            stdin,
            url,
            data,
            _dir: dir,
        })
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let until = Instant::now() + EXIT_GRACE;
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The child's side: serves anonymously on loopback port 0 with the default settings (op ids
/// remembered for `op_id_ttl`) and `dir` as its sled directory, prints its URL, and stops
/// when stdin closes.
///
/// # Errors
/// If the server cannot start.
pub fn serve(dir: &Path, op_id_ttl: Duration) -> Result<()> {
    replicate::malloc::tune(replicate::malloc::MallocTuning::default());
    let mut config = Config::new(dir);
    config.op_id_ttl = op_id_ttl;
    let running = replicate::spawn_in_thread(config, replicate::ServerSettings::default())
        .context("cannot start the server")?;
    let mut out = std::io::stdout();
    writeln!(out, "{}", running.base_url())?;
    out.flush()?;
    // Anything the parent writes is ignored; end of input (the parent closed it or exited)
    // is the signal to stop.
    let mut sink = [0u8; 64];
    while std::io::stdin().read(&mut sink).is_ok_and(|n| n > 0) {}
    running.stop();
    Ok(())
}
