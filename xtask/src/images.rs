//! `cargo xtask images`: builds every missing test image through `testkit::images` and
//! prints how long each took.

use std::time::Instant;

use testkit::images::{image_dir, BUILDERS};

use crate::TaskError;

/// Builds the images that are missing, in the order of [`BUILDERS`], tiny ones first.
/// An image already built shows a time near zero.
pub(crate) fn run() -> Result<(), TaskError> {
    eprintln!("test images in {}", image_dir().display());
    for (name, builder) in BUILDERS {
        eprint!("  {name:<20} ");
        let started = Instant::now();
        let image = builder().map_err(|source| {
            eprintln!("failed");
            TaskError::BuildingImage {
                image: name,
                source,
            }
        })?;
        eprintln!(
            "{:>6.1} s  {}",
            started.elapsed().as_secs_f64(),
            image.path.display()
        );
    }
    Ok(())
}
