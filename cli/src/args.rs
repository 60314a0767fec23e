//! Command-line arguments of `guest-inject`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use vfs_core::image::{DiskFormat, PartitionSelector};
use vfs_core::registry::BackendChoice;

/// Write SSH keys, the root password, network settings, metadata and files into a VM disk
/// image before its first boot, without trusting the guest filesystem.
#[derive(Debug, Parser)]
#[command(name = "guest-inject", version, propagate_version = true)]
pub struct Cli {
    /// More log output on stderr (-v info, -vv debug, -vvv trace); RUST_LOG overrides it.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    /// Only errors on stderr.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,

    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write the requested items into the image.
    Inject(InjectArgs),
    /// Show the image's partitions, filesystems and the filesystem that would be used.
    Inspect(InspectArgs),
    /// List the registered backends, whether each can run here, and why not.
    Backends(BackendsArgs),
}

/// How to find and open the image; shared by `inject` and `inspect`.
#[derive(Debug, Args)]
pub struct ImageArgs {
    /// Which backend to use: auto, guestfs or localmount.
    #[arg(long, default_value = "auto", value_name = "auto|NAME")]
    pub backend: BackendChoice,

    /// Disk format (default: the image metadata, else detection).
    #[arg(long, value_name = "raw|qcow2", value_parser = parse_format)]
    pub format: Option<DiskFormat>,

    /// Which filesystem to use (default: the image metadata, else auto).
    #[arg(long, value_name = "none|auto|N|label:NAME|uuid:UUID", value_parser = parse_partition)]
    pub partition: Option<PartitionSelector>,

    /// Image metadata file (default: IMAGE.meta.json when present).
    #[arg(long, value_name = "FILE")]
    pub image_meta: Option<PathBuf>,

    /// Open a detected qcow2 image even when its backing file lies outside the image's
    /// directory; only for backing chains you trust.
    #[arg(long)]
    pub allow_outside_backing: bool,

    /// A backend setting as KEY=VALUE, passed to the backend as given; repeatable.
    #[arg(long = "backend-setting", value_name = "KEY=VALUE")]
    pub backend_settings: Vec<String>,

    /// The disk image.
    #[arg(value_name = "IMAGE")]
    pub image: PathBuf,
}

/// Arguments of `guest-inject inject`.
#[derive(Debug, Args)]
pub struct InjectArgs {
    #[command(flatten)]
    pub image: ImageArgs,

    /// Public key for root's authorized_keys.
    #[arg(long, value_name = "FILE")]
    pub ssh_key: Option<PathBuf>,

    /// Root password, the first line of FILE.
    #[arg(long, value_name = "FILE")]
    pub admin_password_file: Option<PathBuf>,

    /// Password hash method; md5 and sha256 only for very old guests.
    #[arg(long, default_value = "sha512", value_name = "sha512|sha256|md5")]
    pub password_hash: inject::HashMethod,

    /// Contents for /etc/network/interfaces.
    #[arg(long, value_name = "FILE")]
    pub net: Option<PathBuf>,

    /// JSON object written to /meta.js.
    #[arg(long, value_name = "FILE")]
    pub metadata: Option<PathBuf>,

    /// A file to write into the guest; repeatable.
    #[arg(long = "file", value_name = "GUEST_PATH=HOST_FILE", value_parser = parse_file_spec)]
    pub files: Vec<FileSpec>,

    /// Comma list of key,net,metadata,password,files whose failure only warns.
    #[arg(long, value_name = "ITEMS", value_delimiter = ',')]
    pub best_effort: Vec<inject::ItemKind>,

    /// Write into a temporary qcow2 overlay (under TMPDIR) and commit it into the image
    /// only when every item succeeded, so a failed request leaves the image byte-identical.
    /// Needs qemu-img, and room in TMPDIR for everything the request writes.
    #[arg(long)]
    pub transactional: bool,

    /// Print the per-item report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `guest-inject inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    #[command(flatten)]
    pub image: ImageArgs,

    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `guest-inject backends`.
#[derive(Debug, Args)]
pub struct BackendsArgs {
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,

    /// Also try each available backend for real (for guestfs, an appliance launch of about
    /// 20 s under software emulation) and report how long it took.
    #[arg(long)]
    pub check: bool,
}

/// One `--file GUEST_PATH=HOST_FILE` argument, with the guest path already checked.
#[derive(Debug, Clone)]
pub struct FileSpec {
    /// Where the file goes in the guest.
    pub guest_path: vfs_core::GuestPath,
    /// The host file to copy.
    pub host_file: PathBuf,
}

fn parse_format(text: &str) -> Result<DiskFormat, String> {
    text.parse()
        .map_err(|err: vfs_core::image::ImageError| err.to_string())
}

fn parse_partition(text: &str) -> Result<PartitionSelector, String> {
    text.parse()
        .map_err(|err: vfs_core::image::ImageError| err.to_string())
}

fn parse_file_spec(text: &str) -> Result<FileSpec, String> {
    let (guest, host) = text
        .split_once('=')
        .ok_or_else(|| format!("expected GUEST_PATH=HOST_FILE, got {text:?}"))?;
    if host.is_empty() {
        return Err(format!("missing host file after '=' in {text:?}"));
    }
    let guest_path = vfs_core::GuestPath::new(guest).map_err(|err| err.to_string())?;
    if guest_path.is_root() {
        return Err(format!(
            "guest path in {text:?} is the root directory, not a file"
        ));
    }
    Ok(FileSpec {
        guest_path,
        host_file: PathBuf::from(host),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_spec_splits_at_first_equals() {
        let spec = parse_file_spec("/opt/app/x.cfg=/tmp/a=b").unwrap();
        assert_eq!(spec.guest_path.as_str(), "/opt/app/x.cfg");
        assert_eq!(spec.host_file, PathBuf::from("/tmp/a=b"));
    }

    #[test]
    fn file_spec_rejects_dotdot_and_missing_parts() {
        assert!(parse_file_spec("/etc/../../x=/tmp/a").is_err());
        assert!(parse_file_spec("/etc/x").is_err());
        assert!(parse_file_spec("/etc/x=").is_err());
        assert!(parse_file_spec("/=/tmp/a").is_err());
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
