//! A PostgreSQL server for same-run references: Debian's PostgreSQL (`/usr/lib/postgresql/<version>/bin`, or
//! `initdb` and `postgres` on the PATH) initialised in a temporary directory and started on a loopback port with its
//! durable defaults (`fsync = on`, `synchronous_commit = on`), stopped when dropped.
//!
//! PostgreSQL refuses to run as root: when the bench runs as root, the server runs as the `postgres` system user
//! (the Debian package creates it), which is given the directory.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

/// A PostgreSQL server on a loopback port.
pub struct PostgresServer {
    child: Child,
    /// Its TCP port on 127.0.0.1.
    pub port: u16,
    /// `postgres --version`.
    pub version: String,
}

/// Returns the directory holding `initdb` and `postgres`: the newest Debian install, else the PATH's.
fn binaries() -> anyhow::Result<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin)| bin.join("initdb").exists())
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).find(|dir| dir.join("initdb").exists() && dir.join("postgres").exists()).context(
        "no PostgreSQL found (apt-get install -y postgresql, or put initdb and postgres on the PATH); \
         pass --no-postgres to skip the reference",
    )
}

/// The `postgres` user's ids when this process runs as root (PostgreSQL refuses to run as root), else `None`.
fn postgres_user() -> anyhow::Result<Option<(u32, u32)>> {
    let id = |args: &[&str]| -> anyhow::Result<u32> {
        let out = Command::new("id").args(args).output().context("run id")?;
        anyhow::ensure!(out.status.success(), "id {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
        Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
    };
    if id(&["-u"])? != 0 {
        return Ok(None);
    }
    let ids = (id(&["-u", "postgres"]), id(&["-g", "postgres"]));
    match ids {
        (Ok(uid), Ok(gid)) => Ok(Some((uid, gid))),
        _ => anyhow::bail!("running as root, PostgreSQL needs the postgres user (apt-get install -y postgresql)"),
    }
}

/// Runs `program`, as `user` (uid, gid) when given.
fn command(user: Option<(u32, u32)>, program: &Path) -> Command {
    use std::os::unix::process::CommandExt;
    let mut c = Command::new(program);
    if let Some((uid, gid)) = user {
        c.uid(uid).gid(gid);
    }
    c
}

impl PostgresServer {
    /// Initialises a cluster in `dir` (which must not exist) and starts it; returns once it accepts connections.
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        let bin = binaries()?;
        let user = postgres_user()?;
        std::fs::create_dir_all(dir)?;
        if user.is_some() {
            let status = Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir).status()?;
            anyhow::ensure!(status.success(), "chown {} to postgres failed", dir.display());
            // The user must be able to reach the directory through its parents (a temporary directory is 0700).
            let mut parent = dir.parent();
            while let Some(p) = parent {
                if p.starts_with(std::env::temp_dir()) && p != std::env::temp_dir() {
                    let _ = Command::new("chmod").arg("o+x").arg(p).status();
                }
                parent = p.parent();
            }
        }
        let data = dir.join("data");
        let out = command(user, &bin.join("initdb"))
            .args(["--auth=trust", "--username=postgres", "--encoding=UTF8", "--no-instructions", "-D"])
            .arg(&data)
            .output()
            .context("run initdb")?;
        anyhow::ensure!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        let version = command(None, &bin.join("postgres")).arg("--version").output()?;
        let version = String::from_utf8_lossy(&version.stdout).trim().to_string();
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = command(user, &bin.join("postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1", "-c"])
            .arg(format!("unix_socket_directories={}", dir.display()))
            .args(["-c", "max_connections=200", "-c", "shared_buffers=1GB"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start postgres")?;
        let mut server = PostgresServer { child, port, version };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                anyhow::bail!("postgres exited at start ({status})");
            }
            let ready = Command::new(bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q"])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return Ok(server);
            }
            anyhow::ensure!(Instant::now() < deadline, "postgres did not accept connections within a minute");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The libpq connection string of its `postgres` database.
    pub fn conninfo(&self) -> String {
        format!("host=127.0.0.1 port={} user=postgres dbname=postgres", self.port)
    }

    /// Connects a client.
    pub async fn client(&self) -> anyhow::Result<tokio_postgres::Client> {
        crate::latency::pg_connect(&self.conninfo()).await
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        // SIGINT is PostgreSQL's fast shutdown.
        let _ = Command::new("kill").args(["-INT", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
