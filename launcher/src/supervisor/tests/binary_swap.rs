//! The worker binary is checked again just before the container is created: a file
//! swapped on disk while the image was pulled (minutes) never reaches `create`.

use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::*;
use crate::binaries::FsBinaryStore;

#[tokio::test(start_paused = true)]
async fn a_binary_overwritten_during_a_slow_pull_never_reaches_create() {
    let mut h = Harness::new();
    let good: Vec<u8> = (0..50_000u32).map(|i| (i * 7) as u8).collect();
    let wb = protocol::api::WorkerBinary {
        version: "2.0.0".into(),
        arch: protocol::Arch::Amd64,
        size: good.len() as u64,
        sha256: hex::encode(Sha256::digest(&good)),
    };
    h.backend
        .with(|s| s.served_binary = Some((wb.clone(), good.clone())));
    let dir = tempfile::tempdir().unwrap();
    let store = FsBinaryStore::new(dir.path().to_path_buf(), h.backend.clone(), 3);
    h.binary_store = Some(Arc::new(store.clone()));
    let image = "registry.example.com/slow:1";
    h.runtime.with(|s| {
        s.pull_hangs.insert(image.into());
        s.registry
            .insert(image.into(), crate::testing::image("amd64"));
    });
    h.backend.with(|s| {
        let mut spec = spec("R1");
        spec.image = Some(image.into());
        s.specs.insert("R1".into(), spec);
    });
    let mut r = h.start();
    r.schedule("R1").await;
    let rt = h.runtime.clone();
    h.changes
        .until("pulling", || {
            rt.calls().iter().any(|c| c.starts_with("pull "))
        })
        .await;
    // Same size, other bytes, written in place behind the cache's back.
    let path = store.path_of(&wb.sha256);
    let mut bad = good.clone();
    bad[100] ^= 0xff;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(&path, &bad).unwrap();
    }
    h.runtime.with(|s| {
        s.pull_hangs.remove(image);
    });
    h.until_terminal("R1").await;
    let created = h
        .runtime
        .calls()
        .iter()
        .filter(|c| c.starts_with("create"))
        .count();
    // Either the run failed before creating anything, or it created its container with
    // the binary re-fetched: never with the swapped bytes.
    let now = std::fs::read(&path).unwrap_or_default();
    assert!(
        created == 0 || now == good,
        "created {created} container(s) with the swapped binary in place"
    );
    let msg = ended_with(&h, "R1", Failed, reason_codes::WORKER_BINARY_UNAVAILABLE);
    assert!(msg.contains("changed on disk"), "{msg}");
    // The changed file is gone: the next run downloads it again.
    assert!(now.is_empty(), "the swapped file is still there");
}
