//! Runs the same request through `guest-inject` with each backend on copies of one real
//! image, then reads both results back with debugfs (independently of the backends) and
//! compares them. Also searches everything the runs printed, at full debug logging, and
//! every file they left in their temporary directory, and the command line of every process
//! they started, for the password.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use testkit::images::{self, Ext4Reader, TestImage};

/// The password both runs set; it must appear nowhere in their output or leftover files.
const PASSWORD: &str = "Pa55-word-that-must-not-leak";

/// The guest paths whose contents, mode and owners must be the same on both backends.
const COMPARED_PATHS: [&str; 9] = [
    "/root/.ssh",
    "/root/.ssh/authorized_keys",
    "/etc/network",
    "/etc/network/interfaces",
    "/meta.js",
    "/opt",
    "/opt/app",
    "/opt/app/conf/x.cfg",
    "/etc/shadow",
];

struct Inputs {
    dir: tempfile::TempDir,
}

impl Inputs {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let write =
            |name: &str, contents: &str| std::fs::write(dir.path().join(name), contents).unwrap();
        write(
            "key.pub",
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBXW5j1kzKpSYQ+3VYpwqPC6fQ6sl1ub+f4Gfa26V1zN ops@example\n",
        );
        write("password", &format!("{PASSWORD}\n"));
        write("interfaces", "auto eth0\niface eth0 inet dhcp\n");
        write(
            "meta.json",
            "{\"uuid\": \"0b5e2a1c\", \"name\": \"vm-1\"}\n",
        );
        write("x.cfg", "setting = 1\n");
        Self { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

/// Runs the request and returns its output with the command lines of every process that
/// descended from it while it ran, sampled every few milliseconds.
fn run_inject(backend: &str, image: &Path, inputs: &Inputs, tmp: &Path) -> (Output, Vec<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_guest-inject"))
        .args(["-vvv", "inject", "--backend", backend])
        .args(["--ssh-key", &inputs.path("key.pub")])
        .args(["--admin-password-file", &inputs.path("password")])
        .args(["--net", &inputs.path("interfaces")])
        .args(["--metadata", &inputs.path("meta.json")])
        .args([
            "--file",
            &format!("/opt/app/conf/x.cfg={}", inputs.path("x.cfg")),
        ])
        .arg(image)
        .env("RUST_LOG", "trace")
        .env("LIBGUESTFS_DEBUG", "1")
        .env("LIBGUESTFS_TRACE", "1")
        .env("TMPDIR", tmp)
        // With TMPDIR alone, libguestfs would build a new appliance cache under it.
        .env("LIBGUESTFS_CACHEDIR", "/var/tmp")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("guest-inject starts");
    let stdout = drain(child.stdout.take().unwrap());
    let stderr = drain(child.stderr.take().unwrap());

    let mut command_lines = BTreeSet::new();
    let status = loop {
        command_lines.extend(descendant_command_lines(child.id()));
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let output = Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    };
    (output, command_lines.into_iter().collect())
}

fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        pipe.read_to_end(&mut bytes).unwrap();
        bytes
    })
}

/// Returns the command lines of `root` and every process below it, from `/proc`.
fn descendant_command_lines(root: u32) -> Vec<String> {
    let mut parents = BTreeMap::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // The parent pid is the second field after the command name, which ends at the
        // last ')'.
        let after_name = &stat[stat.rfind(')').map_or(0, |index| index + 1)..];
        if let Some(ppid) = after_name
            .split_whitespace()
            .nth(1)
            .and_then(|field| field.parse::<u32>().ok())
        {
            parents.insert(pid, ppid);
        }
    }
    let is_descendant = |mut pid: u32| {
        for _ in 0..64 {
            if pid == root {
                return true;
            }
            match parents.get(&pid) {
                Some(&parent) if parent != 0 => pid = parent,
                _ => return false,
            }
        }
        false
    };
    parents
        .keys()
        .filter(|&&pid| is_descendant(pid))
        .filter_map(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).ok())
        .map(|bytes| String::from_utf8_lossy(&bytes).replace('\0', " "))
        .collect()
}

/// Reads a file's bytes (or a directory's absence of them) with its mode and owners, with
/// root's password hash in `/etc/shadow` replaced, since each run draws its own salt.
fn read_back(reader: &Ext4Reader, path: &str) -> (Vec<u8>, u32, u32, u32, String) {
    let stat = reader
        .stat(path)
        .unwrap_or_else(|err| panic!("stat {path}: {err}"));
    let contents = if stat.kind == "regular" {
        reader.cat(path).unwrap()
    } else {
        Vec::new()
    };
    let contents = if path == "/etc/shadow" {
        mask_root_hash(&contents)
    } else {
        contents
    };
    (contents, stat.mode, stat.uid, stat.gid, stat.kind)
}

fn mask_root_hash(shadow: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(shadow);
    let mut lines: Vec<String> = Vec::new();
    for line in text.split('\n') {
        let mut fields: Vec<&str> = line.split(':').collect();
        if fields.first() == Some(&"root") && fields.len() > 1 {
            assert!(
                fields[1].starts_with("$6$"),
                "root hash is SHA-512 crypt: {}",
                fields[1].len()
            );
            fields[1] = "HASH";
        }
        lines.push(fields.join(":"));
    }
    lines.join("\n").into_bytes()
}

fn root_hash(reader: &Ext4Reader) -> String {
    let shadow = reader.cat_string("/etc/shadow").unwrap();
    let root = shadow
        .lines()
        .find(|line| line.starts_with("root:"))
        .unwrap();
    root.split(':').nth(1).unwrap().to_owned()
}

/// Returns every file under `dir` whose contents contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(current) = pending.pop() {
        for entry in std::fs::read_dir(&current).unwrap().flatten() {
            let path = entry.path();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                pending.push(path);
            } else if kind.is_file() {
                let contents = std::fs::read(&path).unwrap_or_default();
                if contents
                    .windows(needle.len())
                    .any(|window| window == needle)
                {
                    found.push(path);
                }
            }
        }
    }
    found
}

fn copy_image(image: &TestImage, dir: &Path) -> TestImage {
    image.fresh_copy(dir).expect("copying the test image")
}

#[test]
#[ignore = "needs root, loop devices, nbdfuse and a libguestfs appliance launch; run by cargo xtask integration"]
fn backends_write_identical_files_and_never_leak_password() {
    let work = tempfile::tempdir().unwrap();
    let image = images::tiny_gpt_qcow2().expect("building the test image");
    let inputs = Inputs::new();
    let mut results = Vec::new();

    for backend in ["guestfs", "localmount"] {
        let dir = work.path().join(backend);
        let tmp = dir.join("tmp");
        std::fs::create_dir_all(&tmp).unwrap();
        let copy = copy_image(&image, &dir);

        let (output, command_lines) = run_inject(backend, &copy.path, &inputs, &tmp);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{backend} failed:\n{stderr}");

        let reader = copy.root_reader().unwrap();
        let hash = root_hash(&reader);
        for (stream, text) in [("stdout", &stdout), ("stderr", &stderr)] {
            assert!(
                !text.contains(PASSWORD),
                "{backend} printed the password on {stream}"
            );
            assert!(
                !text.contains(&hash),
                "{backend} printed the password hash on {stream}"
            );
        }
        assert!(
            stderr.contains("DEBUG"),
            "{backend} ran without debug logging"
        );
        assert!(
            command_lines.len() > 1,
            "{backend}: no child process was seen, so the argument check saw nothing"
        );
        for line in &command_lines {
            assert!(
                !line.contains(PASSWORD),
                "{backend} passed the password to a process: {line}"
            );
            assert!(
                !line.contains(&hash),
                "{backend} passed the password hash to a process"
            );
        }
        let leftovers = files_containing(&tmp, PASSWORD.as_bytes());
        assert!(
            leftovers.is_empty(),
            "{backend} left the password in {leftovers:?}"
        );
        let leaks = images::leak_check(&dir).unwrap();
        assert!(leaks.is_empty(), "{backend} left {leaks}");

        let files: Vec<_> = COMPARED_PATHS
            .iter()
            .map(|path| read_back(&reader, path))
            .collect();
        results.push((backend, files));
    }

    let (_, guestfs) = &results[0];
    let (_, localmount) = &results[1];
    for (index, path) in COMPARED_PATHS.iter().enumerate() {
        assert_eq!(
            guestfs[index], localmount[index],
            "{path} differs between backends"
        );
    }
}
