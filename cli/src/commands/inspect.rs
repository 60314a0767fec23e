//! `guest-inject inspect`: partitions, filesystems, and the filesystems a request would use.

use std::fs::File;
use std::process::ExitCode;

use serde::Serialize;
use vfs_core::image::DiskFormat;

use crate::args::InspectArgs;
use crate::commands::{open_image, resolve_image};
use crate::failure::Failure;

#[derive(Debug, Serialize)]
struct InspectReport {
    image: String,
    format: String,
    format_source: String,
    partition: String,
    partition_source: String,
    backend: &'static str,
    /// Partitions and whole-disk filesystems; `None` when the table cannot be read directly
    /// (a qcow2 image is read through the backend only).
    volumes: Option<Vec<VolumeRow>>,
    mounts: Vec<MountRow>,
}

#[derive(Debug, Serialize)]
struct VolumeRow {
    partition: Option<u32>,
    offset: u64,
    size: u64,
    type_id: Option<String>,
    fs_type: Option<String>,
    label: Option<String>,
    uuid: Option<String>,
}

#[derive(Debug, Serialize)]
struct MountRow {
    mount_point: String,
    source: String,
    fs_type: String,
}

/// Opens the image read-only and prints what it holds.
pub fn run(args: InspectArgs) -> Result<ExitCode, Failure> {
    let image = resolve_image(&args.image)?;
    let volumes = if image.format == DiskFormat::Raw {
        Some(read_volumes(&image.path)?)
    } else {
        None
    };

    let fs = open_image(&args.image, image.clone(), true)?;
    let report = InspectReport {
        image: image.path.display().to_string(),
        format: image.format.to_string(),
        format_source: image.format_source.to_string(),
        partition: image.partition.to_string(),
        partition_source: image.partition_source.to_string(),
        backend: fs.backend_name(),
        volumes,
        mounts: fs
            .mounts()
            .into_iter()
            .map(|mount| MountRow {
                mount_point: mount.mount_point.to_string(),
                source: mount.source,
                fs_type: mount.fs_type,
            })
            .collect(),
    };
    fs.close().map_err(Failure::request)?;

    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(Failure::request)?
        );
    } else {
        print_report(&report);
    }
    Ok(ExitCode::SUCCESS)
}

fn read_volumes(path: &std::path::Path) -> Result<Vec<VolumeRow>, Failure> {
    let mut file = File::open(path).map_err(Failure::request)?;
    let size = file.metadata().map_err(Failure::request)?.len();
    let volumes = vfs_core::layout::list_volumes(&mut file, size).map_err(Failure::request)?;
    Ok(volumes
        .into_iter()
        .map(|volume| VolumeRow {
            partition: volume.partition.as_ref().map(|partition| partition.number),
            offset: volume.offset,
            size: volume.size,
            type_id: volume
                .partition
                .as_ref()
                .map(|partition| partition.type_id.clone()),
            fs_type: volume.fs.as_ref().map(|fs| fs.fs_type.clone()),
            label: volume.fs.as_ref().and_then(|fs| fs.label.clone()),
            uuid: volume.fs.as_ref().and_then(|fs| fs.uuid.clone()),
        })
        .collect())
}

fn print_report(report: &InspectReport) {
    println!("image:     {}", report.image);
    println!(
        "format:    {} (from {})",
        report.format, report.format_source
    );
    println!(
        "partition: {} (from {})",
        report.partition, report.partition_source
    );
    println!("backend:   {}", report.backend);
    match &report.volumes {
        Some(volumes) => {
            println!("volumes:");
            for volume in volumes {
                let name = match volume.partition {
                    Some(number) => format!("partition {number}"),
                    None => "whole disk".to_owned(),
                };
                println!(
                    "  {name:<13} offset {:>12}  size {:>12}  {:<6} label {:<10} uuid {}",
                    volume.offset,
                    volume.size,
                    volume.fs_type.as_deref().unwrap_or("-"),
                    volume.label.as_deref().unwrap_or("-"),
                    volume.uuid.as_deref().unwrap_or("-"),
                );
            }
        }
        None => println!("volumes:   not listed for non-raw images"),
    }
    println!("mounted for a request:");
    for mount in &report.mounts {
        println!(
            "  {:<12} {:<6} {}",
            mount.mount_point, mount.fs_type, mount.source
        );
    }
}
