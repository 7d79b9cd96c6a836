//! The backend's certificate authority: it signs pool certificates from CSRs (as
//! Spacelift's UI does), the HTTPS/MQTT server certificate, and the backend's own client
//! certificate for an external broker. Pool certificates carry the pool ULID as CN so
//! Mosquitto's `use_identity_as_username` + `pattern ... %u/%c` ACLs work.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
    RsaKeySize, SanType, SerialNumber,
};
use sha2::{Digest, Sha256};

use crate::error::{BackendError, Result};
use crate::store::write_atomic;

/// A certificate with its private key, both PEM.
#[derive(Debug, Clone)]
pub struct CertifiedKey {
    pub cert_pem: String,
    pub key_pem: String,
}

pub struct Pki {
    ca_cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki").finish_non_exhaustive()
    }
}

/// Lower-case hex SHA-256 of a DER certificate: how the backend identifies a pool.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// The DER of the first certificate in a PEM text.
pub fn first_cert_der(pem: &str) -> Result<Vec<u8>> {
    let mut reader = std::io::BufReader::new(pem.as_bytes());
    let first = rustls_pemfile::certs(&mut reader).next();
    match first {
        Some(Ok(der)) => Ok(der.to_vec()),
        Some(Err(e)) => Err(BackendError::Pki(format!("bad PEM certificate: {e}"))),
        None => Err(BackendError::Pki("no PEM certificate found".into())),
    }
}

fn serial_for(spki: &[u8], cn: &str, nonce: u64) -> SerialNumber {
    let mut h = Sha256::new();
    h.update(spki);
    h.update(cn.as_bytes());
    h.update(nonce.to_be_bytes());
    let mut bytes = h.finalize()[..16].to_vec();
    bytes[0] &= 0x7F; // positive
    bytes[0] |= 0x01; // no leading zero byte
    SerialNumber::from_slice(&bytes)
}

fn pki_err(what: &str) -> impl Fn(rcgen::Error) -> BackendError + '_ {
    move |e| BackendError::Pki(format!("{what}: {e}"))
}

impl Pki {
    /// Loads `dir/ca.pem` + `dir/ca.key`, creating them on first use.
    pub fn load_or_create(dir: &Path) -> Result<Pki> {
        std::fs::create_dir_all(dir).map_err(|e| BackendError::io("creating", dir, e))?;
        let cert_path = dir.join("ca.pem");
        let key_path = dir.join("ca.key");
        if cert_path.exists() && key_path.exists() {
            let read = |p: &PathBuf| {
                std::fs::read_to_string(p).map_err(|e| BackendError::io("reading", p, e))
            };
            let cert_pem = read(&cert_path)?;
            let key = KeyPair::from_pem(&read(&key_path)?).map_err(pki_err("CA key"))?;
            let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(pki_err("CA cert"))?;
            return Ok(Pki {
                ca_cert_pem: cert_pem,
                issuer,
            });
        }
        let key = KeyPair::generate().map_err(pki_err("CA key"))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "fake-backend CA");
        dn.push(DnType::OrganizationName, "fake-backend");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(serial_for(&key.subject_public_key_info(), "ca", 0));
        let cert = params.self_signed(&key).map_err(pki_err("CA cert"))?;
        write_atomic(&key_path, key.serialize_pem().as_bytes())?;
        write_atomic(&cert_path, cert.pem().as_bytes())?;
        let issuer = Issuer::new(params, key);
        Ok(Pki {
            ca_cert_pem: cert.pem(),
            issuer,
        })
    }

    pub fn ca_cert_pem(&self) -> &str {
        &self.ca_cert_pem
    }

    pub fn ca_cert_der(&self) -> Result<Vec<u8>> {
        first_cert_der(&self.ca_cert_pem)
    }

    /// Signs a PEM CSR (e.g. from `openssl req -new -newkey rsa:4096 -nodes`) into a
    /// client certificate whose CN is `cn` (the pool ULID). The CSR's own subject and
    /// extensions are not trusted.
    pub fn sign_csr(&self, csr_pem: &str, cn: &str, nonce: u64) -> Result<String> {
        if !csr_pem.contains("-----BEGIN CERTIFICATE REQUEST-----")
            && !csr_pem.contains("-----BEGIN NEW CERTIFICATE REQUEST-----")
        {
            return Err(BackendError::Csr(
                "not a PEM certificate signing request (expected BEGIN CERTIFICATE REQUEST)".into(),
            ));
        }
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| {
            BackendError::Csr(match e {
                rcgen::Error::InvalidCertificationRequestSignature => {
                    "the request's signature does not verify".to_string()
                }
                rcgen::Error::CouldNotParseCertificationRequest => {
                    "the request cannot be parsed (corrupt or truncated PEM?)".to_string()
                }
                other => other.to_string(),
            })
        })?;
        let params = client_params(cn, serial_for(csr.public_key.der_bytes(), cn, nonce));
        let cert = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(pki_err("signing CSR"))?;
        Ok(cert.pem())
    }

    /// Makes both halves: an RSA key (PKCS#8 PEM) of `bits` (2048, 3072 or 4096) and a
    /// client certificate with CN `cn`.
    pub fn generate_client(&self, cn: &str, bits: u32, nonce: u64) -> Result<CertifiedKey> {
        let size = match bits {
            2048 => RsaKeySize::_2048,
            3072 => RsaKeySize::_3072,
            4096 => RsaKeySize::_4096,
            other => {
                return Err(BackendError::Invalid(format!(
                    "RSA key size {other} (expected 2048, 3072 or 4096)"
                )))
            }
        };
        let key = KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, size)
            .map_err(pki_err("generating RSA key"))?;
        let params = client_params(cn, serial_for(&key.subject_public_key_info(), cn, nonce));
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(pki_err("signing client cert"))?;
        Ok(CertifiedKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A small (ECDSA) client certificate, e.g. the backend's own for an external broker.
    pub fn generate_ecdsa_client(&self, cn: &str) -> Result<CertifiedKey> {
        let key = KeyPair::generate().map_err(pki_err("generating key"))?;
        let params = client_params(cn, serial_for(&key.subject_public_key_info(), cn, 0));
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(pki_err("signing client cert"))?;
        Ok(CertifiedKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A server certificate for loopback names (and any extra DNS names / IPs).
    pub fn generate_server(&self, extra_names: &[String]) -> Result<CertifiedKey> {
        let key = KeyPair::generate().map_err(pki_err("generating key"))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "fake-backend server");
        params.distinguished_name = dn;
        let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
        names.extend(extra_names.iter().cloned());
        for name in names {
            params.subject_alt_names.push(match name.parse() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(
                    name.clone()
                        .try_into()
                        .map_err(|e| BackendError::Pki(format!("server name {name:?}: {e}")))?,
                ),
            });
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.serial_number = Some(serial_for(&key.subject_public_key_info(), "server", 0));
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(pki_err("signing server cert"))?;
        Ok(CertifiedKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

fn client_params(cn: &str, serial: SerialNumber) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.serial_number = Some(serial);
    params
}

/// The CN of a DER certificate, if any.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_persists_and_signs() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::load_or_create(dir.path()).unwrap();
        let again = Pki::load_or_create(dir.path()).unwrap();
        assert_eq!(pki.ca_cert_pem(), again.ca_cert_pem());
        let client = again.generate_client("POOL", 2048, 1).unwrap();
        assert!(client.key_pem.contains("BEGIN PRIVATE KEY"));
        let der = first_cert_der(&client.cert_pem).unwrap();
        assert_eq!(common_name(&der).as_deref(), Some("POOL"));
    }

    #[test]
    fn bad_csr_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::load_or_create(dir.path()).unwrap();
        let err = pki.sign_csr("hello", "P", 0).unwrap_err().to_string();
        assert!(
            err.contains("not a PEM certificate signing request"),
            "{err}"
        );
        let err = pki
            .sign_csr(
                "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
                "P",
                0,
            )
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot be parsed"), "{err}");
    }
}
