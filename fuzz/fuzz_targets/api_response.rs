//! HTTPS response bodies the launcher reads (register, claim, lease, transition, log
//! ack, worker-binary metadata, error bodies), deserialized as `HttpsBackend` does
//! (`serde_json::from_slice`). A body that parses re-serializes to one that parses to the
//! same value; the message made from an error body is bounded.
#![no_main]

use launcher::backend::https::error_detail;
use libfuzzer_sys::fuzz_target;
use protocol::api::{
    ClaimResponse, ErrorBody, Lease, LogAck, RegisterResponse, TransitionResponse, WorkerBinary,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

fn round_trip<T>(body: &[u8])
where
    T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug,
{
    if let Ok(v) = serde_json::from_slice::<T>(body) {
        let json = serde_json::to_vec(&v).expect("serializes");
        let again: T = serde_json::from_slice(&json).expect("its own JSON parses");
        assert_eq!(again, v);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    match which % 7 {
        0 => round_trip::<RegisterResponse>(body),
        1 => round_trip::<ClaimResponse>(body),
        2 => round_trip::<Lease>(body),
        3 => round_trip::<TransitionResponse>(body),
        4 => round_trip::<LogAck>(body),
        5 => round_trip::<WorkerBinary>(body),
        _ => round_trip::<ErrorBody>(body),
    }
    // Whatever the server sent, an error quotes at most 200 characters (and "..."),
    // with no control characters (terminal escapes, line breaks) among them.
    let detail = error_detail(body);
    assert!(
        detail.chars().count() <= 203,
        "{} chars",
        detail.chars().count()
    );
    assert!(!detail.chars().any(char::is_control), "{detail:?}");
});
