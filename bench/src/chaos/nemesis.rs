//! The faults: a seeded schedule of kill -9, freeze, isolation, one-way cuts, full disks and clean restarts, each
//! held a while, then healed, with the time the cluster took to serve again through every host measured.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use super::testbed::Testbed;
use super::workload;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// kill -9 a node; healed by starting it again on its data.
    Kill,
    /// SIGSTOP a node (a process that stops answering, its sockets open); healed by SIGCONT.
    Freeze,
    /// Take a host's link down; healed by bringing it up.
    Isolate,
    /// Drop what one host sends to another (one direction only); healed by removing the rule.
    Cut,
    /// Fill a node's data disk; healed by freeing the space.
    DiskFull,
    /// Stop a node cleanly (SIGTERM) and start it again.
    Restart,
    /// Lose a node's disk (kill it and empty its data directory); healed by starting a new node on an empty disk
    /// under the same id and address, which joins anew: the replacement of a node whose disk is gone.
    Replace,
    /// Restart every node in turn, each serving again before the next stops: a rolling restart (an upgrade's
    /// procedure).
    RollingRestart,
    /// kill -9 the node leading the metadata group (whichever it is when the fault begins).
    KillLeader,
    /// Drain a node and remove it from the cluster (`quiver admin remove`, through another host: its copies move to
    /// the others first), stop it and lose its disk; healed by adding a new node on the host, which joins with an
    /// empty disk and must receive copies: the procedures to remove and to add a node.
    RemoveAdd,
    /// Delay a host's packets by 200 ms and lose 5 % of them (netem); skipped where the kernel has no netem.
    Delay,
    /// Restart a node with its wall clock 5 s off (ahead or behind, drawn): it must refuse to run, saying why;
    /// healed by starting it with the machine's clock. Half of them restart the metadata leader.
    ClockSkew,
    /// Upgrade every node in turn onto another binary (`--upgrade-to`: the next release; by default a copy of the
    /// running one), each serving again before the next stops: the upgrade procedure, under load, with the new
    /// binary opening the data directory the old one wrote.
    Upgrade,
}

impl FaultKind {
    /// Every kind.
    pub const ALL: [FaultKind; 13] = [
        Self::Kill,
        Self::Freeze,
        Self::Isolate,
        Self::Cut,
        Self::DiskFull,
        Self::Restart,
        Self::Replace,
        Self::RollingRestart,
        Self::KillLeader,
        Self::RemoveAdd,
        Self::Delay,
        Self::ClockSkew,
        Self::Upgrade,
    ];

    /// The name used in reports and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Kill => "kill",
            Self::Freeze => "freeze",
            Self::Isolate => "isolate",
            Self::Cut => "cut",
            Self::DiskFull => "disk-full",
            Self::Restart => "restart",
            Self::Replace => "replace",
            Self::RollingRestart => "rolling-restart",
            Self::KillLeader => "kill-leader",
            Self::RemoveAdd => "remove-add",
            Self::Delay => "delay",
            Self::ClockSkew => "clock-skew",
            Self::Upgrade => "upgrade",
        }
    }

    /// The kind of this name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A fault as scheduled.
#[derive(Debug, Clone)]
pub struct Planned {
    /// What.
    pub kind: FaultKind,
    /// On which host.
    pub host: usize,
    /// For a cut: the host that stops receiving; for a clock skew, odd: the clock runs ahead, even: behind.
    pub other: usize,
    /// The quiet time before it.
    pub quiet: Duration,
    /// How long it is held before healing.
    pub hold: Duration,
}

/// A fault as it happened.
#[derive(Debug, Clone)]
pub struct Applied {
    /// What was planned.
    pub plan: Planned,
    /// When it began, since the run began.
    pub at: Duration,
    /// The time from the start of healing until every host answered a read and the faulted host took a write;
    /// `None` if that did not happen within the bound.
    pub recovery: Option<Duration>,
    /// Whether the faulted node had stopped itself and was started again.
    pub restarted: bool,
    /// Why the fault was not applied, if it was not (a kernel without netem).
    pub skipped: Option<String>,
    /// What went wrong applying or healing it, if anything.
    pub error: Option<String>,
}

/// A schedule of `count` faults over `hosts` hosts: the kinds in `kinds` in turn (shuffled in rounds, so that every
/// kind comes up), targets and times drawn from `seed`.
pub fn schedule(seed: u64, kinds: &[FaultKind], count: usize, hosts: usize, hold: (u64, u64)) -> Vec<Planned> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x006e_656d_6573_6973);
    let mut out = Vec::with_capacity(count);
    let mut round: Vec<FaultKind> = Vec::new();
    while out.len() < count && !kinds.is_empty() {
        if round.is_empty() {
            round = kinds.to_vec();
            for i in (1..round.len()).rev() {
                round.swap(i, rng.gen_range(0..=i));
            }
        }
        let kind = round.pop().expect("a kind");
        let host = 1 + rng.gen_range(0..hosts);
        let other = if hosts > 1 { 1 + (host + rng.gen_range(0..hosts - 1)) % hosts } else { host };
        let quiet = Duration::from_millis(rng.gen_range(2_000..=5_000));
        let hold = Duration::from_millis(rng.gen_range(hold.0..=hold.1.max(hold.0)));
        out.push(Planned { kind, host, other, quiet, hold });
    }
    out
}

/// The longest the cluster may take to serve again after a fault is healed.
pub const RECOVERY_BOUND: Duration = Duration::from_secs(90);

/// Applies the schedule, one fault at a time, while the workload runs; an upgrade installs `upgrade_to`.
pub async fn run(
    bed: &Testbed,
    history: &super::history::History,
    plan: Vec<Planned>,
    upgrade_to: Option<&Path>,
) -> Vec<Applied> {
    let mut out = Vec::with_capacity(plan.len());
    for p in plan {
        tokio::time::sleep(p.quiet).await;
        let at = history.now();
        let what = if p.kind == FaultKind::KillLeader { "the metadata leader".to_string() } else { target(&p) };
        println!("{:7.1} s  {} {what}", at.as_secs_f64(), p.kind);
        let mut p = p;
        let mut error = None;
        match apply(bed, &mut p, history, upgrade_to).await {
            Ok(()) => {}
            Err(e) if e.to_string().contains(NO_NETEM) => {
                println!("           skipped: {NO_NETEM}");
                let skipped = Some(NO_NETEM.to_string());
                out.push(Applied { plan: p, at, recovery: None, restarted: false, skipped, error: None });
                continue;
            }
            Err(e) => error = Some(format!("applying: {e:#}")),
        }
        let mut restarted = false;
        tokio::time::sleep(p.hold).await;
        let healing = tokio::time::Instant::now();
        if let Err(e) = heal(bed, &p).await {
            error.get_or_insert(format!("healing: {e:#}"));
        }
        // A node that stopped itself under the fault is started again, as its supervisor would.
        match bed.on("revive", p.host).await {
            Ok(said) if !said.trim().is_empty() => {
                println!("           host {}'s node had exited under the fault; started again", p.host);
                restarted = true;
            }
            Ok(_) => {}
            Err(e) => {
                error.get_or_insert(format!("starting it again: {e:#}"));
            }
        }
        let mut recovery = serving_again(bed, p.host, history).await.then(|| healing.elapsed());
        if p.kind == FaultKind::RemoveAdd && recovery.is_some() {
            // The node added must receive copies (rebalancing), within the same bound.
            recovery = receives_copies(bed, p.host, healing).await.then(|| healing.elapsed());
            if recovery.is_none() {
                error.get_or_insert(format!("the node added on host {} received no shard copy", p.host));
            }
        }
        match recovery {
            Some(r) => {
                println!("{:7.1} s  healed; serving again after {:.1} s", history.now().as_secs_f64(), r.as_secs_f64())
            }
            None => println!(
                "{:7.1} s  healed; NOT serving again within {} s",
                history.now().as_secs_f64(),
                RECOVERY_BOUND.as_secs()
            ),
        }
        if let Some(e) = &error {
            println!("           {e}");
        }
        out.push(Applied { plan: p, at, recovery, restarted, skipped: None, error });
    }
    out
}

/// Where a fault applies, in words.
pub fn target(p: &Planned) -> String {
    match p.kind {
        FaultKind::Cut => format!("host {} -> host {}", p.host, p.other),
        FaultKind::RollingRestart | FaultKind::Upgrade => "every host".to_string(),
        FaultKind::KillLeader => format!("the metadata leader (host {})", p.host),
        FaultKind::RemoveAdd => format!("host {} (removed through host {})", p.host, p.other),
        FaultKind::ClockSkew => format!("host {} (its clock {:+} s off)", p.host, skew_seconds(p)),
        _ => format!("host {}", p.host),
    }
}

/// How far a clock-skew fault sets the node's clock, in seconds: ten times `[cluster] max_clock_skew`'s default.
fn skew_seconds(p: &Planned) -> i64 {
    if p.other % 2 == 1 { 5 } else { -5 }
}

/// What `deploy/testbed delay` says where the kernel has no netem.
const NO_NETEM: &str = "this kernel has no netem";

/// Applies a fault; a fault aimed at whichever node leads the metadata group records that node's host in `p`.
async fn apply(
    bed: &Testbed,
    p: &mut Planned,
    history: &super::history::History,
    upgrade_to: Option<&Path>,
) -> anyhow::Result<()> {
    match p.kind {
        FaultKind::Kill => bed.on("kill", p.host).await.map(|_| ()),
        FaultKind::Freeze => bed.on("stop", p.host).await.map(|_| ()),
        FaultKind::Isolate => bed.on("isolate", p.host).await.map(|_| ()),
        FaultKind::Cut => bed.cut(p.host, p.other).await,
        FaultKind::DiskFull => bed.on("fill-disk", p.host).await.map(|_| ()),
        FaultKind::Restart => bed.on("restart", p.host).await.map(|_| ()),
        FaultKind::Replace => bed.on("wipe", p.host).await.map(|_| ()),
        FaultKind::RollingRestart => {
            for i in 1..=bed.hosts() {
                bed.on("restart", i).await?;
                anyhow::ensure!(serving_again(bed, i, history).await, "host {i} did not serve again after its restart");
            }
            Ok(())
        }
        FaultKind::Upgrade => {
            let binary = upgrade_to.ok_or_else(|| anyhow::anyhow!("no binary to upgrade to (--upgrade-to)"))?;
            let binary = binary.to_string_lossy();
            for i in 1..=bed.hosts() {
                bed.run(&["upgrade", &i.to_string(), &binary]).await?;
                anyhow::ensure!(serving_again(bed, i, history).await, "host {i} did not serve again after its upgrade");
            }
            println!("           every host runs {binary}");
            Ok(())
        }
        FaultKind::KillLeader => {
            p.host = metadata_leader(bed).await?;
            println!("           the metadata group is led from host {}", p.host);
            bed.on("kill", p.host).await.map(|_| ())
        }
        FaultKind::RemoveAdd => {
            let (host, via) = (p.host.to_string(), p.other.to_string());
            bed.run(&["admin", &via, "remove", &host, "--timeout", "120s"]).await?;
            bed.on("term", p.host).await?;
            bed.on("wipe", p.host).await.map(|_| ())
        }
        FaultKind::Delay => bed.run(&["delay", &p.host.to_string(), "200", "5"]).await.map(|_| ()),
        FaultKind::ClockSkew => {
            if p.host.is_multiple_of(2) {
                // Drawn on an even host, it restarts the metadata leader instead. Restarted within its followers'
                // lease, the leader resumes leading at once (openraft keeps its committed vote), so it must find
                // its clock off by its members' heartbeats, not by a leader's.
                p.host = metadata_leader(bed).await?;
                println!("           on the metadata leader, host {}", p.host);
            }
            let offset = skew_seconds(p);
            let said = bed.run(&["skew", &p.host.to_string(), &offset.to_string()]).await?;
            println!("           {}", said.trim());
            anyhow::ensure!(
                said.contains("max_clock_skew"),
                "host {}'s node started with its clock {offset} s off did not refuse for its clock: {}",
                p.host,
                said.trim()
            );
            Ok(())
        }
    }
}

async fn heal(bed: &Testbed, p: &Planned) -> anyhow::Result<()> {
    match p.kind {
        FaultKind::Kill | FaultKind::KillLeader | FaultKind::Replace | FaultKind::RemoveAdd | FaultKind::ClockSkew => {
            bed.on("start", p.host).await.map(|_| ())
        }
        FaultKind::Freeze => bed.on("cont", p.host).await.map(|_| ()),
        FaultKind::Isolate | FaultKind::Cut | FaultKind::Delay => bed.on("heal", p.host).await.map(|_| ()),
        FaultKind::DiskFull => bed.on("free-disk", p.host).await.map(|_| ()),
        FaultKind::Restart | FaultKind::RollingRestart | FaultKind::Upgrade => Ok(()),
    }
}

/// Waits until node `host` holds a shard copy, as host `host` says; false past [`RECOVERY_BOUND`] from `since`.
async fn receives_copies(bed: &Testbed, host: usize, since: tokio::time::Instant) -> bool {
    while since.elapsed() < RECOVERY_BOUND {
        if matches!(workload::copies_on(bed.pg(host), host as u64).await, Ok(n) if n > 0) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    false
}

/// The host whose node leads the metadata group, as the first host that answers says (host `i` runs node `i`).
async fn metadata_leader(bed: &Testbed) -> anyhow::Result<usize> {
    let mut last = String::new();
    for i in 1..=bed.hosts() {
        match workload::metadata_leader(bed.pg(i)).await {
            Ok(Some(id)) if (1..=bed.hosts()).contains(&(id as usize)) => return Ok(id as usize),
            Ok(other) => last = format!("host {i} named no leader among the hosts ({other:?})"),
            Err(e) => last = format!("host {i}: {e}"),
        }
    }
    anyhow::bail!("no host named the metadata leader: {last}")
}

/// Waits until every host answers a count and `host` takes a write; false past [`RECOVERY_BOUND`]. Meanwhile a node
/// that stopped itself is started again, as its supervisor would (systemd's Restart=on-failure).
pub async fn serving_again(bed: &Testbed, host: usize, history: &super::history::History) -> bool {
    let until = tokio::time::Instant::now() + RECOVERY_BOUND;
    while tokio::time::Instant::now() < until {
        for i in 1..=bed.hosts() {
            if let Ok(said) = bed.on("revive", i).await
                && !said.trim().is_empty()
            {
                println!("{:7.1} s  host {i}'s node had exited; started again", history.now().as_secs_f64());
            }
        }
        let reads = futures::future::join_all((1..=bed.hosts()).map(|i| workload::count(bed.pg(i))));
        let (reads, write) = tokio::join!(
            tokio::time::timeout(Duration::from_secs(5), reads),
            tokio::time::timeout(
                Duration::from_secs(5),
                workload::probe_write(bed.pg(host), host, history.now().as_millis() as u64)
            )
        );
        let reads_ok = reads.is_ok_and(|r| r.iter().all(Result::is_ok));
        if reads_ok && matches!(write, Ok(Ok(()))) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schedule_follows_its_seed_and_brings_up_every_kind() {
        let two_rounds = 2 * FaultKind::ALL.len();
        let a = schedule(3, &FaultKind::ALL, two_rounds, 3, (5_000, 9_000));
        let b = schedule(3, &FaultKind::ALL, two_rounds, 3, (5_000, 9_000));
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
        for kind in FaultKind::ALL {
            assert_eq!(a.iter().filter(|p| p.kind == kind).count(), 2, "{kind} twice in two rounds");
        }
        for p in &a {
            assert!((1..=3).contains(&p.host) && (1..=3).contains(&p.other) && p.host != p.other);
            assert!(p.hold >= Duration::from_secs(5) && p.hold <= Duration::from_secs(9));
        }
        assert_ne!(format!("{a:?}"), format!("{:?}", schedule(4, &FaultKind::ALL, two_rounds, 3, (5_000, 9_000))));
    }
}
