//! proptest: every wire type survives serialize -> deserialize unchanged.

use std::collections::BTreeMap;

use proptest::prelude::*;
use protocol::api::*;
use protocol::messages::{Heartbeat, Incoming, ServerMessage, WorkerMessage, WorkerState};
use protocol::token::{ApiConfig, BrokerConfig, Token};
use protocol::{Arch, RunState};

fn text() -> impl Strategy<Value = String> {
    // Arbitrary Unicode, including quotes, escapes and control characters.
    any::<String>()
}

fn ulid() -> impl Strategy<Value = String> {
    "[0-9A-HJKMNP-TV-Z]{26}"
}

fn arch() -> impl Strategy<Value = Arch> {
    prop::sample::select(Arch::ALL.to_vec())
}

fn state() -> impl Strategy<Value = RunState> {
    prop::sample::select(RunState::ALL.to_vec())
}

fn run_type() -> impl Strategy<Value = RunType> {
    prop::sample::select(vec![
        RunType::Proposed,
        RunType::Tracked,
        RunType::Task,
        RunType::Destroy,
        RunType::Module,
    ])
}

fn env() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map(text(), text(), 0..4)
}

fn binary() -> impl Strategy<Value = WorkerBinary> {
    (text(), arch(), any::<u64>(), "[0-9a-f]{64}").prop_map(|(version, arch, size, sha256)| {
        WorkerBinary {
            version,
            arch,
            size,
            sha256,
        }
    })
}

fn server_message() -> impl Strategy<Value = ServerMessage> {
    prop_oneof![
        (ulid(), ulid()).prop_map(|(message_id, run_ulid)| ServerMessage::RunScheduled {
            message_id,
            run_ulid
        }),
        (ulid(), ulid(), proptest::option::of(text())).prop_map(
            |(message_id, run_ulid, reason)| {
                ServerMessage::RunCancel {
                    message_id,
                    run_ulid,
                    reason,
                }
            }
        ),
        ulid().prop_map(|message_id| ServerMessage::Drain { message_id }),
        ulid().prop_map(|message_id| ServerMessage::Undrain { message_id }),
        ulid().prop_map(|message_id| ServerMessage::Cycle { message_id }),
        (ulid(), binary())
            .prop_map(|(message_id, binary)| ServerMessage::BinaryPublished { message_id, binary }),
    ]
}

fn worker_message() -> impl Strategy<Value = WorkerMessage> {
    let worker_state = prop::sample::select(vec![
        WorkerState::Idle,
        WorkerState::Busy,
        WorkerState::Drained,
    ]);
    prop_oneof![
        (
            ulid(),
            any::<u64>(),
            worker_state,
            prop::collection::vec(ulid(), 0..3),
            any::<u32>()
        )
            .prop_map(|(worker_ulid, seq, state, runs, capacity)| {
                WorkerMessage::Heartbeat(Heartbeat {
                    worker_ulid,
                    seq,
                    state,
                    runs,
                    capacity,
                    interruption: None,
                })
            }),
        (ulid(), any::<bool>()).prop_map(|(worker_ulid, crashed)| WorkerMessage::Gone {
            worker_ulid,
            crashed
        }),
    ]
}

fn reason() -> impl Strategy<Value = Reason> {
    (text(), text()).prop_map(|(code, message)| Reason { code, message })
}

fn round_trip<T>(value: &T) -> T
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    serde_json::from_str(&serde_json::to_string(value).unwrap()).unwrap()
}

proptest! {
    #[test]
    fn server_messages(m in server_message()) {
        prop_assert_eq!(ServerMessage::parse(&m.to_json()).unwrap(), Incoming::Message(m));
    }

    #[test]
    fn worker_messages(m in worker_message()) {
        prop_assert_eq!(WorkerMessage::parse(&m.to_json()).unwrap(), Incoming::Message(m));
    }

    #[test]
    fn register(arch in arch(), v in text(), capacity in any::<u32>(), metadata in env(),
                prev in proptest::option::of(ulid()), worker in ulid(), pool in ulid(),
                hb in any::<u64>(), held in prop::collection::vec(ulid(), 0..3)) {
        let req = RegisterRequest { protocol_version: 1, arch, launcher_version: v, capacity,
                                    metadata, previous_worker_ulid: prev };
        prop_assert_eq!(round_trip(&req), req);
        let resp = RegisterResponse { worker_ulid: worker, pool_ulid: pool,
                                      heartbeat_interval_ms: hb, held_runs: held };
        prop_assert_eq!(round_trip(&resp), resp);
    }

    #[test]
    fn claim(worker in ulid(), run in ulid(), stack in text(), rt in run_type(),
             image in proptest::option::of(text()), env in env(), ttl in any::<u64>(),
             vendor in proptest::option::of(text()),
             worker_binary in proptest::option::of(binary())) {
        let req = ClaimRequest { worker_ulid: worker.clone() };
        prop_assert_eq!(round_trip(&req), req);
        let resp = ClaimResponse {
            run: RunSpec { run_ulid: run, stack_id: stack, run_type: rt, image, env, vendor },
            lease: Lease { ttl_ms: ttl },
            worker_binary,
        };
        prop_assert_eq!(round_trip(&resp), resp);
        let lease = LeaseRequest { worker_ulid: worker };
        prop_assert_eq!(round_trip(&lease), lease);
    }

    #[test]
    fn transitions(worker in ulid(), state in state(), exit in proptest::option::of(any::<i64>()),
                   reason in proptest::option::of(reason()), version in proptest::option::of(text())) {
        let req = TransitionRequest { worker_ulid: worker, state, exit_code: exit, reason,
                                      worker_version: version };
        prop_assert_eq!(round_trip(&req), req);
        let resp = TransitionResponse { state };
        prop_assert_eq!(round_trip(&resp), resp);
    }

    #[test]
    fn logs(worker in ulid(), lines in prop::collection::vec(
                (any::<u64>(), prop::sample::select(vec![LogStream::Stdout, LogStream::Stderr, LogStream::Launcher]), text())
                    .prop_map(|(seq, stream, text)| LogLine { seq, stream, text }), 0..5),
            next in any::<u64>()) {
        let batch = LogBatch { worker_ulid: worker, lines };
        prop_assert_eq!(round_trip(&batch), batch);
        let ack = LogAck { next_seq: next };
        prop_assert_eq!(round_trip(&ack), ack);
    }

    #[test]
    fn binaries_and_errors(b in binary(), code in text(), msg in text(),
                           current in proptest::option::of(state())) {
        prop_assert_eq!(round_trip(&b), b);
        let mut e = ErrorBody::new(&code, msg);
        e.error.current_state = current;
        prop_assert_eq!(round_trip(&e), e);
    }

    #[test]
    fn tokens(broker in "mqtts://[a-z]{1,10}:[0-9]{1,4}", api in text(), pool in ulid(),
              ca in proptest::option::of(text()), ns in proptest::option::of(text())) {
        let token = Token {
            broker: BrokerConfig { endpoint: broker },
            api: ApiConfig { endpoint: format!("https://{}", api.len()) },
            pool_ulid: pool,
            certificate: "-----BEGIN CERTIFICATE-----\nX\n-----END CERTIFICATE-----\n".into(),
            ca_certificate: ca,
            topic_namespace: ns,
        };
        prop_assert_eq!(Token::decode("SPACELIFT_TOKEN", &token.encode()).unwrap(), token);
    }
}
