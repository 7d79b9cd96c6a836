use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A CPU architecture, named as Docker image platforms name it (`amd64`, `arm64`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Amd64,
    Arm64,
}

impl Arch {
    pub const ALL: [Arch; 2] = [Arch::Amd64, Arch::Arm64];

    pub fn as_str(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }

    /// Maps the Docker daemon's `/info` `Architecture` (kernel names such as `x86_64`,
    /// `aarch64`) or an image platform architecture to an [`Arch`].
    pub fn from_docker(name: &str) -> Option<Arch> {
        match name.trim().to_ascii_lowercase().as_str() {
            "x86_64" | "amd64" | "x86-64" => Some(Arch::Amd64),
            "aarch64" | "arm64" | "arm64/v8" | "armv8" => Some(Arch::Arm64),
            _ => None,
        }
    }

    /// The `uname -m` / `/info` spelling.
    pub fn kernel_name(self) -> &'static str {
        match self {
            Arch::Amd64 => "x86_64",
            Arch::Arm64 => "aarch64",
        }
    }

    /// The ELF `e_machine` value of binaries for this architecture.
    pub fn elf_machine(self) -> u16 {
        match self {
            Arch::Amd64 => 0x3E,
            Arch::Arm64 => 0xB7,
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Arch {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Arch::from_docker(s)
            .ok_or_else(|| format!("unknown architecture {s:?} (expected amd64 or arm64)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_docker_and_kernel_names() {
        assert_eq!(Arch::from_docker("x86_64"), Some(Arch::Amd64));
        assert_eq!(Arch::from_docker("aarch64"), Some(Arch::Arm64));
        assert_eq!(Arch::from_docker("arm64"), Some(Arch::Arm64));
        assert_eq!(Arch::from_docker("s390x"), None);
        assert_eq!("AMD64".parse::<Arch>(), Ok(Arch::Amd64));
    }
}
