//! Benchmarks of whole injections on `testkit::MemFs`: a request with every item, and a
//! root password change in a shadow file of 10,000 users.

use std::hint::black_box;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use inject::{inject, FileItem, FileSource, HashMethod, Password, Request};
use testkit::MemFs;
use vfs_core::GuestPath;

/// The number of users besides root in the large shadow file.
const SHADOW_USERS: usize = 10_000;

fn ed25519_key() -> String {
    let mut blob = Vec::new();
    for field in [&b"ssh-ed25519"[..], &[3u8; 32][..]] {
        blob.extend_from_slice(&u32::try_from(field.len()).unwrap().to_be_bytes());
        blob.extend_from_slice(field);
    }
    format!("ssh-ed25519 {} bench@host", STANDARD.encode(blob))
}

fn full_request() -> Request {
    Request {
        ssh_key: Some(ed25519_key()),
        password: Some(Password::new("bench password".into())),
        network: Some(b"auto eth0\niface eth0 inet dhcp\n".to_vec()),
        metadata: Some(br#"{"uuid": "5b0c3f4e", "name": "bench"}"#.to_vec()),
        files: vec![FileItem {
            guest_path: GuestPath::new("/opt/app/conf/x.cfg").unwrap(),
            source: FileSource::Bytes(vec![b'x'; 4096]),
        }],
        ..Request::default()
    }
}

/// The password field of every other user: a SHA-512 crypt string of the usual length.
const USER_HASH: &str = concat!(
    "$6$abcdefgh$OMqXTmMq7oOSTXVDo2E3JgwVsSX8lXD1cLxrL0cqp0Z0qZ5ukkKmqvGL7eTMwWjD8XCHXblpSY",
    "p1jQ4OXV4.1",
);

/// Returns a shadow file with root in the middle of `SHADOW_USERS` other users.
fn large_shadow() -> String {
    let mut text = String::new();
    for index in 0..SHADOW_USERS {
        if index == SHADOW_USERS / 2 {
            text.push_str("root:*:19800:0:99999:7:::\n");
        }
        text.push_str(&format!("user{index}:{USER_HASH}:19800:0:99999:7:::\n"));
    }
    text
}

fn bench_full_request(c: &mut Criterion) {
    let mut guest = MemFs::debian_like();
    guest.add_dir("/etc/selinux", 0o755, 0, 0);
    let request = full_request();
    c.bench_function("full request, sha512 password", |b| {
        b.iter_batched(
            || guest.clone(),
            |mut fs| black_box(inject(&mut fs, &request).unwrap()),
            BatchSize::SmallInput,
        )
    });
}

fn bench_large_shadow(c: &mut Criterion) {
    let guest = MemFs::debian_like_with_shadow(&large_shadow());
    let mut group = c.benchmark_group("password in 10,000-user shadow");
    for method in [HashMethod::Sha512, HashMethod::Md5] {
        let request = Request {
            password: Some(Password::new("bench password".into())),
            password_method: method,
            ..Request::default()
        };
        group.bench_function(method.as_str(), |b| {
            b.iter_batched(
                || guest.clone(),
                |mut fs| black_box(inject(&mut fs, &request).unwrap()),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, bench_full_request, bench_large_shadow);
criterion_main!(benches);
