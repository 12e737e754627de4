//! `quiver-chaos`: a cluster on test hosts under faults, with a checker. See `quiver_bench::chaos`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use quiver_bench::chaos::{self, Options, nemesis::FaultKind, testbed};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Profile {
    /// Three hosts, each kind of fault once (a few minutes).
    Short,
    /// Five hosts, forty faults (about half an hour).
    Long,
}

#[derive(Debug, Parser)]
#[command(
    name = "quiver-chaos",
    about = "Runs a Quiver cluster on test hosts (network namespaces) under kill -9, freeze, partition, one-way cut, \
             disk-full, restart, replaced-disk, rolling-restart, remove-and-add, network-delay, clock-skew and upgrade faults while clients \
             write and read through every host; checks the history"
)]
struct Args {
    #[arg(long, value_enum, default_value_t = Profile::Short)]
    profile: Profile,
    /// Hosts (default: the profile's).
    #[arg(long)]
    hosts: Option<usize>,
    /// Faults (default: the profile's).
    #[arg(long)]
    faults: Option<usize>,
    /// Kinds of fault, comma-separated (kill, freeze, isolate, cut, disk-full, restart, replace, rolling-restart,
    /// kill-leader, remove-add, delay, clock-skew, upgrade; default: all).
    #[arg(long, value_delimiter = ',')]
    kinds: Vec<String>,
    /// The seed of the schedule and the clients (default: from the clock; the report prints it).
    #[arg(long)]
    seed: Option<u64>,
    /// The `quiver` binary the hosts run (default: the one built beside this program).
    #[arg(long)]
    binary: Option<PathBuf>,
    /// The binary the `upgrade` fault installs on every host in turn: the next release, with the hosts started on
    /// the previous one (`--binary`). Default: a copy of `--binary`, so that the procedure (stop, swap, start) runs
    /// even without a second release.
    #[arg(long)]
    upgrade_to: Option<PathBuf>,
    /// The testbed script (default: deploy/testbed of this source tree).
    #[arg(long)]
    testbed: Option<PathBuf>,
    /// The testbed's name (its namespaces' prefix).
    #[arg(long, default_value = "qchaos")]
    name: String,
    /// The testbed's /24, as its first three octets.
    #[arg(long, default_value = "10.87.1")]
    net: String,
    /// Where the run leaves its history (one operation a line), the shard map's timeline, its report and the hosts'
    /// logs (default: quiver-chaos-SEED in the temporary directory).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Set when this program runs itself in the testbed's client namespace.
    #[arg(long, hide = true)]
    inside: bool,
}

impl Args {
    fn options(&self, seed: u64) -> anyhow::Result<Options> {
        let mut o = match self.profile {
            Profile::Short => Options::short(seed),
            Profile::Long => Options::long(seed),
        };
        if let Some(h) = self.hosts {
            anyhow::ensure!((1..=50).contains(&h), "--hosts must be 1 to 50");
            o.hosts = h;
        }
        if let Some(f) = self.faults {
            o.faults = f;
        }
        if let Some(out) = &self.out {
            o.out = out.clone();
        }
        o.upgrade_to.clone_from(&self.upgrade_to);
        if !self.kinds.is_empty() {
            o.kinds = self
                .kinds
                .iter()
                .map(|k| FaultKind::parse(k).ok_or_else(|| anyhow::anyhow!("unknown fault kind {k}")))
                .collect::<anyhow::Result<_>>()?;
        }
        Ok(o)
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("quiver-chaos: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> anyhow::Result<bool> {
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64 % 1_000_000)
    });
    let options = args.options(seed)?;
    let script = args.testbed.clone().unwrap_or_else(testbed::default_script);
    let bed = testbed::Testbed::new(script, &args.name, &args.net, options.hosts);
    if args.inside {
        let (report, passed) = chaos::run_inside(&bed, &options).await?;
        println!("{report}");
        return Ok(passed);
    }
    if let Some(why) = testbed::unavailable() {
        println!("quiver-chaos: skipped: {why}");
        return Ok(true);
    }
    let binary = match &args.binary {
        Some(b) => b.clone(),
        None => quiver_bench::processes::quiver_binary()?,
    };
    println!(
        "quiver-chaos: {} hosts, {} faults, seed {seed} (replay with --seed {seed})",
        options.hosts, options.faults
    );
    let _ = bed.down().await; // what a run that was killed left behind
    if let Err(e) = bed.up(&binary).await {
        let _ = bed.down().await;
        return Err(e.context("bringing the test hosts up"));
    }
    // The same arguments inside, with the seed drawn here (and the binary to upgrade to, when none was given).
    let mut inner: Vec<String> = Vec::new();
    if args.upgrade_to.is_none() && options.kinds.contains(&FaultKind::Upgrade) {
        std::fs::create_dir_all(&options.out)?;
        let copy = options.out.join("quiver-upgraded");
        std::fs::copy(&binary, &copy)
            .map_err(|e| anyhow::anyhow!("copying {} to upgrade to: {e}", binary.display()))?;
        inner.extend(["--upgrade-to".to_string(), copy.to_string_lossy().into_owned()]);
    }
    let mut given = std::env::args().skip(1);
    while let Some(arg) = given.next() {
        match arg.as_str() {
            "--seed" => {
                given.next();
            }
            a if a.starts_with("--seed=") => {}
            _ => inner.push(arg),
        }
    }
    inner.extend(["--inside".to_string(), "--seed".to_string(), seed.to_string()]);
    let status = bed.client_command(&std::env::current_exe()?, &inner).status().await;
    if !matches!(&status, Ok(s) if s.success()) {
        for i in 1..=options.hosts {
            eprintln!("--- host {i}'s last log lines:\n{}", bed.log_tail(i, 15));
        }
    }
    let kept = bed.keep_logs(&options.out);
    bed.down().await?;
    match kept {
        Ok(()) => println!("quiver-chaos: history, shard map timeline, report and logs in {}", options.out.display()),
        Err(e) => eprintln!("quiver-chaos: could not keep the hosts' logs in {}: {e}", options.out.display()),
    }
    let status = status?;
    anyhow::ensure!(status.code().is_some_and(|c| c <= 1), "the run inside the testbed failed ({status})");
    Ok(status.success())
}
