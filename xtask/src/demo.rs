//! `cargo xtask demo`: injects a request into the sample Debian image with every backend
//! that can run here, then reads the changed guest files back with `debugfs`, without any
//! backend, and prints them.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use testkit::images::{self, Ext4Reader};

use crate::{cargo, run_command, setup, TaskError};

/// A sample public key; the demo needs no private key.
pub(crate) const SAMPLE_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBXW5j1kzKpSYQ+3VYpwqPC6fQ6sl1ub+f4Gfa26V1zN ops@example\n";
/// The demo password; printed nowhere, only its hash is shown shortened.
const SAMPLE_PASSWORD: &str = "demo-password-1\n";
const SAMPLE_INTERFACES: &str = "auto eth0\niface eth0 inet dhcp\n";
const SAMPLE_METADATA: &str =
    "{\"uuid\": \"d6f1c6a2-5b7e-4f1e-9d1a-2c4b8e6f0a11\", \"name\": \"demo-vm\"}\n";
const SAMPLE_FILE: &str = "listen = 0.0.0.0:8080\n";

/// The guest files the demo request changes, in the order they are printed.
const CHANGED_FILES: [&str; 5] = [
    "/root/.ssh/authorized_keys",
    "/etc/shadow",
    "/etc/network/interfaces",
    "/meta.js",
    "/opt/app/conf/app.cfg",
];

/// Runs the demo.
pub(crate) fn run() -> Result<(), TaskError> {
    setup::run()?;
    run_command(cargo().args(["build", "--release", "--quiet", "-p", "cli"]))?;
    let binary = workspace_root().join("target/release/guest-inject");

    eprintln!("Building the sample image (cached after the first run)...");
    let sample = images::gpt_qcow2().map_err(|source| TaskError::BuildingImage {
        image: "gpt.qcow2",
        source,
    })?;
    let work = workspace_root().join("target/demo");
    let inputs = SampleInputs::write(&work.join("inputs"))?;

    let backends = usable_backends(&binary)?;
    if backends.is_empty() {
        return Err(TaskError::Demo {
            reason: "no backend can run on this host; run `guest-inject backends` to see why"
                .into(),
        });
    }

    for backend in backends {
        let dir = work.join(&backend);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).map_err(|source| TaskError::io("creating", &dir, source))?;
        let image = sample
            .fresh_copy(&dir)
            .map_err(|source| TaskError::BuildingImage {
                image: "gpt.qcow2",
                source,
            })?;

        println!("\n=== backend {backend}: {}", image.path.display());
        let mut command = Command::new(&binary);
        command
            .args(["inject", "--backend", &backend])
            .args([
                "--ssh-key",
                &inputs.key,
                "--admin-password-file",
                &inputs.password,
            ])
            .args(["--net", &inputs.interfaces, "--metadata", &inputs.metadata])
            .args(["--file", &format!("/opt/app/conf/app.cfg={}", inputs.file)])
            .arg(&image.path);
        let started = Instant::now();
        run_command(&mut command)?;
        println!("guest-inject took {:.2} s", started.elapsed().as_secs_f64());

        println!("--- read back with debugfs, without any backend:");
        let reader = image
            .root_reader()
            .map_err(|source| TaskError::BuildingImage {
                image: "gpt.qcow2",
                source,
            })?;
        print_guest_files(&reader)?;
    }
    Ok(())
}

/// The demo inputs, written to host files as a platform would pass them.
struct SampleInputs {
    key: String,
    password: String,
    interfaces: String,
    metadata: String,
    file: String,
}

impl SampleInputs {
    fn write(dir: &Path) -> Result<Self, TaskError> {
        fs::create_dir_all(dir).map_err(|source| TaskError::io("creating", dir, source))?;
        let write = |name: &str, contents: &str| -> Result<String, TaskError> {
            let path = dir.join(name);
            fs::write(&path, contents).map_err(|source| TaskError::io("writing", &path, source))?;
            Ok(path.display().to_string())
        };
        Ok(Self {
            key: write("key.pub", SAMPLE_KEY)?,
            password: write("password", SAMPLE_PASSWORD)?,
            interfaces: write("interfaces", SAMPLE_INTERFACES)?,
            metadata: write("meta.json", SAMPLE_METADATA)?,
            file: write("app.cfg", SAMPLE_FILE)?,
        })
    }
}

/// Returns the backends `guest-inject backends` reports as able to run here.
fn usable_backends(binary: &Path) -> Result<Vec<String>, TaskError> {
    let output = Command::new(binary)
        .args(["backends", "--json"])
        .output()
        .map_err(|source| TaskError::StartingCommand {
            command: "guest-inject backends".into(),
            source,
        })?;
    let rows: serde_json::Value =
        serde_json::from_slice(&output.stdout).map_err(|err| TaskError::Demo {
            reason: format!("guest-inject backends printed invalid JSON: {err}"),
        })?;
    let mut names = Vec::new();
    for row in rows.as_array().into_iter().flatten() {
        let name = row["name"].as_str().unwrap_or_default();
        if row["available"].as_bool() == Some(true) {
            names.push(name.to_owned());
        } else {
            println!(
                "skipping backend {name}: {}",
                row["reason"].as_str().unwrap_or("unavailable")
            );
        }
    }
    Ok(names)
}

fn print_guest_files(reader: &Ext4Reader) -> Result<(), TaskError> {
    for path in CHANGED_FILES {
        let stat = reader
            .stat(path)
            .map_err(|source| TaskError::BuildingImage {
                image: "gpt.qcow2",
                source,
            })?;
        let text = reader
            .cat_string(path)
            .map_err(|source| TaskError::BuildingImage {
                image: "gpt.qcow2",
                source,
            })?;
        println!(
            "{path}  (mode {:04o}, uid {}, gid {})",
            stat.mode, stat.uid, stat.gid
        );
        let shown: Vec<String> = if path == "/etc/shadow" {
            text.lines()
                .filter(|line| line.starts_with("root:"))
                .map(shorten_hash)
                .collect()
        } else {
            text.lines().map(str::to_owned).collect()
        };
        for line in shown {
            println!("    {line}");
        }
    }
    Ok(())
}

/// Shortens root's hash in a shadow line to its method and salt, so the demo output stays
/// readable.
fn shorten_hash(line: &str) -> String {
    let mut fields: Vec<String> = line.split(':').map(str::to_owned).collect();
    if let Some(hash) = fields.get_mut(1) {
        if hash.len() > 24 {
            *hash = format!("{}... ({} characters)", &hash[..24], hash.len());
        }
    }
    fields.join(":")
}

pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_owned()
}
