//! The chaos suite at full size: `cargo bench --bench chaos -- [options]`.
//!
//! Each case starts private loopback servers and a fleet of release-built
//! `sluice` replicas, injects its faults on a seeded schedule while the
//! producer runs, drains, and prints one Markdown table row: messages sent,
//! rows (`count()`), unique ids (`uniqExact(_id)`), duplicates, dead
//! letters, lost, faults injected, worker peak RSS. The cases themselves are
//! in `tests/it/chaos/engine.rs` (the tests run them small).
//!
//! Options (all optional):
//!   --seed N            seed of the fault schedule (default: random, printed)
//!   --case NAME|all     kill, ch-faults, redis-restart, slow-ch, redis-cut, redis-oom, schema-change, sink-down (default all)
//!   --delivery MODE     at-least-once, exactly-once or both (default at-least-once)
//!   --messages N        messages per case (default 300000)
//!   --rate N            producer msgs/s (default 10000)
//!   --replicas N        replicas (default: 3 for kill, else 2)
//!   --payload N         bytes of the data field (default 200)
//!   --outage SECS       sink-down: how long ClickHouse is down (default 60)
//!
//! Exit status 1 if any case lost a message (or, in exactly-once mode,
//! duplicated one).

#[path = "../tests/it/harness/mod.rs"]
#[allow(dead_code, unused_imports)]
mod harness;

#[path = "../tests/it/chaos/engine.rs"]
mod engine;

use std::time::Duration;

use engine::{Case, Delivery, Params, Report};

fn usage(msg: &str) -> ! {
    eprintln!("chaos: {msg}\nsee the options at the top of benches/chaos.rs");
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo test --all-targets` runs bench binaries without `--bench`; the
    // full suite takes minutes, so it only runs under `cargo bench`.
    if !args.iter().any(|a| a == "--bench") {
        println!("chaos: skipped (run with `cargo bench --bench chaos`)");
        return;
    }
    let seed: u64 = rand::random::<u32>() as u64;
    let mut params = Params::full(seed);
    let mut cases: Vec<Case> = Case::ALL.to_vec();
    let mut deliveries = vec![Delivery::AtLeastOnce];
    let mut it = args.iter().filter(|a| *a != "--bench");
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .unwrap_or_else(|| usage(&format!("{flag} needs a value")))
        };
        let number = |v: String| -> u64 {
            v.replace('_', "")
                .parse()
                .unwrap_or_else(|_| usage(&format!("{flag}: not a number: {v}")))
        };
        match flag.as_str() {
            "--seed" => params.seed = number(value()),
            "--case" => {
                let v = value();
                cases = if v == "all" {
                    Case::ALL.to_vec()
                } else {
                    v.split(',')
                        .map(|c| {
                            Case::parse(c).unwrap_or_else(|| usage(&format!("unknown case {c}")))
                        })
                        .collect()
                };
            }
            "--delivery" => {
                let v = value();
                deliveries = if v == "both" {
                    vec![Delivery::AtLeastOnce, Delivery::ExactlyOnce]
                } else {
                    vec![Delivery::parse(&v)
                        .unwrap_or_else(|| usage(&format!("unknown delivery {v}")))]
                };
            }
            "--messages" => params.messages = number(value()) as usize,
            "--rate" => params.rate = number(value()) as usize,
            "--replicas" => params.replicas = number(value()) as usize,
            "--payload" => params.payload_bytes = number(value()) as usize,
            "--outage" => params.outage = Duration::from_secs(number(value())),
            other => usage(&format!("unknown option {other}")),
        }
    }
    params.drain_limit =
        Duration::from_secs(120).max(Duration::from_secs_f64(params.messages as f64 / 2000.0));
    let command =
        format!(
        "cargo bench --bench chaos -- --seed {} --case {} --delivery {} --messages {} --rate {}{}",
        params.seed,
        cases.iter().map(|c| c.name()).collect::<Vec<_>>().join(","),
        if deliveries.len() == 2 { "both" } else { deliveries[0].name() },
        params.messages,
        params.rate,
        if params.replicas > 0 {
            format!(" --replicas {}", params.replicas)
        } else {
            String::new()
        },
    );
    println!("chaos seed {}\nreproduce: {command}\n", params.seed);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut reports = Vec::new();
    let mut failed = false;
    for &delivery in &deliveries {
        for &case in &cases {
            let p = Params {
                delivery,
                ..params.clone()
            };
            eprintln!("chaos: running {} ({})…", case.name(), delivery.name());
            let report = rt.block_on(engine::run(case, &p));
            eprintln!("{}", report.row());
            let problems = report.problems(&p);
            if !problems.is_empty() {
                failed = true;
                eprintln!("chaos: {} FAILED: {problems:?}", case.name());
            }
            for note in &report.notes {
                eprintln!("chaos: {}: {note}", case.name());
            }
            reports.push((report, problems));
        }
    }
    println!("\n{}", Report::header());
    for (r, _) in &reports {
        println!("{}", r.row());
    }
    println!("\nreproduce: {command}");
    for (r, problems) in &reports {
        if !problems.is_empty() {
            println!(
                "FAILED {} ({}): {}",
                r.case,
                r.delivery,
                problems.join("; ")
            );
        }
    }
    if failed {
        std::process::exit(1);
    }
}
