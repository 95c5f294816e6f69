//! One `palaver node` process.
//!
//! Its standard input is a pipe this struct holds and it runs with
//! `--exit-with-parent`, so it also stops when the test binary exits
//! without dropping it (a shared cluster in a static). Its stdout and
//! stderr are read by two threads: the ready line
//! (`palaver_node::ready`) gives its client address, and the last lines
//! are kept and printed when it is dropped, which libtest shows only for a
//! failed test; `PALAVER_TEST_LOG=1` streams them live instead. It is
//! SIGKILLed when dropped.
//!
//! This module knows processes, signals and pipes; not cluster files (it is
//! handed one) nor clients.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::BufRead;
use std::io::BufReader;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::path::PathBuf;
use std::process::Child;
use std::process::ChildStdin;
use std::process::Command;
use std::process::ExitStatus;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use anyhow::Result;
use anyhow::bail;

/// How long a node may take to print its ready line, unless told otherwise.
pub const READY: Duration = Duration::from_secs(60);
/// Lines of output kept for the failure report.
const KEEP_LINES: usize = 400;
/// The environment variable that streams every node's output live.
pub const LIVE_ENV: &str = "PALAVER_TEST_LOG";
/// Pause between two looks at a starting or stopping process.
const POLL: Duration = Duration::from_millis(25);

/// The `palaver` executable: `CARGO_BIN_EXE_palaver` (set by cargo for
/// integration tests and benches), else `palaver` next to the folder of the
/// running test binary (`target/<profile>/deps/..`).
pub fn palaver_exe() -> PathBuf {
    if let Some(path) = std::env::var_os("CARGO_BIN_EXE_palaver") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let profile = exe.parent().and_then(Path::parent).unwrap_or(Path::new("."));
    profile.join(format!("palaver{}", std::env::consts::EXE_SUFFIX))
}

/// What a node process is started as.
#[derive(Clone, Debug)]
pub enum Role {
    /// Node `id` of the cluster file `file`, on the file's addresses.
    Member {
        /// The cluster file.
        file: PathBuf,
        /// The node's id.
        id: u64,
    },
    /// A one-node server on a free port (`--listen 127.0.0.1:0`), keeping
    /// its files in `data_dir`, with the limits and security of `file`.
    Alone {
        /// The config file.
        file: PathBuf,
        /// The node's folder.
        data_dir: PathBuf,
    },
}

/// How node processes are run (beyond their role).
#[derive(Clone, Debug, Default)]
pub struct Launch {
    /// Extra environment variables.
    pub env: Vec<(OsString, OsString)>,
    /// A program the node runs under, with its arguments (`taskset -c 0`);
    /// it must exec the node, so the process id stays the node's.
    pub wrapper: Vec<OsString>,
    /// A folder where every line of each node's output is written too, to
    /// `<name>.log`.
    pub log_dir: Option<PathBuf>,
    /// Keep the last lines to oneself when dropped (benches: no test
    /// harness hides them).
    pub quiet: bool,
    /// How long a node may take to print its ready line (default [`READY`]).
    pub ready_within: Option<Duration>,
}

impl Launch {
    /// How long a node may take to print its ready line.
    pub fn ready_within(&self) -> Duration {
        self.ready_within.unwrap_or(READY)
    }
}

/// Whether a node process has printed its ready line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// It printed its ready line with this client address.
    Ready(SocketAddr),
    /// It exited without printing it.
    Exited(String),
    /// Still running, not ready.
    NotYet,
}

type Lines = Arc<Mutex<VecDeque<String>>>;

/// One running (or stopped) `palaver node` process.
pub struct NodeProcess {
    name: String,
    role: Role,
    launch: Launch,
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    ready: Arc<Mutex<Option<SocketAddr>>>,
    logs: Lines,
    readers: Vec<JoinHandle<()>>,
}

impl NodeProcess {
    /// Starts a node as `role`, without waiting for it; `name` marks its
    /// output (`node-2`).
    pub fn spawn(name: &str, role: Role, launch: &Launch) -> Result<NodeProcess> {
        let mut p = NodeProcess {
            name: name.to_string(),
            role,
            launch: launch.clone(),
            child: None,
            stdin: None,
            ready: Arc::new(Mutex::new(None)),
            logs: Arc::new(Mutex::new(VecDeque::new())),
            readers: Vec::new(),
        };
        if let Some(dir) = &p.launch.log_dir {
            // A log of this run only: a restart appends to it.
            let _ = std::fs::remove_file(dir.join(format!("{}.log", p.name)));
        }
        p.start()?;
        Ok(p)
    }

    fn command(&self) -> Command {
        let mut cmd = match self.launch.wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(palaver_exe());
                c
            }
            None => Command::new(palaver_exe()),
        };
        cmd.arg("node");
        match &self.role {
            Role::Member { file, id } => cmd.arg("--config").arg(file).arg("--id").arg(id.to_string()),
            Role::Alone { file, data_dir } => {
                cmd.arg("--listen").arg("127.0.0.1:0").arg("--data-dir").arg(data_dir).arg("--config").arg(file)
            }
        };
        cmd.arg("--exit-with-parent").envs(self.launch.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    fn start(&mut self) -> Result<()> {
        if let Ok(mut r) = self.ready.lock() {
            *r = None;
        }
        let mut child = self
            .command()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawning {} ({})", self.name, palaver_exe().display()))?;
        let file = match &self.launch.log_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
                let path = dir.join(format!("{}.log", self.name));
                let f = std::fs::OpenOptions::new().create(true).append(true).open(&path);
                Some(Arc::new(Mutex::new(f.with_context(|| format!("opening {}", path.display()))?)))
            }
            None => None,
        };
        let out = Output {
            name: self.name.clone(),
            logs: self.logs.clone(),
            file,
            live: std::env::var_os(LIVE_ENV).is_some(),
        };
        if let Some(stdout) = child.stdout.take() {
            let (out, ready) = (out.clone(), self.ready.clone());
            self.readers.push(std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(std::io::Result::ok) {
                    if let Some(r) = palaver_node::ready::parse_ready_line(&line)
                        && let Ok(mut ready) = ready.lock()
                    {
                        *ready = Some(r.addr);
                    }
                    out.line("stdout", line);
                }
            }));
        }
        if let Some(stderr) = child.stderr.take() {
            self.readers.push(std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(std::io::Result::ok) {
                    out.line("", line);
                }
            }));
        }
        self.stdin = child.stdin.take();
        self.child = Some(child);
        Ok(())
    }

    /// The name that marks its output.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The node id, for a cluster member.
    pub fn id(&self) -> Option<u64> {
        match self.role {
            Role::Member { id, .. } => Some(id),
            Role::Alone { .. } => None,
        }
    }

    /// The client address on its ready line, once printed (since the last start).
    pub fn addr(&self) -> Option<SocketAddr> {
        self.ready.lock().ok().and_then(|r| *r)
    }

    /// Ready, exited or neither, right now.
    pub fn readiness(&mut self) -> Readiness {
        if let Some(addr) = self.addr() {
            return Readiness::Ready(addr);
        }
        match self.child.as_mut().map(Child::try_wait) {
            None => Readiness::Exited("killed by the test kit".to_string()),
            Some(Ok(Some(status))) => {
                // Its last lines may still be in the pipes (the ready line
                // too): the readers end when the pipes do.
                self.join_readers();
                match self.addr() {
                    Some(addr) => Readiness::Ready(addr),
                    None => Readiness::Exited(status.to_string()),
                }
            }
            Some(Ok(None)) => Readiness::NotYet,
            Some(Err(e)) => Readiness::Exited(format!("cannot wait for it: {e}")),
        }
    }

    /// Waits (polling, bounded by `timeout`) until the node is ready or has exited.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Readiness {
        let start = Instant::now();
        loop {
            match self.readiness() {
                Readiness::NotYet if start.elapsed() < timeout => {}
                other => return other,
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits like [`NodeProcess::wait_ready`], as long as its [`Launch`]
    /// says; fails, with the node's last lines, unless it got ready.
    pub async fn ready(&mut self) -> Result<SocketAddr> {
        let timeout = self.launch.ready_within();
        match self.wait_ready(timeout).await {
            Readiness::Ready(addr) => Ok(addr),
            Readiness::Exited(status) => {
                bail!("{} exited ({status}) before its ready line; its output:\n{}", self.name, self.recent_logs())
            }
            Readiness::NotYet => {
                bail!("{} printed no ready line within {timeout:?}; its output:\n{}", self.name, self.recent_logs())
            }
        }
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILLs the process and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.stdin = None;
        // The pipes close with the process: its readers end.
        self.join_readers();
    }

    /// Asks the node to stop (SIGTERM: it hands its rooms over first), without waiting.
    pub fn stop(&self) -> Result<()> {
        self.signal("TERM")
    }

    /// Freezes the process (SIGSTOP).
    pub fn pause(&self) -> Result<()> {
        self.signal("STOP")
    }

    /// Lets a frozen process go on (SIGCONT).
    pub fn resume(&self) -> Result<()> {
        self.signal("CONT")
    }

    /// Sends `signal` (a `kill -s` name: `TERM`, `STOP`, `CONT`, ...) to the process.
    pub fn signal(&self, signal: &str) -> Result<()> {
        let pid = self.pid().with_context(|| format!("{} is not running", self.name))?;
        self.note(&format!("SIG{signal}"));
        let status = Command::new("kill")
            .arg("-s")
            .arg(signal)
            .arg(pid.to_string())
            .stdin(Stdio::null())
            .status()
            .context("running kill")?;
        anyhow::ensure!(status.success(), "kill -s {signal} {pid} ({}) failed: {status}", self.name);
        Ok(())
    }

    /// Waits (polling, bounded by `timeout`) for the process to exit on its
    /// own; answers its exit status, or `None` if it still runs.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let start = Instant::now();
        loop {
            let Some(child) = self.child.as_mut() else { bail!("{} is not running", self.name) };
            if let Some(status) = child.try_wait().context("waiting for the node")? {
                self.child = None;
                self.stdin = None;
                self.join_readers();
                return Ok(Some(status));
            }
            if start.elapsed() > timeout {
                return Ok(None);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Kills the process (if running) and starts it again as before.
    pub fn relaunch(&mut self) -> Result<()> {
        self.kill();
        self.note("restarting the node");
        self.start()
    }

    /// The last lines the node printed.
    pub fn recent_logs(&self) -> String {
        match self.logs.lock() {
            Ok(l) => l.iter().cloned().collect::<Vec<_>>().join("\n"),
            Err(_) => String::new(),
        }
    }

    /// Whether any kept line contains `text`.
    pub fn logged(&self, text: &str) -> bool {
        self.logs.lock().map(|l| l.iter().any(|line| line.contains(text))).unwrap_or(false)
    }

    /// Adds a marker line to the kept output.
    pub fn note(&self, line: &str) {
        push_line(&self.logs, format!("---- test kit: {line} ----"));
    }

    fn join_readers(&mut self) {
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill();
        // libtest captures this and shows it only for a failed test (a
        // panic or an `Err` return alike).
        if !self.launch.quiet && std::env::var_os(LIVE_ENV).is_none() {
            eprintln!("---- last lines of {}'s output ----\n{}\n----", self.name, self.recent_logs());
        }
    }
}

/// Where a reader thread puts each line.
#[derive(Clone)]
struct Output {
    name: String,
    logs: Lines,
    file: Option<Arc<Mutex<std::fs::File>>>,
    live: bool,
}

impl Output {
    fn line(&self, stream: &str, line: String) {
        let line = if stream.is_empty() { line } else { format!("[{stream}] {line}") };
        if self.live {
            eprintln!("[{}] {line}", self.name);
        }
        if let Some(file) = &self.file
            && let Ok(mut f) = file.lock()
        {
            let _ = writeln!(f, "{line}");
        }
        push_line(&self.logs, line);
    }
}

fn push_line(logs: &Mutex<VecDeque<String>>, line: String) {
    if let Ok(mut l) = logs.lock() {
        if l.len() >= KEEP_LINES {
            l.pop_front();
        }
        l.push_back(line);
    }
}

/// The sockets process `pid` has open (from `/proc/PID/fd`): what a test
/// of held and released connections counts. Other descriptors are left
/// out, since a node opens and closes files of its own (its search index's
/// segments as it commits).
pub fn socket_count(pid: u32) -> anyhow::Result<usize> {
    use anyhow::Context;
    let dir = std::fs::read_dir(format!("/proc/{pid}/fd")).with_context(|| format!("listing /proc/{pid}/fd"))?;
    Ok(dir
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("socket:"))
        .count())
}
