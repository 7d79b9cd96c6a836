//! Worker binaries the backend can publish: raw bytes, a small ELF stub with the right
//! `e_machine` for its arch (enough for arch checks and caching tests), or a POSIX shell
//! worker a busybox container can run as its entrypoint.

use protocol::Arch;
use sha2::{Digest, Sha256};

/// What to publish as a worker binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BinaryContent {
    Bytes(Vec<u8>),
    /// A 64-bit little-endian ELF header for the arch plus a marker; not runnable.
    ElfStub,
    /// `#!/bin/sh` test worker, see [`shell_worker`].
    ShellWorker,
}

impl BinaryContent {
    pub fn kind(&self) -> &'static str {
        match self {
            BinaryContent::Bytes(_) => "bytes",
            BinaryContent::ElfStub => "elf",
            BinaryContent::ShellWorker => "shell",
        }
    }

    pub fn render(&self, arch: Arch, version: &str) -> Vec<u8> {
        match self {
            BinaryContent::Bytes(b) => b.clone(),
            BinaryContent::ElfStub => elf_stub(arch, version),
            BinaryContent::ShellWorker => shell_worker(version).into_bytes(),
        }
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A 64-byte ELF64 header (ET_EXEC, the arch's `e_machine`) followed by a text marker.
pub fn elf_stub(arch: Arch, version: &str) -> Vec<u8> {
    let mut b = vec![0u8; 64];
    b[0..4].copy_from_slice(b"\x7fELF");
    b[4] = 2; // ELFCLASS64
    b[5] = 1; // little endian
    b[6] = 1; // EV_CURRENT
    b[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    b[18..20].copy_from_slice(&arch.elf_machine().to_le_bytes());
    b[20..24].copy_from_slice(&1u32.to_le_bytes()); // e_version
    b[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
    b.extend_from_slice(format!("fake-spacelift-worker {version} {arch}\n").as_bytes());
    b
}

/// The test worker: prints lines (naming `SPACELIFT_RUN_ULID`), optionally sleeps, and
/// exits with the code the run asks for. Env vars (all optional):
/// - `SPACELIFT_TEST_EXIT_CODE`: exit status (default 0)
/// - `SPACELIFT_TEST_SLEEP`: seconds to sleep before exiting (busybox `sleep` syntax)
/// - `SPACELIFT_TEST_LINES`: extra numbered stdout lines (default 0)
/// - `SPACELIFT_TEST_STDERR`: one line to print on stderr
/// - `SPACELIFT_TEST_MESSAGE`: one line to print verbatim
///
/// It stops on SIGTERM with exit code 143, as a well-behaved worker would.
pub fn shell_worker(version: &str) -> String {
    format!(
        r#"#!/bin/sh
# fake Spacelift worker {version} (test double; POSIX sh, busybox-compatible)
echo "fake-worker {version} starting run ${{SPACELIFT_RUN_ULID:-unknown}}"
echo "fake-worker pid $$ in $(pwd)"
# What the launcher gives a run: its user, docker-init as PID 1, the workspace, switches.
echo "fake-worker uid $(id -u):$(id -g) under $(tr '\0' ' ' < /proc/1/cmdline 2>/dev/null)"
echo "fake-worker debug=${{SPACELIFT_DEBUG:-unset}} sensitive=${{SPACELIFT_SENSITIVE_OUTPUT_UPLOAD_ENABLED:-unset}}"
if {{ echo ok > /mnt/workspace/source/.fake-worker; }} 2>/dev/null; then
  echo "fake-worker wrote /mnt/workspace/source"
fi
# As PID 1 a shell ignores SIGTERM unless it traps it; a real worker stops when asked.
trap 'echo "fake-worker stopped by SIGTERM"; exit 143' TERM
if [ -n "${{SPACELIFT_TEST_MESSAGE:-}}" ]; then
  echo "$SPACELIFT_TEST_MESSAGE"
fi
i=0
while [ "$i" -lt "${{SPACELIFT_TEST_LINES:-0}}" ]; do
  echo "fake-worker line $i"
  i=$((i + 1))
done
if [ -n "${{SPACELIFT_TEST_STDERR:-}}" ]; then
  echo "$SPACELIFT_TEST_STDERR" >&2
fi
if [ -n "${{SPACELIFT_TEST_SLEEP:-}}" ]; then
  echo "fake-worker sleeping $SPACELIFT_TEST_SLEEP"
  # In the background, so the TERM trap runs at once instead of after the sleep.
  sleep "$SPACELIFT_TEST_SLEEP" &
  wait $!
fi
code="${{SPACELIFT_TEST_EXIT_CODE:-0}}"
echo "fake-worker finished run ${{SPACELIFT_RUN_ULID:-unknown}} with exit code $code"
exit "$code"
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elf_header_names_the_arch() {
        for arch in Arch::ALL {
            let b = elf_stub(arch, "1.0.0");
            assert_eq!(&b[0..4], b"\x7fELF");
            assert_eq!(u16::from_le_bytes([b[18], b[19]]), arch.elf_machine());
        }
        assert_eq!(elf_stub(Arch::Arm64, "v")[18], 0xB7);
        assert_eq!(elf_stub(Arch::Amd64, "v")[18], 0x3E);
    }

    #[test]
    fn shell_worker_runs_with_sh() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("worker");
        std::fs::write(&path, shell_worker("9.9.9")).unwrap();
        let shells: Vec<&str> = ["/bin/sh", "/usr/bin/busybox"]
            .into_iter()
            .filter(|s| std::path::Path::new(s).exists())
            .collect();
        for shell in shells {
            let mut cmd = std::process::Command::new(shell);
            if shell.ends_with("busybox") {
                cmd.arg("sh");
            }
            let out = cmd
                .arg(&path)
                .env("SPACELIFT_RUN_ULID", "01RUN")
                .env("SPACELIFT_TEST_EXIT_CODE", "3")
                .env("SPACELIFT_TEST_LINES", "2")
                .env("SPACELIFT_TEST_SLEEP", "0")
                .env("SPACELIFT_TEST_STDERR", "oops")
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert_eq!(out.status.code(), Some(3), "{shell}: {stdout}");
            assert!(stdout.contains("starting run 01RUN"), "{stdout}");
            assert!(stdout.contains("fake-worker line 1"), "{stdout}");
            assert_eq!(String::from_utf8_lossy(&out.stderr).trim(), "oops");
        }
    }
}
