//! `guest-inject backends`: the registered backends and whether each can run here.

use std::process::ExitCode;

use serde::Serialize;
use vfs_core::registry::{self, Availability};

use crate::args::BackendsArgs;
use crate::failure::Failure;

#[derive(Debug, Serialize)]
struct BackendRow {
    name: &'static str,
    summary: &'static str,
    auto_rank: u32,
    available: bool,
    reason: Option<String>,
    check: Option<CheckResult>,
}

#[derive(Debug, Serialize)]
struct CheckResult {
    ok: bool,
    seconds: Option<f64>,
    error: Option<String>,
}

/// Lists the backends in `auto` order.
pub fn run(args: BackendsArgs) -> Result<ExitCode, Failure> {
    let mut rows = Vec::new();
    for backend in registry::backends() {
        let availability = (backend.probe)(None);
        let check = if args.check && availability.is_available() {
            Some(check_backend(backend.name))
        } else {
            None
        };
        let (available, reason) = match availability {
            Availability::Available => (true, None),
            Availability::Unavailable { reason } => (false, Some(reason)),
        };
        rows.push(BackendRow {
            name: backend.name,
            summary: backend.summary,
            auto_rank: backend.auto_rank,
            available,
            reason,
            check,
        });
    }

    if args.json {
        let text = serde_json::to_string_pretty(&rows).map_err(Failure::request)?;
        println!("{text}");
    } else {
        print_table(&rows);
    }
    let failed_check = rows
        .iter()
        .any(|row| row.check.as_ref().is_some_and(|check| !check.ok));
    Ok(if failed_check {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn check_backend(name: &str) -> CheckResult {
    let _progress = crate::progress::Progress::start(format!("Checking {name}"));
    match name {
        "guestfs" => match vfs_guestfs::check_launch() {
            Ok(duration) => CheckResult {
                ok: true,
                seconds: Some(duration.as_secs_f64()),
                error: None,
            },
            Err(err) => CheckResult {
                ok: false,
                seconds: None,
                error: Some(crate::failure::format_chain(&err)),
            },
        },
        _ => CheckResult {
            ok: true,
            seconds: None,
            error: Some("no test run exists for this backend; its probe result stands".to_owned()),
        },
    }
}

fn print_table(rows: &[BackendRow]) {
    println!("Backends, in the order `--backend auto` tries them:");
    for row in rows {
        let status = if row.available {
            "available"
        } else {
            "unavailable"
        };
        println!("  {:<12} {:<12} {}", row.name, status, row.summary);
        if let Some(reason) = &row.reason {
            println!("  {:<12} {:<12} why: {reason}", "", "");
        }
        if let Some(check) = &row.check {
            match (check.ok, check.seconds, &check.error) {
                (true, Some(seconds), _) => {
                    println!("  {:<12} {:<12} test launch took {seconds:.1} s", "", "")
                }
                (true, None, Some(note)) => println!("  {:<12} {:<12} {note}", "", ""),
                (_, _, Some(error)) => println!("  {:<12} {:<12} check failed: {error}", "", ""),
                _ => {}
            }
        }
    }
    if rows.is_empty() {
        println!("  none: this program was built without backends");
    }
}
