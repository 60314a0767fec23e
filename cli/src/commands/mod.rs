//! The subcommands, and opening an image as they all do.

pub mod backends;
pub mod inject;
pub mod inspect;

use vfs_core::image::{ImageRequest, ResolvedImage};
use vfs_core::registry::{self, OpenOptions};
use vfs_core::GuestFs;

use crate::args::ImageArgs;
use crate::failure::Failure;
use crate::progress::Progress;

/// Settles the image's format and partition from the flags, its metadata and detection.
pub fn resolve_image(args: &ImageArgs) -> Result<ResolvedImage, Failure> {
    let request = ImageRequest {
        path: args.image.clone(),
        format: args.format,
        partition: args.partition.clone(),
        meta_path: args.image_meta.clone(),
        allow_outside_backing: args.allow_outside_backing,
    };
    let image = request.resolve().map_err(Failure::request)?;
    tracing::info!(
        image = %image.path.display(),
        format = %image.format,
        format_source = %image.format_source,
        partition = %image.partition,
        partition_source = %image.partition_source,
        "image settings"
    );
    Ok(image)
}

/// Opens a resolved image with the chosen backend, showing progress on a terminal.
///
/// As root, it first removes the empty private directories that killed runs left in the
/// temporary directory; see [`mount_loop::remove_stale_dirs`].
///
/// An image opened for writing has its filesystems mounted read-only until
/// [`GuestFs::enable_writes`], so that a request that fails before writing leaves the image
/// unchanged.
pub fn open_image(
    args: &ImageArgs,
    image: ResolvedImage,
    read_only: bool,
) -> Result<Box<dyn GuestFs>, Failure> {
    if nix::unistd::geteuid().is_root() {
        mount_loop::remove_stale_dirs(&std::env::temp_dir());
    }

    let options = OpenOptions {
        image,
        read_only,
        defer_writes: !read_only,
        backend_settings: args.backend_settings.clone(),
    };
    let backend =
        registry::choose(&args.backend, Some(&options.image)).map_err(Failure::request)?;
    let _progress = Progress::start(format!("Opening the image with {}", backend.name));
    registry::open_with(backend, &options).map_err(Failure::request)
}
