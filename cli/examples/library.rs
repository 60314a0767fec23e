//! Uses the crates as a library: opens a raw image with the localmount backend, injects an
//! SSH key and a network configuration, and closes the image.
//!
//! Run as root: `cargo run -p cli --example library -- disk.raw`.

use vfs_core::image::ImageRequest;
use vfs_core::registry::{self, BackendChoice, OpenOptions};
// Linking the backend crate is what registers it.
use vfs_localmount as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).ok_or("usage: library IMAGE")?;
    let image = ImageRequest {
        path: path.into(),
        ..Default::default()
    }
    .resolve()?;
    let options = OpenOptions {
        defer_writes: true,
        ..OpenOptions::new(image)
    };
    let mut fs = registry::open(&BackendChoice::Named("localmount".into()), &options)?;

    let request = inject::Request {
        ssh_key: Some(
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBXW5j1kzKpSYQ+3VYpwqPC6fQ6sl1ub+f4Gfa26V1zN ops"
                .into(),
        ),
        network: Some(b"auto eth0\niface eth0 inet dhcp\n".to_vec()),
        ..Default::default()
    };
    let result = inject::inject(fs.as_mut(), &request);
    fs.close()?;
    for item in result?.items {
        println!("{}: {}", item.kind, item.target);
    }
    Ok(())
}
