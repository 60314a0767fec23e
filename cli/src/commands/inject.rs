//! `guest-inject inject`: read the inputs, check them, open the image, inject, report.

use std::path::Path;
use std::process::ExitCode;

use inject::{FileItem, FileSource, Outcome, Password, Report, Request};
use vfs_core::image::ResolvedImage;

use crate::args::InjectArgs;
use crate::commands::{open_image, resolve_image};
use crate::failure::Failure;
use crate::transaction::Transaction;

/// Errors from reading the host files that hold the request's inputs.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// A host input file could not be read.
    #[error("reading {what} from {path} failed")]
    Reading {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A host input file holds something unusable.
    #[error("{what} in {path} is invalid: {reason}")]
    Invalid {
        what: &'static str,
        path: String,
        reason: String,
    },
    /// Nothing was requested.
    #[error("nothing to inject: give at least one of --ssh-key, --admin-password-file, --net, --metadata or --file")]
    NothingRequested,
}

/// Runs the injection and prints the report.
pub fn run(args: InjectArgs) -> Result<ExitCode, Failure> {
    let request = build_request(&args)?;
    request.validate_inputs().map_err(Failure::request)?;

    let image = resolve_image(&args.image)?;
    let report = if args.transactional {
        let transaction = Transaction::begin(&image).map_err(Failure::request)?;
        match inject_into(&args, transaction.overlay_image(), &request) {
            Ok(report) => {
                transaction.commit().map_err(Failure::request)?;
                report
            }
            Err(failure) => return Err(transaction.roll_back(failure)),
        }
    } else {
        inject_into(&args, image, &request)?
    };

    print_report(&report, args.json)?;
    Ok(ExitCode::SUCCESS)
}

/// Opens `image` for writing, injects the request and closes the image.
fn inject_into(
    args: &InjectArgs,
    image: ResolvedImage,
    request: &Request,
) -> Result<Report, Failure> {
    let mut fs = open_image(&args.image, image, false)?;

    let result = inject::inject(fs.as_mut(), request);
    let closed = fs.close();
    let report = result.map_err(Failure::request)?;
    closed.map_err(Failure::request)?;
    Ok(report)
}

/// Reads every host input named by the arguments into a request, before the image is
/// touched.
fn build_request(args: &InjectArgs) -> Result<Request, Failure> {
    let mut request = Request {
        password_method: args.password_hash,
        best_effort: args.best_effort.iter().copied().collect(),
        ..Request::default()
    };

    if let Some(path) = &args.ssh_key {
        let text = read_text(path, "the SSH public key")?;
        request.ssh_key = Some(text.trim().to_owned());
    }
    if let Some(path) = &args.admin_password_file {
        request.password = Some(read_password(path)?);
    }
    if let Some(path) = &args.net {
        request.network = Some(read_bytes(path, "the network configuration")?);
    }
    if let Some(path) = &args.metadata {
        request.metadata = Some(read_bytes(path, "the metadata")?);
    }
    for spec in &args.files {
        check_readable_file(&spec.host_file)?;
        request.files.push(FileItem {
            guest_path: spec.guest_path.clone(),
            source: FileSource::HostFile(spec.host_file.clone()),
        });
    }

    let nothing = request.ssh_key.is_none()
        && request.password.is_none()
        && request.network.is_none()
        && request.metadata.is_none()
        && request.files.is_empty();
    if nothing {
        return Err(Failure::request(InputError::NothingRequested));
    }
    Ok(request)
}

fn read_bytes(path: &Path, what: &'static str) -> Result<Vec<u8>, Failure> {
    std::fs::read(path).map_err(|source| {
        Failure::request(InputError::Reading {
            what,
            path: path.display().to_string(),
            source,
        })
    })
}

fn read_text(path: &Path, what: &'static str) -> Result<String, Failure> {
    let bytes = read_bytes(path, what)?;
    String::from_utf8(bytes).map_err(|_| {
        Failure::request(InputError::Invalid {
            what,
            path: path.display().to_string(),
            reason: "not UTF-8 text".to_owned(),
        })
    })
}

/// Reads the first line of the password file. The error never quotes the file's contents.
fn read_password(path: &Path) -> Result<Password, Failure> {
    let what = "the root password";
    let text = read_text(path, what)?;
    let first_line = text.lines().next().unwrap_or("").trim_end_matches('\r');
    if first_line.is_empty() {
        return Err(Failure::request(InputError::Invalid {
            what,
            path: path.display().to_string(),
            reason: "the first line is empty".to_owned(),
        }));
    }
    Ok(Password::new(first_line.to_owned()))
}

fn check_readable_file(path: &Path) -> Result<(), Failure> {
    let what = "a file to inject";
    let file = std::fs::File::open(path).map_err(|source| {
        Failure::request(InputError::Reading {
            what,
            path: path.display().to_string(),
            source,
        })
    })?;
    let metadata = file.metadata().map_err(|source| {
        Failure::request(InputError::Reading {
            what,
            path: path.display().to_string(),
            source,
        })
    })?;
    if !metadata.is_file() {
        return Err(Failure::request(InputError::Invalid {
            what,
            path: path.display().to_string(),
            reason: "not a regular file".to_owned(),
        }));
    }
    Ok(())
}

fn print_report(report: &Report, json: bool) -> Result<(), Failure> {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(report).map_err(Failure::request)?
        );
        return Ok(());
    }
    for item in &report.items {
        match &item.outcome {
            Outcome::Applied => println!("applied    {:<9} {}", item.kind.to_string(), item.target),
            Outcome::Unchanged { reason } => {
                println!(
                    "unchanged  {:<9} {} ({reason})",
                    item.kind.to_string(),
                    item.target
                )
            }
            Outcome::Warning { reason } => {
                println!(
                    "warning    {:<9} {}: {reason}",
                    item.kind.to_string(),
                    item.target
                )
            }
        }
    }
    Ok(())
}
