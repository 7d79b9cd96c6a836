//! Worker binaries: publishing a version (stored by digest, announced to online workers)
//! and finding one to serve.

use protocol::api::WorkerBinary;
use protocol::messages::ServerMessage;
use protocol::Arch;
use serde_json::json;

use super::Core;
use crate::binaries::{sha256_hex, BinaryContent};
use crate::error::{BackendError, Result};
use crate::events::{kinds, NewEvent};
use crate::store::{BinaryRecord, State};

/// The latest binary published for `arch`, as the wire shows it (the claim's answer).
pub(super) fn latest_for(state: &State, arch: Arch) -> Option<WorkerBinary> {
    state
        .binaries
        .iter()
        .rev()
        .find(|b| b.arch == arch)
        .map(|b| WorkerBinary {
            version: b.version.clone(),
            arch: b.arch,
            size: b.size,
            sha256: b.sha256.clone(),
        })
}

impl Core {
    pub(crate) fn latest_binary(&self, arch: Arch) -> Option<BinaryRecord> {
        self.read(|s| s.binaries.iter().rev().find(|b| b.arch == arch).cloned())
    }

    pub(crate) fn find_binary(&self, version: &str, arch: Arch) -> Option<BinaryRecord> {
        self.read(|s| {
            s.binaries
                .iter()
                .rev()
                .find(|b| b.arch == arch && b.version == version)
                .cloned()
        })
    }

    pub(crate) fn publish_binary(
        &self,
        arch: Arch,
        version: Option<String>,
        content: BinaryContent,
    ) -> Result<WorkerBinary> {
        let version = match version {
            Some(v) if !v.is_empty() && !v.contains('/') && v.len() <= 128 => v,
            Some(v) => return Err(BackendError::Invalid(format!("version {v:?}"))),
            None => format!(
                "0.1.{}",
                self.read(|s| s.binaries.iter().filter(|b| b.arch == arch).count()) + 1
            ),
        };
        let bytes = content.render(arch, &version);
        let sha256 = sha256_hex(&bytes);
        self.store.write_binary(&sha256, &bytes)?;
        let binary = WorkerBinary {
            version: version.clone(),
            arch,
            size: bytes.len() as u64,
            sha256: sha256.clone(),
        };
        self.mutate(|tx| {
            tx.st.state.binaries.push(BinaryRecord {
                version,
                arch,
                size: binary.size,
                sha256,
                kind: content.kind().to_string(),
            });
            tx.event(
                NewEvent::new(kinds::BINARY_PUBLISHED)
                    .data(json!({ "binary": binary, "kind": content.kind() })),
            );
            let online: Vec<(String, String)> = tx
                .st
                .state
                .workers
                .values()
                .filter(|w| w.online)
                .map(|w| (w.pool.clone(), w.ulid.clone()))
                .collect();
            for (pool, worker) in online {
                let message_id = tx.message_id();
                tx.send(
                    &pool,
                    &worker,
                    ServerMessage::BinaryPublished {
                        message_id,
                        binary: binary.clone(),
                    },
                );
            }
        });
        Ok(binary)
    }
}
