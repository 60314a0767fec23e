//! Finding what a test left attached: loop devices backed by files under a directory,
//! mounts on or from them, and the helper processes (`qemu-nbd`, `nbdfuse`,
//! `qemu-storage-daemon`, `qemu-system-*`) that this process started or that serve a
//! file under the directory.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use super::{Result, TestImageError};

/// The program names that count as helper processes. `qemu-system-` matches every
/// architecture.
const HELPER_PROGRAMS: &[&str] = &["qemu-nbd", "nbdfuse", "qemu-storage-daemon", "qemu-system-"];

/// How far up the parent chain to look before giving up on a process.
const MAX_ANCESTORS: usize = 64;

/// A loop device whose backing file is under the checked directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeakedLoopDevice {
    /// The device, such as `/dev/loop3`.
    pub device: PathBuf,
    /// The backing file as the kernel reports it.
    pub backing_file: PathBuf,
}

/// A mount on or from something under the checked directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeakedMount {
    pub source: String,
    pub mount_point: PathBuf,
    pub fs_type: String,
}

/// A helper process still running (or not yet reaped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeakedProcess {
    pub pid: u32,
    /// The program name, from `argv[0]` or, for a zombie, from `/proc/PID/stat`.
    pub program: String,
    /// The command line, arguments separated by spaces; empty for a zombie.
    pub command_line: String,
}

/// Everything [`leak_check`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Leaks {
    pub loop_devices: Vec<LeakedLoopDevice>,
    pub mounts: Vec<LeakedMount>,
    pub processes: Vec<LeakedProcess>,
}

impl Leaks {
    /// Returns whether nothing was left behind.
    pub fn is_empty(&self) -> bool {
        self.loop_devices.is_empty() && self.mounts.is_empty() && self.processes.is_empty()
    }
}

impl fmt::Display for Leaks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("no leaks");
        }
        for leak in &self.loop_devices {
            writeln!(
                f,
                "loop device {} backed by {}",
                leak.device.display(),
                leak.backing_file.display()
            )?;
        }
        for leak in &self.mounts {
            writeln!(
                f,
                "mount of {} on {} ({})",
                leak.source,
                leak.mount_point.display(),
                leak.fs_type
            )?;
        }
        for leak in &self.processes {
            writeln!(
                f,
                "process {} {}: {}",
                leak.pid, leak.program, leak.command_line
            )?;
        }
        Ok(())
    }
}

/// Lists what is still attached for the images under `dir`.
///
/// That is loop devices whose backing file is under `dir`, and mounts whose mount point
/// or source is under `dir` or is one of those loop devices. It also lists helper
/// processes that descend from this process or name `dir` on their command line.
///
/// Descendants of this process count whichever thread started them, so tests that start
/// helpers and check for leaks must not run in parallel (`--test-threads=1`).
///
/// NOTE: a FUSE mount outside `dir` whose daemon detached from this process is not
/// found, because nothing in `/proc` ties it to the test. Tests that create mount points
/// should create them under `dir`.
pub fn leak_check(dir: &Path) -> Result<Leaks> {
    let dir = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned());
    let loop_devices = loop_devices_under(&dir)?;
    let loop_names: Vec<String> = loop_devices
        .iter()
        .map(|leak| leak.device.display().to_string())
        .collect();

    let mounts = read_mountinfo()?
        .into_iter()
        .filter(|mount| {
            mount.mount_point.starts_with(&dir)
                || Path::new(&mount.source).starts_with(&dir)
                || loop_names.contains(&mount.source)
        })
        .collect();

    Ok(Leaks {
        loop_devices,
        mounts,
        processes: helper_processes(&dir)?,
    })
}

/// Returns the mount points at or under `path`.
pub(super) fn mounts_under(path: &Path) -> Result<Vec<String>> {
    let path = fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    Ok(read_mountinfo()?
        .into_iter()
        .filter(|mount| mount.mount_point.starts_with(&path))
        .map(|mount| mount.mount_point.display().to_string())
        .collect())
}

fn loop_devices_under(dir: &Path) -> Result<Vec<LeakedLoopDevice>> {
    let sys_block = Path::new("/sys/block");
    let entries = fs::read_dir(sys_block).map_err(|source| system_error(sys_block, source))?;

    let mut leaks = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| system_error(sys_block, source))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        // The attribute exists only while a file is attached.
        let Ok(backing) = fs::read_to_string(entry.path().join("loop/backing_file")) else {
            continue;
        };
        let backing = backing.trim_end_matches('\n');
        let backing = backing.strip_suffix(" (deleted)").unwrap_or(backing);
        if Path::new(backing).starts_with(dir) {
            leaks.push(LeakedLoopDevice {
                device: Path::new("/dev").join(&name),
                backing_file: PathBuf::from(backing),
            });
        }
    }
    leaks.sort_by(|a, b| a.device.cmp(&b.device));
    Ok(leaks)
}

fn read_mountinfo() -> Result<Vec<LeakedMount>> {
    let path = Path::new("/proc/self/mountinfo");
    let text = fs::read_to_string(path).map_err(|source| system_error(path, source))?;
    Ok(text.lines().filter_map(parse_mountinfo_line).collect())
}

/// Parses one `/proc/self/mountinfo` line:
/// `ID PARENT MAJOR:MINOR ROOT MOUNT_POINT OPTIONS [OPTIONAL...] - FS_TYPE SOURCE SUPER`.
fn parse_mountinfo_line(line: &str) -> Option<LeakedMount> {
    let fields: Vec<&str> = line.split(' ').collect();
    let mount_point = fields.get(4)?;
    let separator = fields.iter().position(|field| *field == "-")?;
    Some(LeakedMount {
        mount_point: PathBuf::from(unescape_octal(mount_point)),
        fs_type: fields.get(separator + 1)?.to_string(),
        source: unescape_octal(fields.get(separator + 2)?),
    })
}

/// Undoes the kernel's `\NNN` octal escapes for space, tab, newline and backslash.
fn unescape_octal(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = bytes.get(i + 1..i + 4).and_then(|digits| {
            let digits = std::str::from_utf8(digits).ok()?;
            u8::from_str_radix(digits, 8).ok()
        });
        match (bytes[i], escaped) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

struct ProcessEntry {
    parent: u32,
    program: String,
    command_line: String,
}

fn helper_processes(dir: &Path) -> Result<Vec<LeakedProcess>> {
    let processes = read_processes()?;
    let own_pid = std::process::id();
    let dir_text = dir.display().to_string();

    let mut leaks: Vec<LeakedProcess> = processes
        .iter()
        .filter(|(pid, entry)| {
            **pid != own_pid
                && HELPER_PROGRAMS
                    .iter()
                    .any(|helper| entry.program.starts_with(helper))
                && (descends_from(&processes, **pid, own_pid)
                    || entry.command_line.contains(&dir_text))
        })
        .map(|(pid, entry)| LeakedProcess {
            pid: *pid,
            program: entry.program.clone(),
            command_line: entry.command_line.clone(),
        })
        .collect();
    leaks.sort_by_key(|leak| leak.pid);
    Ok(leaks)
}

fn descends_from(processes: &HashMap<u32, ProcessEntry>, pid: u32, ancestor: u32) -> bool {
    let mut current = pid;
    for _ in 0..MAX_ANCESTORS {
        let Some(entry) = processes.get(&current) else {
            return false;
        };
        if entry.parent == ancestor {
            return true;
        }
        if entry.parent <= 1 {
            return false;
        }
        current = entry.parent;
    }
    false
}

fn read_processes() -> Result<HashMap<u32, ProcessEntry>> {
    let proc_dir = Path::new("/proc");
    let entries = fs::read_dir(proc_dir).map_err(|source| system_error(proc_dir, source))?;

    let mut processes = HashMap::new();
    for entry in entries {
        let entry = entry.map_err(|source| system_error(proc_dir, source))?;
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse().ok())
        else {
            continue;
        };
        // A process can exit between listing and reading, so unreadable entries are
        // skipped.
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some((comm, parent)) = parse_stat_line(&stat) else {
            continue;
        };
        let command_line = fs::read(entry.path().join("cmdline"))
            .map(|raw| {
                raw.split(|byte| *byte == 0)
                    .filter(|arg| !arg.is_empty())
                    .map(String::from_utf8_lossy)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        let program = command_line
            .split(' ')
            .next()
            .filter(|arg0| !arg0.is_empty())
            .map(|arg0| arg0.rsplit('/').next().unwrap_or(arg0).to_owned())
            .unwrap_or(comm);
        processes.insert(
            pid,
            ProcessEntry {
                parent,
                program,
                command_line,
            },
        );
    }
    Ok(processes)
}

/// Parses the name and parent PID from `/proc/PID/stat`: `PID (NAME) STATE PPID ...`,
/// where NAME may itself contain spaces and parentheses.
fn parse_stat_line(stat: &str) -> Option<(String, u32)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?.to_owned();
    let mut rest = stat.get(close + 1..)?.split_whitespace();
    let _state = rest.next()?;
    let parent = rest.next()?.parse().ok()?;
    Some((name, parent))
}

fn system_error(path: &Path, source: std::io::Error) -> TestImageError {
    TestImageError::ReadingSystemState {
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serialises the tests that start helper-like children, because [`leak_check`]
    /// reports every child of the test process, whichever test started it.
    static CHILDREN: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn mountinfo_line_gives_source_and_mount_point() {
        let line = "36 35 7:3 / /tmp/my\\040mount rw,relatime shared:1 - ext4 /dev/loop3 rw";

        let mount = parse_mountinfo_line(line).unwrap();

        assert_eq!(mount.mount_point, PathBuf::from("/tmp/my mount"));
        assert_eq!(mount.source, "/dev/loop3");
        assert_eq!(mount.fs_type, "ext4");
    }

    #[test]
    fn stat_line_with_parenthesis_in_name() {
        let stat = "4242 (qemu (x)) S 17 4242 4242 0 -1";

        let (name, parent) = parse_stat_line(stat).unwrap();

        assert_eq!(name, "qemu (x)");
        assert_eq!(parent, 17);
    }

    #[test]
    fn leak_check_finds_nothing_in_empty_dir() {
        let _children = CHILDREN.lock().unwrap_or_else(|poison| poison.into_inner());
        let dir = tempfile::tempdir().unwrap();

        let leaks = leak_check(dir.path()).unwrap();

        assert!(leaks.is_empty(), "{leaks}");
    }

    #[test]
    fn leak_check_finds_child_helper_process() {
        let _children = CHILDREN.lock().unwrap_or_else(|poison| poison.into_inner());
        let dir = tempfile::tempdir().unwrap();
        // `sleep`, started through a link named like a helper, plays a forgotten
        // qemu-nbd, because its argv[0] is the link's path.
        let helper = dir.path().join("qemu-nbd");
        std::os::unix::fs::symlink("/bin/sleep", &helper).unwrap();
        let mut child = std::process::Command::new(&helper)
            .arg("30")
            .spawn()
            .unwrap();

        let leaks = leak_check(dir.path()).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();

        assert_eq!(leaks.processes.len(), 1, "{leaks}");
        assert_eq!(leaks.processes[0].pid, child.id());
        assert_eq!(leaks.processes[0].program, "qemu-nbd");
    }

    #[test]
    fn leak_check_ignores_reaped_child() {
        let _children = CHILDREN.lock().unwrap_or_else(|poison| poison.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let helper = dir.path().join("nbdfuse");
        std::os::unix::fs::symlink("/bin/sleep", &helper).unwrap();
        let mut child = std::process::Command::new(&helper)
            .arg("30")
            .spawn()
            .unwrap();
        child.kill().unwrap();
        child.wait().unwrap();

        let leaks = leak_check(dir.path()).unwrap();

        assert!(leaks.processes.is_empty(), "{leaks}");
    }
}
