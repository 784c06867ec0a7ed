//! `podvm cleanup`: the leftovers of a crashed node (see `podvm_host_runtime::cleanup`).

use anyhow::{Result, bail};
use clap::Args;
use podvm_host_runtime::cleanup::{Action, cleanup};

#[derive(Args)]
pub struct CleanupArgs {
    /// Say what would be removed; change nothing.
    #[arg(long)]
    dry_run: bool,
}

pub fn run(args: CleanupArgs) -> Result<()> {
    let root = podvm_host_runtime::paths::state_root();
    let report = cleanup(&root, args.dry_run);
    for action in &report.actions {
        println!("{}", action.describe(args.dry_run));
    }
    for error in &report.errors {
        eprintln!("podvm: {error}");
    }
    let count = |f: fn(&Action) -> bool| report.actions.iter().filter(|a| f(a)).count();
    let dirs = count(|a| matches!(a, Action::Removed { .. }));
    let killed = count(|a| matches!(a, Action::Killed { .. }));
    let unmounted = count(|a| matches!(a, Action::Unmounted(_)));
    if report.actions.is_empty() && report.errors.is_empty() {
        println!(
            "nothing to clean up in {} (no state directory with a dead owner)",
            root.display()
        );
        return Ok(());
    }
    let (removed, kill, unmount) = if args.dry_run {
        ("would remove", "kill", "unmount")
    } else {
        ("removed", "killed", "unmounted")
    };
    println!(
        "{}: {removed} {dirs} state director{}, {kill} {killed} process{}, {unmount} {unmounted} mount{}",
        root.display(),
        if dirs == 1 { "y" } else { "ies" },
        if killed == 1 { "" } else { "es" },
        if unmounted == 1 { "" } else { "s" },
    );
    if !report.errors.is_empty() {
        bail!(
            "{} thing{} under {} could not be cleaned up (above)",
            report.errors.len(),
            if report.errors.len() == 1 { "" } else { "s" },
            root.display()
        );
    }
    Ok(())
}
