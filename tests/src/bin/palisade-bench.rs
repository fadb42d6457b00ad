//! `palisade-bench`: see `BENCHMARKS.md`, or run with `--help`.

use std::process::ExitCode;

use clap::Parser as _;
use palisade_tests::bench::{self, options::Internal, options::Options};

fn main() -> ExitCode {
    let opts = Options::parse();
    let runtime = match &opts.command {
        // The upstream serves thousands of connections: a worker per core.
        Some(Internal::Upstream { .. }) => tokio::runtime::Builder::new_multi_thread().enable_all().build(),
        // The load generator runs on one thread, so it takes as little CPU from the tunnel as it can.
        None => tokio::runtime::Builder::new_current_thread().enable_all().build(),
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match &opts.command {
            Some(Internal::Upstream { listen }) => bench::upstream::serve(*listen).await.map(|()| None),
            None if opts.cedar => bench::cedar::run_and_write(opts.quick, &opts.out).map(Some),
            None if opts.llm => tokio::select! {
                result = bench::llm::run_and_write(&opts, &opts.out) => result.map(Some),
                () = interrupted() => Err(anyhow::anyhow!("interrupted; every process started was stopped")),
            },
            None if opts.control_plane => tokio::select! {
                result = bench::control_plane::run_and_write(opts.control_params(), &opts.out) => result.map(Some),
                () = interrupted() => Err(anyhow::anyhow!("interrupted; every process started was stopped")),
            },
            None => tokio::select! {
                result = bench::run(&opts) => result.map(Some),
                () = interrupted() => Err(anyhow::anyhow!("interrupted; every process started was stopped")),
            },
        }
    });
    match result {
        Ok(Some(markdown)) => {
            println!("{markdown}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Ctrl-C or SIGTERM. Returning drops the benchmark's future, and with it
/// every child process (killed on drop), temporary directory and namespace.
async fn interrupted() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
