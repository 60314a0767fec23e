//! The client side of the NBD fixed-newstyle handshake, just far enough to learn the size
//! of the default export and leave cleanly (`NBD_OPT_INFO`, then `NBD_OPT_ABORT`).
//!
//! [`crate::NbdServer`] uses it to check that `qemu-nbd` has opened the image and accepts
//! clients. The message layout follows the NBD protocol specification
//! (`doc/proto.md` in the NetworkBlockDevice/nbd repository); every number is big-endian.

use std::io::{self, Read, Write};

/// `NBDMAGIC`, the first eight bytes a server sends.
const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`, which follows the server's magic and starts every client option.
const OPTION_MAGIC: u64 = 0x4948_4156_454f_5054;
/// The magic that starts every option reply.
const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;

/// Server handshake flag: the server understands option haggling.
const FLAG_FIXED_NEWSTYLE: u16 = 1;
/// Server handshake flag: the server may omit the 124 zero bytes after `NBD_OPT_EXPORT_NAME`.
const FLAG_NO_ZEROES: u16 = 2;

const OPT_ABORT: u32 = 2;
const OPT_INFO: u32 = 6;

const REP_ACK: u32 = 1;
const REP_INFO: u32 = 3;
/// Replies with this bit set are errors.
const REP_FLAG_ERROR: u32 = 1 << 31;

/// `NBD_INFO_EXPORT`: the export's size and transmission flags.
const INFO_EXPORT: u16 = 0;

/// Largest option reply payload read; replies to `NBD_OPT_INFO` are a few dozen bytes.
const MAX_REPLY_BYTES: u32 = 64 * 1024;

/// Runs the handshake on `stream`, requests the default export (empty name) and returns
/// its size in bytes.
///
/// Fails with [`io::ErrorKind::InvalidData`] when the server breaks the protocol or
/// refuses the request, and with the I/O error when the connection fails.
pub fn query_export_size<S: Read + Write>(stream: &mut S) -> io::Result<u64> {
    let server_magic = read_u64(stream)?;
    if server_magic != NBD_MAGIC {
        return Err(invalid(format!(
            "server magic is {server_magic:#x}, not NBDMAGIC"
        )));
    }
    let option_magic = read_u64(stream)?;
    if option_magic != OPTION_MAGIC {
        return Err(invalid(format!(
            "server speaks old-style NBD (magic {option_magic:#x})"
        )));
    }
    let server_flags = read_u16(stream)?;
    if server_flags & FLAG_FIXED_NEWSTYLE == 0 {
        return Err(invalid(
            "server does not support fixed newstyle negotiation".into(),
        ));
    }
    let client_flags = u32::from(server_flags & (FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES));
    stream.write_all(&client_flags.to_be_bytes())?;

    // NBD_OPT_INFO with the empty export name and no specific information requests; the
    // server always sends NBD_INFO_EXPORT.
    let mut payload = Vec::with_capacity(6);
    payload.extend_from_slice(&0u32.to_be_bytes());
    payload.extend_from_slice(&0u16.to_be_bytes());
    write_option(stream, OPT_INFO, &payload)?;

    let mut size = None;
    loop {
        let reply = read_reply(stream, OPT_INFO)?;
        match reply.kind {
            REP_ACK => break,
            REP_INFO => {
                if let Some(export_size) = parse_info_export(&reply.data)? {
                    size = Some(export_size);
                }
            }
            kind if kind & REP_FLAG_ERROR != 0 => {
                return Err(invalid(format!(
                    "server refused NBD_OPT_INFO with reply type {kind:#x}: {}",
                    String::from_utf8_lossy(&reply.data)
                )));
            }
            // Other replies carry nothing this client needs.
            _ => {}
        }
    }
    let size = size.ok_or_else(|| invalid("server sent no NBD_INFO_EXPORT".into()))?;

    abort(stream);
    Ok(size)
}

/// Sends `NBD_OPT_ABORT` and reads the acknowledgement when the server sends one; the
/// size is already known, so failures here only matter to the server's log.
fn abort<S: Read + Write>(stream: &mut S) {
    if write_option(stream, OPT_ABORT, &[]).is_ok() {
        let _ack = read_reply(stream, OPT_ABORT);
    }
}

struct Reply {
    kind: u32,
    data: Vec<u8>,
}

fn write_option<S: Write>(stream: &mut S, option: u32, payload: &[u8]) -> io::Result<()> {
    let length = u32::try_from(payload.len()).expect("option payloads here are tiny");
    let mut message = Vec::with_capacity(16 + payload.len());
    message.extend_from_slice(&OPTION_MAGIC.to_be_bytes());
    message.extend_from_slice(&option.to_be_bytes());
    message.extend_from_slice(&length.to_be_bytes());
    message.extend_from_slice(payload);
    stream.write_all(&message)?;
    stream.flush()
}

fn read_reply<S: Read>(stream: &mut S, option: u32) -> io::Result<Reply> {
    let magic = read_u64(stream)?;
    if magic != REPLY_MAGIC {
        return Err(invalid(format!("option reply magic is {magic:#x}")));
    }
    let replied_option = read_u32(stream)?;
    if replied_option != option {
        return Err(invalid(format!(
            "reply is for option {replied_option}, expected {option}"
        )));
    }
    let kind = read_u32(stream)?;
    let length = read_u32(stream)?;
    if length > MAX_REPLY_BYTES {
        return Err(invalid(format!(
            "option reply of {length} bytes is too long"
        )));
    }
    let mut data = vec![0; length as usize];
    stream.read_exact(&mut data)?;
    Ok(Reply { kind, data })
}

/// Returns the size from an `NBD_REP_INFO` payload when it is `NBD_INFO_EXPORT`.
fn parse_info_export(data: &[u8]) -> io::Result<Option<u64>> {
    let Some(info_type) = data.get(..2) else {
        return Err(invalid("NBD_REP_INFO without an information type".into()));
    };
    if u16::from_be_bytes([info_type[0], info_type[1]]) != INFO_EXPORT {
        return Ok(None);
    }
    // Type (2 bytes), size (8), transmission flags (2).
    if data.len() != 12 {
        return Err(invalid(format!(
            "NBD_INFO_EXPORT is {} bytes, expected 12",
            data.len()
        )));
    }
    let size: [u8; 8] = data[2..10].try_into().expect("slice of 8 bytes");
    Ok(Some(u64::from_be_bytes(size)))
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

fn read_u16<S: Read>(stream: &mut S) -> io::Result<u16> {
    let mut bytes = [0; 2];
    stream.read_exact(&mut bytes)?;
    Ok(u16::from_be_bytes(bytes))
}

fn read_u32<S: Read>(stream: &mut S) -> io::Result<u32> {
    let mut bytes = [0; 4];
    stream.read_exact(&mut bytes)?;
    Ok(u32::from_be_bytes(bytes))
}

fn read_u64<S: Read>(stream: &mut S) -> io::Result<u64> {
    let mut bytes = [0; 8];
    stream.read_exact(&mut bytes)?;
    Ok(u64::from_be_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream;
    use std::thread;

    use super::*;

    /// The server's greeting: magic, option magic and both handshake flags.
    fn greeting() -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&NBD_MAGIC.to_be_bytes());
        bytes.extend_from_slice(&OPTION_MAGIC.to_be_bytes());
        bytes.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
        bytes
    }

    fn reply(option: u32, kind: u32, data: &[u8]) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&REPLY_MAGIC.to_be_bytes());
        bytes.extend_from_slice(&option.to_be_bytes());
        bytes.extend_from_slice(&kind.to_be_bytes());
        bytes.extend_from_slice(&(data.len() as u32).to_be_bytes());
        bytes.extend_from_slice(data);
        bytes
    }

    fn info_export(size: u64) -> Vec<u8> {
        let mut bytes = INFO_EXPORT.to_be_bytes().to_vec();
        bytes.extend_from_slice(&size.to_be_bytes());
        // Transmission flags: has flags, send flush.
        bytes.extend_from_slice(&0x0005u16.to_be_bytes());
        bytes
    }

    /// Runs `query_export_size` against a fake server that sends `server_bytes` and
    /// records what the client sent.
    fn query_fake_server(server_bytes: Vec<u8>) -> (io::Result<u64>, Vec<u8>) {
        let (mut client, mut server) = UnixStream::pair().unwrap();
        let fake = thread::spawn(move || {
            // The client may hang up before reading everything; that is what some tests
            // check, so write and shutdown failures are expected.
            let _written = server.write_all(&server_bytes);
            let _shut = server.shutdown(std::net::Shutdown::Write);
            let mut received = Vec::new();
            let _read = server.read_to_end(&mut received);
            received
        });
        let result = query_export_size(&mut client);
        drop(client);
        (result, fake.join().unwrap())
    }

    #[test]
    fn query_returns_export_size_and_aborts() {
        let mut server_bytes = greeting();
        server_bytes.extend(reply(OPT_INFO, REP_INFO, &info_export(16 << 20)));
        server_bytes.extend(reply(OPT_INFO, REP_ACK, &[]));
        server_bytes.extend(reply(OPT_ABORT, REP_ACK, &[]));

        let (result, sent) = query_fake_server(server_bytes);

        assert_eq!(result.unwrap(), 16 << 20);
        // Client flags, then NBD_OPT_INFO (16-byte header, 6-byte payload), then
        // NBD_OPT_ABORT (16-byte header).
        assert_eq!(sent.len(), 4 + 16 + 6 + 16);
        assert_eq!(sent[..4], 3u32.to_be_bytes());
        assert_eq!(sent[12..16], OPT_INFO.to_be_bytes());
        assert_eq!(sent[34..38], OPT_ABORT.to_be_bytes());
    }

    #[test]
    fn query_skips_other_info_replies() {
        let mut server_bytes = greeting();
        // NBD_INFO_BLOCK_SIZE (type 3) with three sizes.
        let mut block_size = 3u16.to_be_bytes().to_vec();
        block_size.extend_from_slice(&[0; 12]);
        server_bytes.extend(reply(OPT_INFO, REP_INFO, &block_size));
        server_bytes.extend(reply(OPT_INFO, REP_INFO, &info_export(4096)));
        server_bytes.extend(reply(OPT_INFO, REP_ACK, &[]));

        let (result, _) = query_fake_server(server_bytes);

        assert_eq!(result.unwrap(), 4096);
    }

    #[test]
    fn query_wrong_server_magic_is_invalid_data() {
        let mut server_bytes = greeting();
        server_bytes[0] = b'X';

        let (result, _) = query_fake_server(server_bytes);

        assert_eq!(result.unwrap_err().kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn query_old_style_server_is_invalid_data() {
        let mut server_bytes = NBD_MAGIC.to_be_bytes().to_vec();
        // Old-style servers send this magic next, then the size.
        server_bytes.extend_from_slice(&0x0000_4202_8186_1253u64.to_be_bytes());

        let (result, _) = query_fake_server(server_bytes);

        let err = result.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("old-style"), "{err}");
    }

    #[test]
    fn query_without_fixed_newstyle_is_invalid_data() {
        let mut server_bytes = greeting();
        let flags_at = server_bytes.len() - 2;
        server_bytes[flags_at..].copy_from_slice(&0u16.to_be_bytes());

        let (result, sent) = query_fake_server(server_bytes);

        assert_eq!(result.unwrap_err().kind(), io::ErrorKind::InvalidData);
        assert!(sent.is_empty());
    }

    #[test]
    fn query_refused_is_invalid_data_with_server_message() {
        let mut server_bytes = greeting();
        // NBD_REP_ERR_UNKNOWN: no export of that name.
        server_bytes.extend(reply(OPT_INFO, REP_FLAG_ERROR | 6, b"no such export"));

        let (result, _) = query_fake_server(server_bytes);

        let err = result.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("no such export"), "{err}");
    }

    #[test]
    fn query_ack_without_export_info_is_invalid_data() {
        let mut server_bytes = greeting();
        server_bytes.extend(reply(OPT_INFO, REP_ACK, &[]));

        let (result, _) = query_fake_server(server_bytes);

        assert_eq!(result.unwrap_err().kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn query_truncated_export_info_is_invalid_data() {
        let mut server_bytes = greeting();
        server_bytes.extend(reply(OPT_INFO, REP_INFO, &info_export(4096)[..8]));

        let (result, _) = query_fake_server(server_bytes);

        assert_eq!(result.unwrap_err().kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn query_reply_for_other_option_is_invalid_data() {
        let mut server_bytes = greeting();
        server_bytes.extend(reply(OPT_ABORT, REP_ACK, &[]));

        let (result, _) = query_fake_server(server_bytes);

        assert_eq!(result.unwrap_err().kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn query_connection_closed_mid_greeting_is_unexpected_eof() {
        let server_bytes = greeting()[..10].to_vec();

        let (result, _) = query_fake_server(server_bytes);

        assert_eq!(result.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }
}
