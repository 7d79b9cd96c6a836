//! `worker_binary.published` prefetches are bounded: a backend that floods the message
//! cannot make the launcher download without limit.

use super::*;

fn version(n: usize) -> protocol::api::WorkerBinary {
    let mut b = binary();
    b.version = format!("1.0.{n}");
    b.sha256 = format!("{n:064x}");
    b
}

#[tokio::test(start_paused = true)]
async fn a_flood_of_published_binaries_fetches_one_at_a_time_and_only_the_newest() {
    let h = Harness::new();
    h.store.state.lock().unwrap().delay = Some(secs(60));
    let mut r = h.start();
    for n in 0..200 {
        r.send(ServerMessage::BinaryPublished {
            message_id: format!("b{n}"),
            binary: version(n),
        })
        .await;
    }
    // The same version again while it is being fetched adds nothing.
    r.send(ServerMessage::BinaryPublished {
        message_id: "again".into(),
        binary: version(199),
    })
    .await;
    let store = h.store.clone();
    h.changes
        .until("the newest prefetched", || {
            store
                .state
                .lock()
                .unwrap()
                .fetched
                .last()
                .map(String::as_str)
                == Some("1.0.199")
        })
        .await;
    let s = h.store.state.lock().unwrap();
    assert_eq!(s.max_in_flight, 1);
    // The first, then the newest announced while it was fetched; none of those in between.
    assert_eq!(s.fetched, ["1.0.0", "1.0.199"]);
    assert_eq!(s.gets, 2);
}
