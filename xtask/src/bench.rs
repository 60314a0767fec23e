//! `cargo xtask bench`: times `guest-inject` against the tools and scripts it replaces, on
//! the same images and the same request, alternating the two in one run, and prints the
//! medians and ratios.
//!
//! - `localmount`: the full request (SSH key, root password, network, metadata, one extra
//!   file) through `guest-inject --backend localmount` against a shell script that does
//!   the same by hand (`xtask/scripts/manual-*.sh`), on the Debian GPT disk as raw and as
//!   qcow2, plus the peak memory of `guest-inject` from `/usr/bin/time -v`.
//! - `guestfs`: the same request through `guest-inject --backend guestfs`, with the
//!   partition from the image metadata and with `auto`, against `virt-customize`.
//! - `load`: 16 `guest-inject` processes at once with `localmount` on 16 small images (half
//!   raw, half qcow2), and 4 at once with `guestfs`, as images per second.
//! - `transactional`: the cost of `--transactional` on each backend.
//!
//! Each run gets a fresh copy of the image, made outside the timed part.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testkit::images::{self, TestImage};

use crate::demo::{workspace_root, SAMPLE_KEY};
use crate::{cargo, run_command, setup, TaskError};

/// Which part of the benchmark to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Part {
    All,
    Localmount,
    Guestfs,
    Load,
    Transactional,
}

/// Options of `cargo xtask bench`.
#[derive(Debug, clap::Args)]
pub(crate) struct BenchArgs {
    /// Which part to run.
    #[arg(long, value_enum, default_value = "all")]
    only: Part,
    /// Timed runs of each side for the localmount comparison.
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// Timed runs of each side for the guestfs comparison (each takes 20-60 s).
    #[arg(long, default_value_t = 2)]
    guestfs_runs: usize,
}

/// The libguestfs settings for this kind of host, for both guest-inject and virt-customize.
const LIBGUESTFS_ENV: [(&str, &str); 2] = [
    ("LIBGUESTFS_BACKEND", "direct"),
    ("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg"),
];

/// Runs the benchmark.
pub(crate) fn run(args: BenchArgs) -> Result<(), TaskError> {
    setup::run()?;
    run_command(cargo().args(["build", "--release", "--quiet", "-p", "cli"]))?;
    let bench = Bench::prepare()?;
    let mut report = Vec::new();

    let wants = |part: Part| args.only == Part::All || args.only == part;
    if wants(Part::Localmount) {
        report.extend(bench.localmount(args.runs)?);
    }
    if wants(Part::Transactional) {
        report.extend(bench.transactional(args.runs)?);
    }
    if wants(Part::Load) {
        report.extend(bench.load()?);
    }
    if wants(Part::Guestfs) {
        report.extend(bench.guestfs(args.guestfs_runs)?);
    }

    let text = report.join("\n");
    println!("\n{text}");
    let path = bench.work.join("report.md");
    fs::write(&path, format!("{text}\n"))
        .map_err(|source| TaskError::io("writing", &path, source))?;
    println!("\n(also written to {})", path.display());
    Ok(())
}

struct Bench {
    binary: PathBuf,
    work: PathBuf,
    inputs: PathBuf,
}

impl Bench {
    fn prepare() -> Result<Self, TaskError> {
        let root = workspace_root();
        let work = root.join("target/bench");
        let inputs = work.join("inputs");
        fs::create_dir_all(&inputs).map_err(|source| TaskError::io("creating", &inputs, source))?;

        let password = inject::Password::new("bench-password-1".to_owned());
        let hash =
            inject::password::hash(&password, inject::HashMethod::Sha512).map_err(|err| {
                TaskError::Bench {
                    reason: format!("hashing the password: {err}"),
                }
            })?;
        for (name, contents) in [
            ("key.pub", SAMPLE_KEY.to_owned()),
            ("password", "bench-password-1\n".to_owned()),
            ("hash", hash),
            ("interfaces", "auto eth0\niface eth0 inet dhcp\n".to_owned()),
            (
                "meta.json",
                "{\"uuid\": \"7d1f0c1e\", \"name\": \"bench-vm\"}\n".to_owned(),
            ),
            ("app.cfg", "listen = 0.0.0.0:8080\n".to_owned()),
        ] {
            let path = inputs.join(name);
            fs::write(&path, contents).map_err(|source| TaskError::io("writing", &path, source))?;
        }
        Ok(Self {
            binary: root.join("target/release/guest-inject"),
            work,
            inputs,
        })
    }

    fn input(&self, name: &str) -> String {
        self.inputs.join(name).display().to_string()
    }

    /// Returns the `guest-inject inject` command for the benchmark request.
    fn inject_command(&self, backend: &str, image: &Path, extra: &[&str]) -> Command {
        let mut command = Command::new(&self.binary);
        command
            .args(["-q", "inject", "--backend", backend])
            .args(["--ssh-key", &self.input("key.pub")])
            .args(["--admin-password-file", &self.input("password")])
            .args(["--net", &self.input("interfaces")])
            .args(["--metadata", &self.input("meta.json")])
            .args([
                "--file",
                &format!("/opt/app/conf/app.cfg={}", self.input("app.cfg")),
            ])
            .args(extra)
            .arg(image)
            .envs(LIBGUESTFS_ENV)
            .stdout(Stdio::null());
        command
    }

    /// Copies `image` into a fresh directory for one run.
    fn fresh(&self, image: &TestImage, name: &str) -> Result<TestImage, TaskError> {
        let dir = self.work.join("runs").join(name);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).map_err(|source| TaskError::io("creating", &dir, source))?;
        image
            .fresh_copy(&dir)
            .map_err(|source| TaskError::BuildingImage {
                image: "copy",
                source,
            })
    }

    fn localmount(&self, runs: usize) -> Result<Vec<String>, TaskError> {
        let mut lines = vec![
            "## localmount against a hand-written script".to_owned(),
            String::new(),
            format!("Full request, {runs} alternating runs each, median wall time."),
            String::new(),
            "| image | guest-inject | script | ratio | guest-inject peak RSS |".to_owned(),
            "| --- | --- | --- | --- | --- |".to_owned(),
        ];
        for (label, image, script) in [
            (
                "GPT raw, partition from metadata",
                built(images::gpt_raw(), "gpt.raw")?,
                "manual-raw.sh",
            ),
            (
                "GPT qcow2, partition from metadata",
                built(images::gpt_qcow2(), "gpt.qcow2")?,
                "manual-qcow2.sh",
            ),
        ] {
            let partition =
                images::partition(&image.path, 2).map_err(|source| TaskError::BuildingImage {
                    image: "partition table",
                    source,
                })?;
            let script = workspace_root().join("xtask/scripts").join(script);
            let mut ours = Vec::new();
            let mut theirs = Vec::new();
            for run in 0..runs {
                let copy = self.fresh(&image, "ours")?;
                ours.push(time(&mut self.inject_command(
                    "localmount",
                    &copy.path,
                    &[],
                ))?);
                let copy = self.fresh(&image, "script")?;
                let mut command = Command::new("bash");
                command
                    .arg(&script)
                    .arg(&copy.path)
                    .arg(partition.start.to_string())
                    .arg(partition.size.to_string())
                    .arg(&self.inputs);
                theirs.push(time(&mut command)?);
                eprintln!("{label}: run {} of {runs}", run + 1);
            }
            let copy = self.fresh(&image, "memory")?;
            let peak = peak_rss_kib(&mut self.inject_command("localmount", &copy.path, &[]))?;
            lines.push(format!(
                "| {label} | {} | {} | {:.2}x | {:.1} MiB |",
                ms(median(&ours)),
                ms(median(&theirs)),
                median(&ours).as_secs_f64() / median(&theirs).as_secs_f64(),
                peak as f64 / 1024.0,
            ));
        }
        Ok(lines)
    }

    fn transactional(&self, runs: usize) -> Result<Vec<String>, TaskError> {
        let help = Command::new(&self.binary)
            .args(["inject", "--help"])
            .output()
            .map_err(|source| TaskError::StartingCommand {
                command: "guest-inject inject --help".into(),
                source,
            })?;
        if !String::from_utf8_lossy(&help.stdout).contains("--transactional") {
            return Ok(vec![
                "## --transactional".into(),
                String::new(),
                "not available in this build".into(),
            ]);
        }
        let mut lines = vec![
            String::new(),
            "## Cost of --transactional".to_owned(),
            String::new(),
            format!(
                "Full request, {runs} alternating runs each (guestfs: 1 each), median wall time."
            ),
            String::new(),
            "| backend, image | default | --transactional | ratio |".to_owned(),
            "| --- | --- | --- | --- |".to_owned(),
        ];
        for (backend, label, image, count) in [
            (
                "localmount",
                "GPT raw",
                built(images::gpt_raw(), "gpt.raw")?,
                runs,
            ),
            (
                "localmount",
                "GPT qcow2",
                built(images::gpt_qcow2(), "gpt.qcow2")?,
                runs,
            ),
            (
                "guestfs",
                "GPT qcow2",
                built(images::gpt_qcow2(), "gpt.qcow2")?,
                1,
            ),
        ] {
            let mut plain = Vec::new();
            let mut transactional = Vec::new();
            for _ in 0..count {
                let copy = self.fresh(&image, "plain")?;
                plain.push(time(&mut self.inject_command(backend, &copy.path, &[]))?);
                let copy = self.fresh(&image, "transactional")?;
                transactional.push(time(&mut self.inject_command(
                    backend,
                    &copy.path,
                    &["--transactional"],
                ))?);
            }
            lines.push(format!(
                "| {backend}, {label} | {} | {} | {:.2}x |",
                ms(median(&plain)),
                ms(median(&transactional)),
                median(&transactional).as_secs_f64() / median(&plain).as_secs_f64(),
            ));
        }
        Ok(lines)
    }

    fn load(&self) -> Result<Vec<String>, TaskError> {
        let raw = built(images::tiny_gpt_raw(), "tiny-gpt.raw")?;
        let qcow2 = built(images::tiny_gpt_qcow2(), "tiny-gpt.qcow2")?;
        let mut lines = vec![
            String::new(),
            "## Concurrent requests".to_owned(),
            String::new(),
            "Separate `guest-inject` processes started together on separate 64 MiB images."
                .to_owned(),
            String::new(),
            "| backend | processes | wall time | images per second |".to_owned(),
            "| --- | --- | --- | --- |".to_owned(),
        ];
        for (backend, count) in [("localmount", 16), ("guestfs", 4)] {
            let mut copies = Vec::new();
            for index in 0..count {
                let image = if index % 2 == 0 { &raw } else { &qcow2 };
                let image = if backend == "guestfs" { &qcow2 } else { image };
                copies.push(self.fresh(image, &format!("load-{index}"))?);
            }
            let started = Instant::now();
            let mut children = Vec::new();
            for copy in &copies {
                let child = self
                    .inject_command(backend, &copy.path, &[])
                    .spawn()
                    .map_err(|source| TaskError::StartingCommand {
                        command: "guest-inject".into(),
                        source,
                    })?;
                children.push(child);
            }
            let mut failures = 0;
            for mut child in children {
                let status = child.wait().map_err(|source| TaskError::StartingCommand {
                    command: "guest-inject".into(),
                    source,
                })?;
                if !status.success() {
                    failures += 1;
                }
            }
            let wall = started.elapsed();
            if failures > 0 {
                return Err(TaskError::Bench {
                    reason: format!("{failures} of {count} concurrent {backend} runs failed"),
                });
            }
            lines.push(format!(
                "| {backend} | {count} | {:.2} s | {:.1} |",
                wall.as_secs_f64(),
                count as f64 / wall.as_secs_f64()
            ));
        }
        Ok(lines)
    }

    fn guestfs(&self, runs: usize) -> Result<Vec<String>, TaskError> {
        let image = built(images::gpt_qcow2(), "gpt.qcow2")?;
        let mut metadata = Vec::new();
        let mut auto = Vec::new();
        let mut customize = Vec::new();
        for run in 0..runs {
            let copy = self.fresh(&image, "guestfs-meta")?;
            metadata.push(time(&mut self.inject_command("guestfs", &copy.path, &[]))?);
            let copy = self.fresh(&image, "virt-customize")?;
            customize.push(time(&mut self.virt_customize(&copy.path))?);
            let copy = self.fresh(&image, "guestfs-auto")?;
            auto.push(time(&mut self.inject_command(
                "guestfs",
                &copy.path,
                &["--partition", "auto"],
            ))?);
            eprintln!("guestfs: run {} of {runs}", run + 1);
        }
        let base = median(&customize).as_secs_f64();
        Ok(vec![
            String::new(),
            "## guestfs against virt-customize".to_owned(),
            String::new(),
            format!("Full request on the GPT qcow2 disk, {runs} alternating runs each, median wall time, TCG."),
            String::new(),
            "| tool | wall time | ratio to virt-customize |".to_owned(),
            "| --- | --- | --- |".to_owned(),
            format!("| virt-customize | {:.1} s | 1.00x |", base),
            format!(
                "| guest-inject, partition from metadata | {:.1} s | {:.2}x |",
                median(&metadata).as_secs_f64(),
                median(&metadata).as_secs_f64() / base
            ),
            format!(
                "| guest-inject, --partition auto | {:.1} s | {:.2}x |",
                median(&auto).as_secs_f64(),
                median(&auto).as_secs_f64() / base
            ),
        ])
    }

    fn virt_customize(&self, image: &Path) -> Command {
        let mut command = Command::new("virt-customize");
        command
            .arg("--quiet")
            .arg("--no-network")
            .args(["--format", "qcow2", "-a"])
            .arg(image)
            .args([
                "--ssh-inject",
                &format!("root:file:{}", self.input("key.pub")),
            ])
            .args([
                "--root-password",
                &format!("file:{}", self.input("password")),
            ])
            .args(["--mkdir", "/etc/network"])
            .args([
                "--upload",
                &format!("{}:/etc/network/interfaces", self.input("interfaces")),
            ])
            .args(["--upload", &format!("{}:/meta.js", self.input("meta.json"))])
            .args(["--mkdir", "/opt/app/conf"])
            .args([
                "--upload",
                &format!("{}:/opt/app/conf/app.cfg", self.input("app.cfg")),
            ])
            .envs(LIBGUESTFS_ENV)
            .stdout(Stdio::null());
        command
    }
}

fn built(
    result: testkit::images::Result<TestImage>,
    name: &'static str,
) -> Result<TestImage, TaskError> {
    result.map_err(|source| TaskError::BuildingImage {
        image: name,
        source,
    })
}

/// Runs a command to completion and returns its wall time; a failure ends the benchmark.
fn time(command: &mut Command) -> Result<Duration, TaskError> {
    let started = Instant::now();
    let output =
        command
            .stderr(Stdio::piped())
            .output()
            .map_err(|source| TaskError::StartingCommand {
                command: crate::describe(command),
                source,
            })?;
    let elapsed = started.elapsed();
    if !output.status.success() {
        return Err(TaskError::Bench {
            reason: format!(
                "{} failed: {}",
                crate::describe(command),
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        });
    }
    Ok(elapsed)
}

/// Runs a command under `/usr/bin/time -v` and returns its maximum resident set size in KiB.
fn peak_rss_kib(command: &mut Command) -> Result<u64, TaskError> {
    let mut timed = Command::new("/usr/bin/time");
    timed
        .arg("-v")
        .arg(command.get_program())
        .args(command.get_args());
    for (name, value) in command.get_envs() {
        if let Some(value) = value {
            timed.env(name, value);
        }
    }
    let output =
        timed
            .stdout(Stdio::null())
            .output()
            .map_err(|source| TaskError::StartingCommand {
                command: "/usr/bin/time".into(),
                source,
            })?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        return Err(TaskError::Bench {
            reason: format!("measuring memory failed: {}", stderr.trim()),
        });
    }
    stderr
        .lines()
        .find_map(|line| {
            line.trim()
                .strip_prefix("Maximum resident set size (kbytes): ")
        })
        .and_then(|value| value.trim().parse().ok())
        .ok_or_else(|| TaskError::Bench {
            reason: "no maximum resident set size in /usr/bin/time's output".into(),
        })
}

fn median(samples: &[Duration]) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    sorted[sorted.len() / 2]
}

fn ms(duration: Duration) -> String {
    format!("{:.0} ms", duration.as_secs_f64() * 1000.0)
}
