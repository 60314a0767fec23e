//! Applying a [`Plan`]: carrying out its steps item by item, and turning failures of
//! best-effort items into warnings.

use std::fs::File;

use vfs_core::GuestFs;

use crate::error::{error_chain, InjectError, ItemError};
use crate::plan::{Action, Contents, Plan, Step};
use crate::report::{ItemReport, Outcome, Report};

/// Carries out the steps of `plan` in order and reports what happened to each item.
///
/// A failing step of a mandatory item stops here with [`InjectError::Applying`], which
/// carries the report of the items before it. A failing step of a best-effort item ends
/// that item with a warning, and the next items still run. Every file is written with
/// [`GuestFs::write_file`], which replaces it atomically, so each file an item touched
/// contains either its old or its new contents. Flushing to the image is left to the caller
/// ([`GuestFs::sync`] or [`GuestFs::close`]).
pub fn apply(fs: &mut dyn GuestFs, plan: Plan<'_>) -> Result<Report, InjectError> {
    let mut report = Report::default();
    for item in plan.items {
        let span =
            tracing::info_span!("inject_item", item = %item.kind, target_path = %item.target);
        let _entered = span.enter();

        let outcome = match item.action {
            Action::Unchanged { reason } => {
                tracing::info!(%reason, "item unchanged");
                Outcome::Unchanged { reason }
            }
            Action::Failed { reason } => Outcome::Warning { reason },
            Action::Steps(steps) => match run_steps(fs, &steps) {
                Ok(()) => {
                    tracing::info!("item applied");
                    Outcome::Applied
                }
                Err(source) if item.best_effort => {
                    let reason = error_chain(&source);
                    tracing::warn!(error = %reason, "best-effort item failed");
                    Outcome::Warning { reason }
                }
                Err(source) => {
                    // The caller receives the error and decides how to show it.
                    tracing::debug!(error = %error_chain(&source), "item failed");
                    return Err(InjectError::Applying {
                        item: item.kind,
                        target: item.target,
                        source: Box::new(source),
                        report: Box::new(report),
                    });
                }
            },
        };
        report.items.push(ItemReport {
            kind: item.kind,
            target: item.target,
            outcome,
        });
    }
    Ok(report)
}

fn run_steps(fs: &mut dyn GuestFs, steps: &[Step<'_>]) -> Result<(), ItemError> {
    for step in steps {
        tracing::debug!(%step, "applying step");
        run_step(fs, step)?;
    }
    Ok(())
}

fn run_step(fs: &mut dyn GuestFs, step: &Step<'_>) -> Result<(), ItemError> {
    match step {
        Step::CreateDir { path, mode } => fs
            .create_dir_all(path, *mode)
            .map_err(|source| ItemError::Guest { source }),
        Step::WriteFile {
            path,
            contents,
            create_mode,
        } => {
            let written = match contents {
                Contents::Bytes(bytes) => fs.write_file(path, &mut &bytes[..], *create_mode),
                Contents::HostFile {
                    path: host_path, ..
                } => {
                    // NOTE: planning checked free space against the size the host file had
                    // then. A file that grew since may still fill the guest filesystem, and
                    // that write then fails with the old contents kept.
                    let mut file =
                        File::open(host_path).map_err(|source| ItemError::OpeningHostFile {
                            path: host_path.to_path_buf(),
                            source,
                        })?;
                    fs.write_file(path, &mut file, *create_mode)
                }
            };
            written
                .map(drop)
                .map_err(|source| ItemError::Guest { source })
        }
        Step::SetMode { path, mode } => fs
            .set_mode(path, *mode)
            .map_err(|source| ItemError::Guest { source }),
    }
}
