//! The test hosts, driven through `deploy/testbed` (network namespaces on a bridge, one `quiver server` each).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;

use anyhow::Context;
use tokio::process::Command;

/// A testbed of `hosts` hosts, named so as not to meet another one on the machine.
#[derive(Debug, Clone)]
pub struct Testbed {
    script: PathBuf,
    name: String,
    net: String,
    hosts: usize,
}

/// The script beside the sources, as laid out in the repository.
pub fn default_script() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/testbed"))
}

/// Why test hosts cannot be made on this machine, if they cannot: they need root and network namespaces.
pub fn unavailable() -> Option<String> {
    let uid = std::fs::read_to_string("/proc/self/status").ok().and_then(|s| {
        s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1).unwrap_or("").to_string())
    });
    if uid.as_deref() != Some("0") {
        return Some("not root (network namespaces and mounts need it)".into());
    }
    if !std::path::Path::new("/proc/self/ns/net").exists() {
        return Some("the kernel has no network namespaces".into());
    }
    None
}

impl Testbed {
    /// A testbed named `name` (its namespaces' prefix) on `net`.0/24 (three octets), driven by `script`.
    pub fn new(script: PathBuf, name: &str, net: &str, hosts: usize) -> Self {
        Self { script, name: name.into(), net: net.into(), hosts }
    }

    /// How many hosts it has.
    pub fn hosts(&self) -> usize {
        self.hosts
    }

    /// Host `i`'s address (1-based).
    pub fn ip(&self, i: usize) -> IpAddr {
        format!("{}.{}", self.net, 10 + i).parse().expect("an IPv4 address")
    }

    /// Host `i`'s PostgreSQL endpoint.
    pub fn pg(&self, i: usize) -> SocketAddr {
        SocketAddr::new(self.ip(i), 5433)
    }

    /// Host `i`'s Flight SQL endpoint.
    pub fn flight(&self, i: usize) -> SocketAddr {
        SocketAddr::new(self.ip(i), 50051)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.script);
        c.args(args)
            .env("TESTBED_NAME", &self.name)
            .env("TESTBED_NET", &self.net)
            // Memtables of 1 MiB flush every few seconds under the workload, so that a full disk is met by the
            // store's flushes and not only by its preallocated write-ahead log.
            .env("QUIVER_STORAGE__WRITE_BUFFER", "1MiB")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        c
    }

    /// Runs a verb of the script; its output on failure.
    pub async fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.command(args).output().await.with_context(|| format!("running {}", self.script.display()))?;
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        anyhow::ensure!(out.status.success(), "testbed {}: {}", args.join(" "), text.trim());
        Ok(text)
    }

    /// Creates the hosts and starts a node on each (`binary`: the `quiver` to run).
    pub async fn up(&self, binary: &std::path::Path) -> anyhow::Result<()> {
        let n = self.hosts.to_string();
        self.run(&["up", &n, "--binary", &binary.to_string_lossy()]).await.map(|_| ())
    }

    /// Stops every node and removes the hosts (also when they are half made).
    pub async fn down(&self) -> anyhow::Result<()> {
        self.run(&["down"]).await.map(|_| ())
    }

    /// The command line that runs `program` in the client namespace, which reaches every host.
    pub fn client_command(&self, program: &std::path::Path, args: &[String]) -> Command {
        let mut c = self.command(&["client"]);
        c.arg(program).args(args).stdin(Stdio::null());
        c
    }

    /// A verb on host `i` (kill, stop, cont, start, restart, isolate, heal, fill-disk, free-disk, wipe).
    pub async fn on(&self, verb: &str, i: usize) -> anyhow::Result<String> {
        self.run(&[verb, &i.to_string()]).await
    }

    /// Drops what host `from` sends to host `to`.
    pub async fn cut(&self, from: usize, to: usize) -> anyhow::Result<()> {
        self.run(&["cut", &from.to_string(), &to.to_string()]).await.map(|_| ())
    }

    /// Copies every host's node log into `dir` (as `host-I.log`).
    pub fn keep_logs(&self, dir: &std::path::Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        for i in 1..=self.hosts {
            std::fs::copy(format!("{}/{i}/log", self.dir()), dir.join(format!("host-{i}.log")))?;
        }
        Ok(())
    }

    fn dir(&self) -> String {
        std::env::var("TESTBED_DIR").unwrap_or_else(|_| format!("/tmp/{}", self.name))
    }

    /// The last lines host `i`'s node logged.
    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        let text = std::fs::read_to_string(format!("{}/{i}/log", self.dir())).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}
