//! `cargo xtask demo`: brings up the local mesh of `deploy/local/` (three nodes, bookinfo-like
//! services, a waypoint for reviews, eBPF capture) and walks through what the mesh promises,
//! printing each step's measured numbers next to what the configuration says.
//! `--keep` leaves it running for exploration; Ctrl-C tears everything down.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use mesh_tests::scenarios::{self, StepReport};
use owo_colors::OwoColorize;

/// Set while `--keep` waits: Ctrl-C then means "tear down normally".
static KEEPING: AtomicBool = AtomicBool::new(false);

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "deploy/local")]
    config: PathBuf,
    #[arg(long)]
    keep: bool,
    /// Requests per canary measurement.
    #[arg(long, default_value_t = 1000)]
    requests: u32,
}

fn main() {
    let args = Args::parse();
    let stop = Arc::new(AtomicBool::new(false));
    install_sigint(stop.clone());
    let t0 = Instant::now();
    println!(
        "{}",
        "mesh demo — sidecar-less service mesh, eBPF capture, HBONE mTLS".bold()
    );
    let mut progress = |msg: &str| {
        print!("\r\x1b[2K  {} {}", "…".cyan(), msg.dimmed());
        let _ = std::io::stdout().flush();
    };
    let mesh = match scenarios::bring_up("demo", &args.config, &mut progress) {
        Ok(m) => m,
        Err(e) => {
            println!("\r\x1b[2K{} could not bring the mesh up: {e:#}", "✘".red());
            std::process::exit(1);
        }
    };
    println!(
        "\r\x1b[2K{} mesh up in {:.1}s: {} nodes, {} pods",
        "✔".green(),
        t0.elapsed().as_secs_f64(),
        mesh.topo.nodes.len(),
        mesh.topo.pods.len()
    );
    let result = scenarios::all(&mesh, &mut progress, args.requests);
    print!("\r\x1b[2K");
    let mut failed = 0;
    match result {
        Ok(steps) => {
            for (i, s) in steps.iter().enumerate() {
                print_step(i + 1, s);
                if !s.ok() {
                    failed += 1;
                }
            }
        }
        Err(e) => {
            println!("{} demo step failed to run: {e:#}", "✘".red());
            println!("{}", mesh.logs(30));
            failed += 1;
        }
    }
    println!();
    if failed == 0 {
        println!(
            "{} every step matched its configuration ({:.0}s)",
            "✔".green().bold(),
            t0.elapsed().as_secs_f64()
        );
    } else {
        println!(
            "{} {failed} step(s) did not match; logs in {}",
            "✘".red().bold(),
            mesh.log_dir.display()
        );
    }
    if args.keep {
        KEEPING.store(true, Ordering::Relaxed);
        print_explore(&mesh);
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(200));
        }
        println!("\ntearing down…");
    }
    drop(mesh);
    std::process::exit(if failed == 0 { 0 } else { 1 });
}

fn print_step(n: usize, s: &StepReport) {
    let mark = if s.ok() {
        "✔".green().to_string()
    } else {
        "✘".red().to_string()
    };
    println!("\n{mark} {} {}", format!("{n:>2}.").bold(), s.title.bold());
    println!("     {} {}", "config:".dimmed(), s.config);
    for c in &s.checks {
        let m = if c.ok {
            c.measured.green().to_string()
        } else {
            c.measured.red().to_string()
        };
        println!(
            "     {:<44} {m:>14}  {} {}",
            c.what,
            "expected".dimmed(),
            c.expected
        );
    }
    for note in &s.notes {
        println!("     {}", note.dimmed());
    }
}

fn print_explore(mesh: &mesh_tests::mesh::Mesh) {
    let pp = &mesh.topo.pod(scenarios::CLIENT).ns.name;
    let cg = mesh
        .topo
        .pod(scenarios::CLIENT)
        .cgroup
        .path
        .display()
        .to_string();
    println!(
        "\n{}",
        "The mesh keeps running. Try (Ctrl-C here tears it down):".bold()
    );
    println!(
        "  sh -c 'echo $$ > {cg}/cgroup.procs; exec ip netns exec {pp} curl -s {}'",
        scenarios::REVIEWS_URL
    );
    println!(
        "  ip netns exec {} curl -s 127.0.0.1:15020/metrics | grep istio_tcp",
        mesh.topo.node("node2").ns.name
    );
    println!(
        "  ip netns exec {} curl -s 127.0.0.1:15000/config_dump",
        mesh.topo.node("node1").ns.name
    );
    println!(
        "  config: {} (edit files; the mesh reloads them)",
        mesh.config_dir.display()
    );
    println!("  logs:   {}", mesh.log_dir.display());
}

fn install_sigint(flag: Arc<AtomicBool>) {
    // A tiny runtime just to wait for Ctrl-C without pulling in another signal crate.
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            use tokio::signal::unix::{signal, SignalKind};
            let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        });
        if KEEPING.load(Ordering::Relaxed) {
            flag.store(true, Ordering::Relaxed);
        } else {
            // Interrupted mid-walkthrough: the mesh lives on the main thread, so tear down
            // by name (every namespace and cgroup of the demo starts with `mt-`).
            println!("\ninterrupted: tearing down…");
            let _ = mesh_tests::netns::sweep();
            std::process::exit(130);
        }
    });
}
