//! The Docker daemon's JSON answers the launcher reads through bollard: /version, /info,
//! image and container inspect, wait, container list and create, error bodies, and the
//! pull stream (one JSON object per line). Each parses as bollard parses it and
//! re-serializes to an equal value; what the launcher derives from them (API version,
//! architecture) is consistent: a parsed version prints and parses back to itself, a
//! known architecture maps back from both of its spellings.
#![no_main]

use bollard::models::{
    ContainerCreateResponse, ContainerInspectResponse, ContainerSummary, ContainerWaitResponse,
    CreateImageInfo, ErrorResponse, ImageInspect, SystemInfo, SystemVersion,
};
use launcher::docker::parse_version;
use libfuzzer_sys::fuzz_target;
use protocol::Arch;
use serde::de::DeserializeOwned;
use serde::Serialize;

fn parse<T>(body: &[u8]) -> Option<T>
where
    T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug,
{
    let v: T = serde_json::from_slice(body).ok()?;
    let again: T = serde_json::from_slice(&serde_json::to_vec(&v).expect("serializes"))
        .expect("its own JSON parses");
    assert_eq!(again, v);
    Some(v)
}

fn check_version(s: &str) {
    if let Some((major, minor)) = parse_version(s) {
        assert_eq!(
            parse_version(&format!("{major}.{minor}")),
            Some((major, minor))
        );
    }
}

fn check_arch(name: &str) {
    if let Some(arch) = Arch::from_docker(name) {
        assert_eq!(Arch::from_docker(arch.as_str()), Some(arch));
        assert_eq!(Arch::from_docker(arch.kernel_name()), Some(arch));
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    match which % 9 {
        0 => {
            if let Some(v) = parse::<SystemVersion>(body) {
                check_version(v.api_version.as_deref().unwrap_or_default());
                check_version(v.min_api_version.as_deref().unwrap_or_default());
            }
            check_version(&String::from_utf8_lossy(body));
        }
        1 => {
            if let Some(info) = parse::<SystemInfo>(body) {
                check_arch(info.architecture.as_deref().unwrap_or_default());
            }
            check_arch(&String::from_utf8_lossy(body));
        }
        2 => {
            if let Some(image) = parse::<ImageInspect>(body) {
                check_arch(image.architecture.as_deref().unwrap_or_default());
            }
        }
        3 => {
            parse::<ContainerInspectResponse>(body);
        }
        4 => {
            parse::<ContainerWaitResponse>(body);
        }
        5 => {
            for line in body.split(|&b| b == b'\n') {
                parse::<CreateImageInfo>(line);
            }
        }
        6 => {
            parse::<Vec<ContainerSummary>>(body);
        }
        7 => {
            parse::<ContainerCreateResponse>(body);
        }
        _ => {
            parse::<ErrorResponse>(body);
        }
    }
});
