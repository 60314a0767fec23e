//! A small Debian-like guest tree in a [`MemFs`], with the account files that injection
//! reads and changes.
//!
//! The file contents are public constants so that tests can compare against them.

use crate::memfs::MemFs;

/// The `/etc/passwd` of [`MemFs::debian_like`]: root, daemon, sshd and the user alice
/// (uid 1000).
pub const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/bash
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
sshd:x:100:65534::/run/sshd:/usr/sbin/nologin
alice:x:1000:1000:Alice,,,:/home/alice:/bin/bash
";

/// The `/etc/group` of [`MemFs::debian_like`]: root, daemon, shadow (gid 42), nogroup and
/// alice.
pub const GROUP: &str = "\
root:x:0:
daemon:x:1:
shadow:x:42:
nogroup:x:65534:
alice:x:1000:
";

/// The `/etc/shadow` of [`MemFs::debian_like`]. Root's password field is `*`, so root has
/// no usable password, and alice has a yescrypt-style hash.
pub const SHADOW: &str = "\
root:*:19800:0:99999:7:::
daemon:*:19800:0:99999:7:::
sshd:!:19800::::::
alice:$y$j9T$Yp1bqh8n5cYkHNVv0mmOc.$Qy7yY9lXo7lnQb0XHT5h3.sSXa6v1F8bT4mWk2nPq9A:19800:0:99999:7:::
";

/// The gid of the `shadow` group, which owns `/etc/shadow` on Debian.
pub const SHADOW_GID: u32 = 42;

/// The uid and gid of the user alice.
pub const ALICE_ID: u32 = 1000;

/// The `/usr/lib/os-release` of [`MemFs::debian_like`], which `/etc/os-release` links to.
pub const OS_RELEASE: &str = "\
PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"
NAME=\"Debian GNU/Linux\"
VERSION_ID=\"12\"
VERSION=\"12 (bookworm)\"
VERSION_CODENAME=bookworm
ID=debian
";

/// The `/etc/fstab` of [`MemFs::debian_like`]: one ext4 root filesystem.
pub const FSTAB: &str = "\
# /etc/fstab: static file system information.
UUID=2f7c5a1e-3d4b-4c8e-9a61-0b5e7d2c4f19 / ext4 errors=remount-ro 0 1
";

impl MemFs {
    /// Builds a small Debian-like guest: `/etc/passwd`, `/etc/group`, `/etc/shadow` (mode
    /// `0640`, `root:shadow`), `/etc/os-release` (a symlink to `../usr/lib/os-release`, as
    /// on Debian), `/etc/fstab`, `/root` (mode `0700`), `/home/alice`, `/tmp` and `/etc/ssh`.
    ///
    /// There is no `/root/.ssh` and no `/etc/network`, so callers must create them.
    pub fn debian_like() -> Self {
        Self::debian_like_with_shadow(SHADOW)
    }

    /// Builds the guest of [`MemFs::debian_like`] with an `/etc/shadow` whose last line has
    /// no final newline.
    pub fn debian_like_without_shadow_newline() -> Self {
        Self::debian_like_with_shadow(SHADOW.trim_end_matches('\n'))
    }

    /// Builds the guest of [`MemFs::debian_like`] with `shadow` as `/etc/shadow`.
    pub fn debian_like_with_shadow(shadow: &str) -> Self {
        let mut fs = Self::new();
        fs.add_dir("/etc", 0o755, 0, 0)
            .add_dir("/etc/ssh", 0o755, 0, 0)
            .add_file("/etc/passwd", PASSWD, 0o644, 0, 0)
            .add_file("/etc/group", GROUP, 0o644, 0, 0)
            .add_file("/etc/shadow", shadow, 0o640, 0, SHADOW_GID)
            .add_file("/etc/fstab", FSTAB, 0o644, 0, 0)
            .add_file("/etc/hostname", "debian\n", 0o644, 0, 0)
            .add_file("/usr/lib/os-release", OS_RELEASE, 0o644, 0, 0)
            .add_symlink("/etc/os-release", "../usr/lib/os-release")
            .add_dir("/root", 0o700, 0, 0)
            .add_file("/root/.bashrc", "# ~/.bashrc\n", 0o644, 0, 0)
            .add_dir("/home/alice", 0o755, ALICE_ID, ALICE_ID)
            .add_dir("/tmp", 0o1777, 0, 0);
        fs
    }
}
