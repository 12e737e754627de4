//! `quiver-sim`: runs a simulation over many seeds (built with `--cfg madsim`; use `sim-tests/run`):
//! `--workload meta` (the metadata Raft group alone) or `--workload node` (whole nodes with an ingest and query
//! workload).
//!
//! `quiver-sim --seeds N [--first S]` runs seeds S..S+N, each in a child process of its own (exactly as a replay
//! runs it), and prints one line per seed and a summary, `N passed, M failed`, with the command that replays each
//! failing seed; `quiver-sim --seed S --log` replays one seed with its trace and the replicas' logs. The exit status
//! is 1 when a seed failed.

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "quiver-sim", about = "Deterministic simulation of Quiver under faults")]
struct Args {
    /// What to simulate: `meta` (the metadata Raft group) or `node` (whole nodes, ingest and queries).
    #[arg(long, default_value = "meta", value_parser = ["meta", "node"])]
    workload: String,
    /// How many seeds to run.
    #[arg(long, default_value_t = 20)]
    seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 1)]
    first: u64,
    /// Run only this seed, printing its trace (overrides --seeds/--first).
    #[arg(long)]
    seed: Option<u64>,
    /// Print the replicas' logs (with --seed).
    #[arg(long)]
    log: bool,
    /// Virtual seconds of faults per seed.
    #[arg(long, default_value_t = 20)]
    fault_secs: u64,
    /// Replicas in the metadata group (nodes, for the node workload).
    #[arg(long, default_value_t = 3)]
    replicas: u64,
    /// Node workload: shards of each table (above 1, every append spanning shards is a transaction).
    #[arg(long, default_value_t = 1)]
    shards: u32,
    /// Node workload: also run the ledger (UPDATEs spanning shards, audited for atomicity).
    #[arg(long)]
    ledger: bool,
    /// Node workload: clients also DELETE whole batches they saw acknowledged, hot or tiered (with `--shards` above 1,
    /// every DELETE spans shards).
    #[arg(long)]
    deletes: bool,
    /// Node workload: balance shard copies within a twentieth of the mean load, so that copies move throughout.
    #[arg(long)]
    moves: bool,
    /// Node workload: the faults also fill nodes' disks (a node stops itself when its metadata log cannot be written
    /// and is started again once its disk is freed).
    #[arg(long)]
    disk_full: bool,
    /// Run every seed twice and require the same trace (determinism).
    #[arg(long)]
    check_determinism: bool,
    /// Seeds run at once, each in a process of its own (default: one per core).
    #[arg(long)]
    jobs: Option<usize>,
    /// With --seed: print only the result line, not the trace.
    #[arg(long)]
    quiet: bool,
    /// Node workload: inject a bug into every node (ack-before-backups, deposed-primary-accepts, stale-epoch-scan),
    /// to show that the checks catch it.
    #[arg(long)]
    inject_bug: Option<String>,
}

#[cfg(not(madsim))]
fn main() {
    let _ = Args::parse();
    eprintln!("quiver-sim runs only in the simulation build: use sim-tests/run (it builds with --cfg madsim)");
    std::process::exit(2);
}

#[cfg(madsim)]
fn main() {
    let args = Args::parse();
    match args.seed {
        Some(seed) => std::process::exit(run_one(&args, seed)),
        None => std::process::exit(run_many(&args)),
    }
}

/// Runs `seed` in this process and prints its result line (and, when asked, its trace); returns the exit status.
#[cfg(madsim)]
fn run_one(args: &Args, seed: u64) -> i32 {
    use quiver_sim_tests::{meta_sim, node_sim};

    let (replicas, fault_secs, shards, ledger) = (args.replicas, args.fault_secs, args.shards.max(1), args.ledger);
    let (deletes, moves, disk_full) = (args.deletes, args.moves, args.disk_full);
    let bug = match args.inject_bug.as_deref().map(str::parse::<quiver_node::engine::InjectedBug>).transpose() {
        Ok(bug) => bug,
        Err(e) => {
            eprintln!("{e}");
            return 2;
        }
    };
    let run: Box<dyn FnOnce(u64) -> Result<meta_sim::Outcome, String> + Send> = match args.workload.as_str() {
        "node" => Box::new(move |seed| {
            let options = node_sim::NodeSimOptions {
                nodes: replicas,
                fault_secs,
                bug,
                shards,
                ledger,
                deletes,
                moves,
                disk_full,
                ..Default::default()
            };
            node_sim::run_seed(seed, &options)
        }),
        _ => Box::new(move |seed| {
            let options = meta_sim::SimOptions { replicas, fault_secs, ..Default::default() };
            meta_sim::run_seed(seed, &options)
        }),
    };
    if args.log {
        let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "info,openraft=warn,datafusion=warn".into());
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    } else {
        // The panic is reported in the result line.
        std::panic::set_hook(Box::new(|_| {}));
    }
    // A fresh thread: madsim seeds std's hash maps per thread, from the seed.
    let result = std::thread::spawn(move || {
        // DataFusion's planner guards deep recursion with stacker, which reads this thread's stack limit once, on
        // first use. Read it here, before the simulation starts: inside it, madsim refuses the pthread call that
        // stacker makes (and complains of a thread spawn).
        let _ = stacker::remaining_stack();
        run(seed)
    })
    .join()
    .unwrap_or_else(|payload| {
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("(no message)");
        Err(format!("seed {seed}: panicked: {}", message.lines().next().unwrap_or_default()))
    });
    match result {
        Ok(outcome) => {
            if !args.quiet {
                for line in &outcome.trace {
                    println!("{line}");
                }
            }
            println!(
                "seed {seed}: ok  faults {}  acknowledged {}  uncertain {}  moves {}  self-stops {}  trace {:016x}",
                outcome.faults,
                outcome.acknowledged,
                outcome.uncertain,
                outcome.moves,
                outcome.self_stops,
                outcome.trace_hash
            );
            0
        }
        Err(e) => {
            println!("seed {seed}: FAILED: {e}");
            1
        }
    }
}

/// Runs each seed in a child process of its own (as a replay would), `--jobs` at a time; prints a line per seed and
/// the summary; returns the exit status.
#[cfg(madsim)]
fn run_many(args: &Args) -> i32 {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU64, Ordering};

    let started = std::time::Instant::now();
    let exe = std::env::current_exe().expect("the runner's own path");
    let child = |seed: u64| -> (bool, String) {
        let output = std::process::Command::new(&exe)
            .args(["--seed", &seed.to_string(), "--quiet", "--workload", &args.workload])
            .args(["--fault-secs", &args.fault_secs.to_string(), "--replicas", &args.replicas.to_string()])
            .args(["--shards", &args.shards.to_string()])
            .args(args.ledger.then_some("--ledger"))
            .args(args.deletes.then_some("--deletes"))
            .args(args.moves.then_some("--moves"))
            .args(args.disk_full.then_some("--disk-full"))
            .args(args.inject_bug.iter().flat_map(|bug| ["--inject-bug", bug.as_str()]))
            .output();
        match output {
            Ok(out) => {
                let text = String::from_utf8_lossy(&out.stdout);
                let line = text.lines().last().unwrap_or("").to_string();
                let line = if line.is_empty() { format!("seed {seed}: FAILED: the run printed nothing") } else { line };
                (out.status.success(), line)
            }
            Err(e) => (false, format!("seed {seed}: FAILED: could not start the run: {e}")),
        }
    };
    let trace_of = |line: &str| line.rsplit("trace ").next().map(str::to_string);
    let next = AtomicU64::new(args.first);
    let end = args.first + args.seeds;
    let results = Mutex::new(Vec::new());
    let jobs = args.jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    std::thread::scope(|scope| {
        for _ in 0..jobs.max(1) {
            scope.spawn(|| {
                loop {
                    let seed = next.fetch_add(1, Ordering::SeqCst);
                    if seed >= end {
                        break;
                    }
                    let (mut ok, mut line) = child(seed);
                    if ok && args.check_determinism {
                        let (again_ok, again) = child(seed);
                        if !again_ok || trace_of(&again) != trace_of(&line) {
                            ok = false;
                            line = format!("seed {seed}: FAILED: not deterministic: {line} / then: {again}");
                        }
                    }
                    println!("{line}");
                    if !ok {
                        println!("  replay: sim-tests/run --workload {} --seed {seed} --log", args.workload);
                    }
                    results.lock().expect("results").push((seed, ok));
                }
            });
        }
    });
    let results = results.into_inner().expect("results");
    let mut failed: Vec<u64> = results.iter().filter(|(_, ok)| !ok).map(|(s, _)| *s).collect();
    failed.sort_unstable();
    let passed = results.len() - failed.len();
    println!(
        "{passed} passed, {} failed{} in {:.1} s",
        failed.len(),
        if failed.is_empty() { String::new() } else { format!(" (seeds {failed:?})") },
        started.elapsed().as_secs_f64()
    );
    i32::from(!failed.is_empty())
}
