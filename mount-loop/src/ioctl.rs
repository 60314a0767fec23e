//! The kernel's loop device interface (`linux/loop.h`) and the block size query, which the
//! `libc` crate does not define.
//!
//! The loop requests predate the direction-encoded ioctl numbers, so they use nix's `_bad`
//! macros with the raw request numbers.

/// Length of the `lo_file_name` and `lo_crypt_name` fields.
const LO_NAME_SIZE: usize = 64;
/// Length of the obsolete `lo_encrypt_key` field.
const LO_KEY_SIZE: usize = 32;

/// The device is read-only.
pub const LO_FLAGS_READ_ONLY: u32 = 1;
/// The kernel detaches the device when its last user closes it.
pub const LO_FLAGS_AUTOCLEAR: u32 = 4;

/// `struct loop_info64`: the status of a loop device.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct LoopInfo64 {
    pub lo_device: u64,
    pub lo_inode: u64,
    pub lo_rdevice: u64,
    pub lo_offset: u64,
    /// Bytes of the backing file the device shows; 0 means up to the end of the file.
    pub lo_sizelimit: u64,
    pub lo_number: u32,
    pub lo_encrypt_type: u32,
    pub lo_encrypt_key_size: u32,
    pub lo_flags: u32,
    pub lo_file_name: [u8; LO_NAME_SIZE],
    pub lo_crypt_name: [u8; LO_NAME_SIZE],
    pub lo_encrypt_key: [u8; LO_KEY_SIZE],
    pub lo_init: [u64; 2],
}

impl Default for LoopInfo64 {
    fn default() -> Self {
        Self {
            lo_device: 0,
            lo_inode: 0,
            lo_rdevice: 0,
            lo_offset: 0,
            lo_sizelimit: 0,
            lo_number: 0,
            lo_encrypt_type: 0,
            lo_encrypt_key_size: 0,
            lo_flags: 0,
            lo_file_name: [0; LO_NAME_SIZE],
            lo_crypt_name: [0; LO_NAME_SIZE],
            lo_encrypt_key: [0; LO_KEY_SIZE],
            lo_init: [0; 2],
        }
    }
}

impl LoopInfo64 {
    /// Stores `name` in `lo_file_name`, cut to fit with a terminating NUL. The kernel only
    /// reports this name back; sysfs shows the real path of the backing file.
    pub fn set_file_name(&mut self, name: &[u8]) {
        let length = name.len().min(LO_NAME_SIZE - 1);
        self.lo_file_name = [0; LO_NAME_SIZE];
        self.lo_file_name[..length].copy_from_slice(&name[..length]);
    }
}

/// `struct loop_config`: the argument of `LOOP_CONFIGURE` (Linux 5.8 and later).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct LoopConfig {
    /// The backing file descriptor.
    pub fd: u32,
    /// Logical block size; 0 keeps the default of 512 bytes.
    pub block_size: u32,
    pub info: LoopInfo64,
    pub reserved: [u64; 8],
}

const LOOP_SET_FD: u32 = 0x4C00;
const LOOP_CLR_FD: u32 = 0x4C01;
const LOOP_SET_STATUS64: u32 = 0x4C04;
const LOOP_GET_STATUS64: u32 = 0x4C05;
const LOOP_CONFIGURE: u32 = 0x4C0A;
const LOOP_CTL_GET_FREE: u32 = 0x4C82;

nix::ioctl_write_int_bad!(loop_set_fd, LOOP_SET_FD);
nix::ioctl_none_bad!(loop_clr_fd, LOOP_CLR_FD);
nix::ioctl_write_ptr_bad!(loop_set_status64, LOOP_SET_STATUS64, LoopInfo64);
nix::ioctl_read_bad!(loop_get_status64, LOOP_GET_STATUS64, LoopInfo64);
nix::ioctl_write_ptr_bad!(loop_configure, LOOP_CONFIGURE, LoopConfig);
nix::ioctl_none_bad!(loop_ctl_get_free, LOOP_CTL_GET_FREE);

// BLKGETSIZE64 is _IOR(0x12, 114, size_t): the size of a block device in bytes.
nix::ioctl_read!(blk_get_size64, 0x12, 114, u64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loop_info64_matches_kernel_layout() {
        // Five u64, four u32, 64 + 64 + 32 name and key bytes, two u64.
        assert_eq!(std::mem::size_of::<LoopInfo64>(), 232);
        assert_eq!(std::mem::offset_of!(LoopInfo64, lo_offset), 24);
        assert_eq!(std::mem::offset_of!(LoopInfo64, lo_flags), 52);
        assert_eq!(std::mem::offset_of!(LoopInfo64, lo_file_name), 56);
    }

    #[test]
    fn loop_config_matches_kernel_layout() {
        // fd and block_size, the 232-byte loop_info64, then eight reserved u64.
        assert_eq!(std::mem::size_of::<LoopConfig>(), 8 + 232 + 64);
        assert_eq!(std::mem::offset_of!(LoopConfig, info), 8);
    }

    #[test]
    fn long_file_name_is_cut_with_terminating_nul() {
        let mut info = LoopInfo64::default();
        info.set_file_name(&[b'a'; 100]);
        assert_eq!(info.lo_file_name[62], b'a');
        assert_eq!(info.lo_file_name[63], 0);
    }
}
