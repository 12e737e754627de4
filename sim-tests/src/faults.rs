//! The faults both workloads inject, drawn from the seed: one at a time, every 0.3–2 virtual seconds, each lasting
//! 0.2–3 s (splits longer where a workload asks, [`Cluster::split_ms`]), until the fault phase ends. A workload describes its cluster through [`Cluster`]; what a fault does to a
//! member (kill it, lose its disk) is the workload's business, which faults happen when is this module's.

use std::time::Duration;

use madsim::net::NetSim;
use std::collections::BTreeMap;

use madsim::rand::{Rng, thread_rng};
use madsim::runtime::{Handle, NodeHandle};
use madsim::task::NodeId;
use madsim::time::{Instant, sleep};

/// The simulated hosts of a cluster's members and the run's trace, as both workloads keep them.
pub(crate) struct Hosts {
    /// The simulation.
    pub(crate) handle: Handle,
    /// Each member's host.
    pub(crate) nodes: BTreeMap<u64, NodeHandle>,
    /// When the run started (trace times are since then).
    pub(crate) started: Instant,
    /// One line per event: virtual milliseconds, then what happened.
    pub(crate) trace: Vec<String>,
    /// Invariants the fault loop saw broken (checked by the workload at the end).
    pub(crate) violations: Vec<String>,
}

impl Hosts {
    /// A cluster with no host yet, starting now.
    pub(crate) fn new(handle: Handle) -> Self {
        Hosts { handle, nodes: BTreeMap::new(), started: Instant::now(), trace: Vec::new(), violations: Vec::new() }
    }

    /// Records an event in the trace (and the log).
    pub(crate) fn note(&mut self, event: String) {
        let at = self.started.elapsed().as_millis();
        tracing::info!(at, "{event}");
        self.trace.push(format!("{at:>7} ms  {event}"));
    }
}

/// The members of a simulated cluster, as the fault loop sees them (ids `1..=n`).
pub(crate) trait Cluster {
    /// The hosts and the trace.
    fn hosts(&mut self) -> &mut Hosts;
    /// The member that leads the metadata group now, if a running one says it does.
    fn leader(&self) -> Option<u64>;
    /// The current Raft term of member `id`'s metadata replica, if it runs.
    fn term(&self, id: u64) -> Option<u64>;
    /// Kills member `id`; its disk loses its unsynced writes when the seed says so. Returns how many were lost.
    fn kill(&mut self, id: u64) -> usize;
    /// Asks another running member to remove the (dead) member `id` from the cluster; true when it was removed.
    async fn remove(&mut self, id: u64) -> bool;
    /// Gives member `id` a new, empty disk: the old one is lost with its machine.
    fn replace_disk(&mut self, id: u64);

    /// The member ids.
    fn members(&mut self) -> Vec<u64> {
        self.hosts().nodes.keys().copied().collect()
    }
    /// The simulated host of member `id`.
    fn host(&mut self, id: u64) -> NodeId {
        self.hosts().nodes[&id].id()
    }
    /// Starts member `id` again, on the disk it has.
    fn restart(&mut self, id: u64) {
        let hosts = self.hosts();
        hosts.handle.restart(hosts.nodes[&id].id());
    }
    /// Records an event in the run's trace.
    fn note(&mut self, event: String) {
        self.hosts().note(event);
    }
    /// How long a split of the members lasts, in virtual ms, when it is not the common 0.2–3 s: a workload whose
    /// clients reach both sides of a split and whose members fail over within it draws longer splits, so a side cut
    /// off from the metadata leader is asked to serve after the others moved on.
    fn split_ms(&self) -> Option<std::ops::Range<u64>> {
        None
    }
    /// Whether this isolation of a member cuts it off from the other members only, its clients still reaching it
    /// (for as long as a split lasts), rather than from everyone: a workload whose clients run on hosts of their own
    /// says so now and then.
    fn isolate_from_peers_only(&self) -> bool {
        false
    }
    /// Whether the faults fill disks (a workload that asks for them).
    fn fills_disks(&self) -> bool {
        false
    }
    /// Fills member `id`'s disk (`true`: its writes fail) or frees it.
    fn set_disk_full(&mut self, _id: u64, _full: bool) {}
}

/// Cuts member `target` off from the other `members` (both directions) for `lasting`; the trace says why (`what`).
async fn isolate_from_peers<C: Cluster>(cluster: &mut C, net: &NetSim, members: &[u64], target: u64, what: &str) {
    let lasting = Duration::from_millis(thread_rng().gen_range(cluster.split_ms().unwrap_or(200..3_000)));
    let ms = lasting.as_millis();
    cluster.note(format!("isolate {target} ({what}) from the other members, not from its clients, for {ms} ms"));
    let links: Vec<(NodeId, NodeId)> =
        members.iter().filter(|m| **m != target).map(|m| (cluster.host(target), cluster.host(*m))).collect();
    cut_links(net, &links, lasting).await;
    cluster.note(format!("reconnect {target} to the other members"));
}

/// Cuts member `target`'s host off from every other host for `lasting`, then reconnects it, checking that its
/// metadata replica did not raise its term more than once meanwhile: cut off, it cannot win a pre-vote, and so
/// must not campaign (once is allowed, for a pre-vote won just before the cut). A replica that raised its term
/// while away would unseat the leader when it returns.
async fn isolate_host<C: Cluster>(cluster: &mut C, net: &NetSim, target: u64, lasting: Duration) {
    let host = cluster.host(target);
    let before = cluster.term(target);
    net.clog_node(host);
    sleep(lasting).await;
    let after = cluster.term(target);
    net.unclog_node(host);
    if let (Some(before), Some(after)) = (before, after)
        && after > before + 1
    {
        let violation = format!(
            "replica {target} raised its term from {before} to {after} while cut off from every other ({} ms)",
            lasting.as_millis()
        );
        cluster.note(violation.clone());
        cluster.hosts().violations.push(violation);
    }
}

/// Cuts each of `links` in both directions for `lasting`, then heals them.
async fn cut_links(net: &NetSim, links: &[(NodeId, NodeId)], lasting: Duration) {
    for (a, b) in links {
        net.clog_link(*a, *b);
        net.clog_link(*b, *a);
    }
    sleep(lasting).await;
    for (a, b) in links {
        net.unclog_link(*a, *b);
        net.unclog_link(*b, *a);
    }
}

/// Polls `done` every 50 virtual ms until it holds or `within` passes.
pub(crate) async fn wait_until(within: Duration, mut done: impl FnMut() -> bool) -> Result<(), ()> {
    let deadline = Instant::now() + within;
    while !done() {
        if Instant::now() >= deadline {
            return Err(());
        }
        sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

fn pick(members: &[u64]) -> u64 {
    members[thread_rng().gen_range(0..members.len())]
}

/// Injects faults until `until`; returns how many.
pub(crate) async fn inject<C: Cluster>(cluster: &mut C, until: Instant) -> usize {
    let net = NetSim::current();
    let members = cluster.members();
    let mut faults = 0;
    // Disk losses so far: one without the operator's removal comes only first, on a healthy group. A second loss
    // before the first member is back in sync can destroy the last copy of the metadata log (two disks of three),
    // which no replicated system survives; the removal of the other variant needs a quorum, which stops that.
    let mut disks_lost = 0;
    while Instant::now() < until {
        sleep(Duration::from_millis(thread_rng().gen_range(300..2_000))).await;
        let victim = pick(&members);
        let lasting = Duration::from_millis(thread_rng().gen_range(200..3_000));
        let ms = lasting.as_millis();
        faults += 1;
        // Drawn only where the workload fills disks, so that the other workloads' schedules stay as they were.
        if cluster.fills_disks() && thread_rng().gen_bool(0.25) {
            // The member's disk fills: its writes fail (its metadata log's too, which stops its replica and then the
            // node), then it is freed; the workload's supervisor starts a node that stopped itself again once its
            // disk has room, as systemd would.
            cluster.note(format!("fill {victim}'s disk for {ms} ms"));
            cluster.set_disk_full(victim, true);
            sleep(lasting).await;
            cluster.set_disk_full(victim, false);
            cluster.note(format!("free {victim}'s disk"));
            continue;
        }
        match thread_rng().gen_range(0..10) {
            0 | 1 => {
                let lost = cluster.kill(victim);
                cluster.note(format!("kill {victim} for {ms} ms ({lost} unsynced writes lost)"));
                sleep(lasting).await;
                cluster.restart(victim);
                cluster.note(format!("restart {victim}"));
            }
            2 if disks_lost == 0 && thread_rng().gen_bool(0.25) => {
                disks_lost += 1;
                // The machine is lost with its disk and an operator brings up a replacement with the same id,
                // address and an empty disk without removing the old one first: the replacement joins with an empty
                // store, holding its votes, and the cluster takes the member out and adds it anew.
                cluster.kill(victim);
                sleep(lasting).await;
                cluster.replace_disk(victim);
                cluster.note(format!("{victim} lost with its disk, replaced by an empty one without a removal"));
                cluster.restart(victim);
            }
            2 => {
                // The machine is lost with its disk: an operator removes it through another member and brings up a
                // replacement with the same id and address and an empty disk, which joins anew.
                disks_lost += 1;
                cluster.kill(victim);
                let removed = cluster.remove(victim).await;
                sleep(lasting).await;
                if removed {
                    cluster.replace_disk(victim);
                    cluster.note(format!("{victim} lost with its disk, removed, replaced by an empty one"));
                } else {
                    cluster.note(format!("{victim} down; its removal was refused, it restarts on its disk"));
                }
                cluster.restart(victim);
            }
            3 if cluster.isolate_from_peers_only() => {
                let leader = cluster.leader();
                let target = leader.unwrap_or(victim);
                isolate_from_peers(cluster, &net, &members, target, &format!("leader: {leader:?}")).await;
            }
            3 => {
                // The leader in particular (or a random member when none leads).
                let leader = cluster.leader();
                let target = leader.unwrap_or(victim);
                cluster.note(format!("isolate {target} (leader: {leader:?}) for {ms} ms"));
                isolate_host(cluster, &net, target, lasting).await;
                cluster.note(format!("reconnect {target}"));
            }
            4 => {
                // A random split: a random subset of members cannot talk to the others (both directions).
                let lasting = match cluster.split_ms() {
                    Some(range) => Duration::from_millis(thread_rng().gen_range(range)),
                    None => lasting,
                };
                let ms = lasting.as_millis();
                let side: Vec<u64> = members.iter().copied().filter(|_| thread_rng().gen_bool(0.5)).collect();
                let other: Vec<u64> = members.iter().copied().filter(|m| !side.contains(m)).collect();
                cluster.note(format!("split {side:?} from {other:?} for {ms} ms"));
                let pairs: Vec<(u64, u64)> = side.iter().flat_map(|a| other.iter().map(move |b| (*a, *b))).collect();
                let links: Vec<(NodeId, NodeId)> =
                    pairs.into_iter().map(|(a, b)| (cluster.host(a), cluster.host(b))).collect();
                cut_links(&net, &links, lasting).await;
                cluster.note("split healed".to_string());
            }
            5 => {
                cluster.note(format!("cut {victim}'s outgoing traffic for {ms} ms"));
                let host = cluster.host(victim);
                net.clog_node_out(host);
                sleep(lasting).await;
                net.unclog_node_out(host);
                cluster.note(format!("restore {victim}'s outgoing traffic"));
            }
            6 => {
                let slow = thread_rng().gen_range(20..400);
                cluster.note(format!("slow network: 1-{slow} ms per packet for {ms} ms"));
                net.update_config(|c| c.send_latency = Duration::from_millis(1)..Duration::from_millis(slow));
                sleep(lasting).await;
                net.update_config(|c| c.send_latency = Duration::from_millis(1)..Duration::from_millis(10));
                cluster.note("network back to normal".to_string());
            }
            7 => {
                // Every clock jumps forward at once (a VM paused and resumed): leases and election timers expire.
                // madsim has one clock for the whole world, so clocks cannot drift apart.
                let jump = Duration::from_millis(thread_rng().gen_range(100..3_000));
                cluster.note(format!("clocks jump {} ms forward", jump.as_millis()));
                madsim::time::advance(jump);
                sleep(lasting).await;
            }
            8 if cluster.isolate_from_peers_only() => {
                isolate_from_peers(cluster, &net, &members, victim, "at random").await;
            }
            8 => {
                cluster.note(format!("isolate {victim} for {ms} ms"));
                isolate_host(cluster, &net, victim, lasting).await;
                cluster.note(format!("reconnect {victim}"));
            }
            _ => {
                let rate = thread_rng().gen_range(0.01..0.2);
                cluster.note(format!("drop {:.0}% of packets for {ms} ms", rate * 100.0));
                net.update_config(|c| c.packet_loss_rate = rate);
                sleep(lasting).await;
                net.update_config(|c| c.packet_loss_rate = 0.0);
                cluster.note("stop dropping packets".to_string());
            }
        }
    }
    faults
}
