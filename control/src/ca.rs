//! The fleet certificate authority: the X.509 CA whose certificates identify devices, the
//! broker and the control to each other over MQTT with mutual TLS.
//!
//! - [`FleetCa`]: the CA certificate and its key in memory; [`FleetCa::issue`] turns a
//!   certificate signing request into a certificate for one [`Identity`]. Only the CSR's public
//!   key is used (after its signature is checked): subject, names, usages and validity come from
//!   the identity, so a request cannot ask for more than it is given.
//! - [`CaFiles`]: where the CA lives on disk (`<data_dir>/fleet-ca/`: `ca.pem`, and `ca.key`
//!   created with mode 0600 in a 0700 directory; a key file readable by others is refused).
//! - [`new_key_and_csr`]: what the CLI runs on the operator's machine, so device and broker
//!   private keys are generated where they are used and never travel to the server.
//!
//! Every key is ECDSA P-256 with SHA-256: both rustls (agents, the control) and OpenSSL
//! (Mosquitto) accept it for client and server certificates. A certificate's identity is its
//! subject CN, which Mosquitto's `use_identity_as_username` makes the MQTT user name: a device's
//! CN is its device id; the control's is `outpost-control:<instance>`, which no device id can be
//! (a device id has no `:`), so no enrolled device can be given the control's broker rights.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use sha2::{Digest as _, Sha256};
use time::{Duration, OffsetDateTime};
use zeroize::Zeroizing;

use outpost_shared::wire::DeviceId;

/// The directory of the fleet CA inside the control's data directory.
pub const CA_DIRECTORY: &str = "fleet-ca";
/// Subject CN prefix of control identities; a device id never contains `:`.
pub const CONTROL_CN_PREFIX: &str = "outpost-control:";
/// How long the CA certificate is valid.
pub const CA_VALID_DAYS: i64 = 20 * 365;
/// Default and largest validity of issued certificates, in days.
pub const DEFAULT_VALID_DAYS: u32 = 5 * 365;
pub const MAX_VALID_DAYS: u32 = 20 * 365;
/// Largest CSR accepted, in bytes of PEM.
pub const MAX_CSR_BYTES: usize = 16 * 1024;

/// Why the CA could not be loaded, created or used.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("fleet CA file {path}: {reason}")]
    File { path: String, reason: String },
    #[error(
        "fleet CA key {path} is readable by group or others (mode {mode:o}): `chmod 600` it, \
         and keep it that way"
    )]
    KeyPermissions { path: String, mode: u32 },
    #[error("fleet CA: {0}")]
    Crypto(String),
    /// The request is not acceptable; the text says why (400 for the API).
    #[error("{0}")]
    Request(String),
    /// This instance's CA is not the one recorded in the database (409 for the API).
    #[error("{0}")]
    Mismatch(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

fn crypto(error: impl std::fmt::Display) -> CaError {
    CaError::Crypto(error.to_string())
}

/// What a certificate is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// A device: CN and URI SAN `urn:outpost:device:<id>`; TLS client only.
    Device(DeviceId),
    /// The MQTT broker: a TLS server certificate for these host names and IP addresses.
    Broker { hosts: Vec<String> },
    /// One control instance connecting to the broker: TLS client, CN
    /// `outpost-control:<instance>`.
    Control { instance: String },
}

impl Identity {
    /// A control identity; `instance` is 1-64 characters of `A-Z a-z 0-9 . _ -`.
    pub fn control(instance: &str) -> Result<Identity, CaError> {
        DeviceId::new(instance).map_err(|error| {
            CaError::Request(format!(
                "control instance name `{instance}`: {}",
                error.to_string().replace("device id", "name")
            ))
        })?;
        Ok(Identity::Control { instance: instance.to_string() })
    }

    /// A broker identity; each host is a DNS name or an IP address.
    pub fn broker(hosts: &[String]) -> Result<Identity, CaError> {
        if hosts.is_empty() {
            return Err(CaError::Request("a broker certificate needs at least one host".into()));
        }
        for host in hosts {
            let valid_name = !host.is_empty()
                && host.len() <= 253
                && host.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                        && !label.starts_with('-')
                        && !label.ends_with('-')
                });
            if host.parse::<std::net::IpAddr>().is_err() && !valid_name {
                return Err(CaError::Request(format!(
                    "broker host `{host}` is neither a DNS name nor an IP address"
                )));
            }
        }
        Ok(Identity::Broker { hosts: hosts.to_vec() })
    }

    /// The certificate's subject CN, which Mosquitto takes as the MQTT user name.
    pub fn common_name(&self) -> String {
        match self {
            Identity::Device(device) => device.to_string(),
            Identity::Broker { hosts } => hosts.first().cloned().unwrap_or_default(),
            Identity::Control { instance } => format!("{CONTROL_CN_PREFIX}{instance}"),
        }
    }

    /// `device`, `broker` or `control`, as stored.
    pub fn kind(&self) -> &'static str {
        match self {
            Identity::Device(_) => "device",
            Identity::Broker { .. } => "broker",
            Identity::Control { .. } => "control",
        }
    }

    fn subject_alt_names(&self) -> Result<Vec<SanType>, CaError> {
        let ia5 = |text: String| {
            text.clone().try_into().map_err(|_| CaError::Request(format!("`{text}` is not ASCII")))
        };
        Ok(match self {
            Identity::Device(device) => {
                vec![SanType::URI(ia5(format!("urn:outpost:device:{device}"))?)]
            }
            Identity::Control { instance } => {
                vec![SanType::URI(ia5(format!("urn:outpost:control:{instance}"))?)]
            }
            Identity::Broker { hosts } => hosts
                .iter()
                .map(|host| match host.parse::<std::net::IpAddr>() {
                    Ok(address) => Ok(SanType::IpAddress(address)),
                    Err(_) => Ok(SanType::DnsName(ia5(host.clone())?)),
                })
                .collect::<Result<_, CaError>>()?,
        })
    }
}

/// A certificate the CA issued.
#[derive(Debug, Clone)]
pub struct IssuedCertificate {
    pub certificate_pem: String,
    /// The serial number, lower-case hex.
    pub serial: String,
    /// `sha256:` + hex of the certificate's DER.
    pub fingerprint: String,
    pub not_after: OffsetDateTime,
    pub common_name: String,
}

/// The fleet CA, loaded.
pub struct FleetCa {
    certificate_pem: String,
    fingerprint: String,
    /// When the CA certificate expires; nothing it signs outlives it.
    not_after: OffsetDateTime,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for FleetCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("FleetCa").field("fingerprint", &self.fingerprint).finish_non_exhaustive()
    }
}

/// `sha256:<hex>` of DER bytes.
pub fn fingerprint(der: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(der)))
}

/// The kinds of PEM section this module reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PemKind {
    Certificate,
    CertificateRequest,
}

impl PemKind {
    fn label(self) -> &'static str {
        match self {
            PemKind::Certificate => "certificate",
            PemKind::CertificateRequest => "certificate request",
        }
    }

    fn matches(self, section: rustls::pki_types::pem::SectionKind) -> bool {
        use rustls::pki_types::pem::SectionKind;
        match self {
            PemKind::Certificate => section == SectionKind::Certificate,
            PemKind::CertificateRequest => section == SectionKind::Csr,
        }
    }
}

/// The DER of the one section of `kind` in `pem` (other sections are ignored).
fn pem_to_der(pem: &str, kind: PemKind) -> Result<Vec<u8>, CaError> {
    use rustls::pki_types::pem::{PemObject as _, SectionKind};
    let label = kind.label();
    let mut found = None;
    for item in <(SectionKind, Vec<u8>)>::pem_slice_iter(pem.as_bytes()) {
        let (section, der) = item.map_err(|error| CaError::Request(format!("{label}: {error}")))?;
        if kind.matches(section) {
            if found.is_some() {
                return Err(CaError::Request(format!("holds more than one {label}")));
            }
            found = Some(der);
        }
    }
    found.ok_or_else(|| CaError::Request(format!("holds no PEM {label}")))
}

/// Random 128-bit positive serial number.
fn random_serial() -> Result<Vec<u8>, CaError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(crypto)?;
    // Positive and exactly 16 bytes long when DER-encoded as an INTEGER (RFC 5280 4.1.2.2).
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(bytes.to_vec())
}

impl FleetCa {
    /// A new CA with a fresh P-256 key, valid from an hour before `now` for
    /// [`CA_VALID_DAYS`]. Returns the CA and its key as PKCS#8 PEM (to be stored).
    pub fn generate(now: OffsetDateTime) -> Result<(FleetCa, Zeroizing<String>), CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(crypto)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::OrganizationName, "Outpost");
        params.distinguished_name.push(DnType::CommonName, "Outpost fleet CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(CA_VALID_DAYS);
        params.serial_number = Some(SerialNumber::from(random_serial()?));
        let certificate = params.self_signed(&key).map_err(crypto)?;
        let key_pem = Zeroizing::new(key.serialize_pem());
        let ca = FleetCa {
            certificate_pem: certificate.pem(),
            fingerprint: fingerprint(certificate.der()),
            not_after: params.not_after,
            issuer: Issuer::new(params, key),
        };
        Ok((ca, key_pem))
    }

    /// The CA from its certificate and key (PEM); refuses a key that is not the certificate's.
    pub fn from_pem(certificate_pem: &str, key_pem: &str) -> Result<FleetCa, CaError> {
        let der = pem_to_der(certificate_pem, PemKind::Certificate)?;
        let key =
            KeyPair::from_pem(key_pem).map_err(|error| crypto(format!("the key: {error}")))?;
        let (_, parsed) = x509_parser::parse_x509_certificate(&der)
            .map_err(|error| crypto(format!("the certificate: {error}")))?;
        if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(crypto("the key does not belong to the CA certificate"));
        }
        if !parsed.is_ca() {
            return Err(crypto("the certificate is not a CA certificate"));
        }
        let not_after =
            OffsetDateTime::from_unix_timestamp(parsed.validity().not_after.timestamp())
                .map_err(crypto)?;
        let issuer = Issuer::from_ca_cert_der(&der.as_slice().into(), key).map_err(crypto)?;
        Ok(FleetCa {
            certificate_pem: certificate_pem.to_string(),
            fingerprint: fingerprint(&der),
            not_after,
            issuer,
        })
    }

    /// The CA certificate, PEM: the trust anchor devices, the broker and the control use.
    pub fn certificate_pem(&self) -> &str {
        &self.certificate_pem
    }

    /// `sha256:` + hex of the CA certificate's DER.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Issues a certificate for `identity` to the key of `csr_pem` (after checking the CSR's
    /// signature and that its key is P-256), valid from an hour before `now` for `valid_days`.
    pub fn issue(
        &self,
        identity: &Identity,
        csr_pem: &str,
        valid_days: u32,
        now: OffsetDateTime,
    ) -> Result<IssuedCertificate, CaError> {
        if csr_pem.len() > MAX_CSR_BYTES {
            return Err(CaError::Request(format!(
                "the CSR is {} bytes, over the limit of {MAX_CSR_BYTES}",
                csr_pem.len()
            )));
        }
        if valid_days == 0 || valid_days > MAX_VALID_DAYS {
            return Err(CaError::Request(format!(
                "validity of {valid_days} days: it must be between 1 and {MAX_VALID_DAYS}"
            )));
        }
        let der = pem_to_der(csr_pem, PemKind::CertificateRequest)?;
        let request = CertificateSigningRequestParams::from_der(&der.as_slice().into())
            .map_err(|error| CaError::Request(format!("the CSR is refused: {error}")))?;
        // The uncompressed P-256 point is 65 bytes; anything else would be mislabelled.
        let public_key = &request.public_key;
        if public_key.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256
            || rcgen::PublicKeyData::der_bytes(public_key).len() != 65
        {
            return Err(CaError::Request("the CSR's key must be ECDSA P-256".into()));
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::OrganizationName, "Outpost");
        params.distinguished_name.push(DnType::CommonName, identity.common_name());
        params.subject_alt_names = identity.subject_alt_names()?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![match identity {
            Identity::Broker { .. } => ExtendedKeyUsagePurpose::ServerAuth,
            Identity::Device(_) | Identity::Control { .. } => ExtendedKeyUsagePurpose::ClientAuth,
        }];
        params.use_authority_key_identifier_extension = true;
        params.not_before = now - Duration::hours(1);
        let not_after = now + Duration::days(i64::from(valid_days));
        // Never past the CA itself: a chain is only as valid as its shortest link.
        params.not_after = not_after.min(self.not_after);
        let serial = random_serial()?;
        params.serial_number = Some(SerialNumber::from(serial.clone()));
        let certificate = params.signed_by(public_key, &self.issuer).map_err(crypto)?;
        Ok(IssuedCertificate {
            certificate_pem: certificate.pem(),
            serial: hex::encode(serial),
            fingerprint: fingerprint(certificate.der()),
            not_after: params.not_after,
            common_name: identity.common_name(),
        })
    }

    /// The certificate revocation list (PEM) naming `revoked` (serial in hex, revocation time),
    /// numbered by `now` in milliseconds so a later list always has a higher number. It is valid
    /// until the CA expires: a broker keeps accepting it, and a new one replaces it whenever a
    /// certificate is revoked.
    pub fn revocation_list(
        &self,
        revoked: &[(String, OffsetDateTime)],
        now: OffsetDateTime,
    ) -> Result<String, CaError> {
        let revoked_certs = revoked
            .iter()
            .map(|(serial, at)| {
                let bytes = hex::decode(serial)
                    .map_err(|_| crypto(format!("stored serial `{serial}` is not hex")))?;
                Ok(rcgen::RevokedCertParams {
                    serial_number: SerialNumber::from(bytes),
                    revocation_time: *at,
                    reason_code: None,
                    invalidity_date: None,
                })
            })
            .collect::<Result<Vec<_>, CaError>>()?;
        let number = u64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
        let params = rcgen::CertificateRevocationListParams {
            this_update: now - Duration::hours(1),
            next_update: self.not_after,
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        params.signed_by(&self.issuer).map_err(crypto)?.pem().map_err(crypto)
    }
}

/// A fresh P-256 key and a CSR for it (subject CN `common_name`), both PEM. Runs where the key
/// will be used; the server only ever sees the CSR.
pub fn new_key_and_csr(common_name: &str) -> Result<(Zeroizing<String>, String), CaError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(crypto)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, common_name);
    let csr = params.serialize_request(&key).map_err(crypto)?;
    Ok((Zeroizing::new(key.serialize_pem()), csr.pem().map_err(crypto)?))
}

/// The fleet CA's files in the control's data directory.
#[derive(Debug, Clone)]
pub struct CaFiles {
    pub directory: PathBuf,
}

impl CaFiles {
    pub fn in_data_dir(data_dir: &Path) -> CaFiles {
        CaFiles { directory: data_dir.join(CA_DIRECTORY) }
    }

    pub fn certificate(&self) -> PathBuf {
        self.directory.join("ca.pem")
    }

    pub fn key(&self) -> PathBuf {
        self.directory.join("ca.key")
    }

    /// The CA when both files exist; `None` when neither does. One without the other, a key
    /// readable by others, or files that do not belong together are errors.
    pub fn load(&self) -> Result<Option<FleetCa>, CaError> {
        let (certificate_path, key_path) = (self.certificate(), self.key());
        let file_error = |path: &Path, reason: String| CaError::File {
            path: path.display().to_string(),
            reason,
        };
        match (certificate_path.exists(), key_path.exists()) {
            (false, false) => return Ok(None),
            (true, true) => {}
            (true, false) => {
                return Err(file_error(&key_path, "is missing (the certificate is there)".into()));
            }
            (false, true) => {
                return Err(file_error(&certificate_path, "is missing (the key is there)".into()));
            }
        }
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&key_path)
                .map_err(|error| file_error(&key_path, error.to_string()))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(CaError::KeyPermissions {
                    path: key_path.display().to_string(),
                    mode: mode & 0o777,
                });
            }
        }
        let certificate = std::fs::read_to_string(&certificate_path)
            .map_err(|error| file_error(&certificate_path, error.to_string()))?;
        let key = Zeroizing::new(
            std::fs::read_to_string(&key_path)
                .map_err(|error| file_error(&key_path, error.to_string()))?,
        );
        FleetCa::from_pem(&certificate, &key)
            .map(Some)
            .map_err(|error| file_error(&self.directory, format!("cannot be used: {error}")))
    }

    /// Writes a new CA: the directory (mode 0700), the key (0600, first) and the certificate.
    /// Refuses to replace existing files.
    pub fn store(&self, ca: &FleetCa, key_pem: &str) -> Result<(), CaError> {
        let file_error = |path: &Path, reason: String| CaError::File {
            path: path.display().to_string(),
            reason,
        };
        if self.certificate().exists() || self.key().exists() {
            return Err(file_error(&self.directory, "already holds a CA".into()));
        }
        {
            use std::os::unix::fs::DirBuilderExt as _;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.directory)
                .map_err(|error| file_error(&self.directory, error.to_string()))?;
        }
        crate::files::write_atomic(&self.key(), key_pem.as_bytes(), true)
            .map_err(|error| file_error(&self.key(), format!("{error:#}")))?;
        crate::files::write_atomic(&self.certificate(), ca.certificate_pem().as_bytes(), false)
            .map_err(|error| file_error(&self.certificate(), format!("{error:#}")))
    }

    /// Removes the CA files (a CA this instance created but lost the race to record).
    pub fn remove(&self) {
        let _ = std::fs::remove_file(self.certificate());
        let _ = std::fs::remove_file(self.key());
    }
}

/// The fleet CA of a running server: loaded, or created, on first use, and checked against
/// the fingerprint recorded in the database so every instance on one database issues from the
/// same CA.
#[derive(Debug)]
pub struct FleetCaCell {
    files: CaFiles,
    loaded: tokio::sync::Mutex<Option<Arc<FleetCa>>>,
}

impl FleetCaCell {
    pub fn new(data_dir: &Path) -> FleetCaCell {
        FleetCaCell { files: CaFiles::in_data_dir(data_dir), loaded: tokio::sync::Mutex::new(None) }
    }

    pub fn files(&self) -> &CaFiles {
        &self.files
    }

    /// The CA: from memory, else from the files, else newly created. The database's record
    /// decides: files that differ from it, or no files while it names a CA, are refused with
    /// what to copy where; a new CA is recorded before it is used.
    pub async fn get(&self, store: &crate::store::Store) -> Result<Arc<FleetCa>, CaError> {
        let mut loaded = self.loaded.lock().await;
        if let Some(ca) = loaded.as_ref() {
            return Ok(ca.clone());
        }
        let files = self.files.clone();
        let from_files = tokio::task::spawn_blocking(move || files.load())
            .await
            .map_err(|error| crypto(format!("loading the CA: {error}")))??;
        let recorded = store.fleet_ca_fingerprint().await?;
        let ca = match (from_files, recorded) {
            (Some(ca), Some(recorded)) if ca.fingerprint() == recorded => ca,
            (Some(ca), Some(recorded)) => {
                return Err(CaError::Mismatch(format!(
                    "the fleet CA in {} ({}) is not the fleet's CA recorded in the database \
                     ({recorded}): copy the CA directory of the instance that created it here",
                    self.files.directory.display(),
                    ca.fingerprint()
                )));
            }
            (None, Some(recorded)) => {
                return Err(CaError::Mismatch(format!(
                    "the database records the fleet CA {recorded} but {} holds no CA: copy the CA \
                     directory of the instance that created it here",
                    self.files.directory.display()
                )));
            }
            (Some(ca), None) => {
                self.record(store, &ca).await?;
                ca
            }
            (None, None) => {
                let (ca, key_pem) = FleetCa::generate(OffsetDateTime::now_utc())?;
                let files = self.files.clone();
                let ca =
                    tokio::task::spawn_blocking(move || files.store(&ca, &key_pem).map(|()| ca))
                        .await
                        .map_err(|error| crypto(format!("storing the CA: {error}")))??;
                if let Err(error) = self.record(store, &ca).await {
                    // Another instance recorded its CA first (or the database failed): this
                    // one was never used, so it goes.
                    self.files.remove();
                    return Err(error);
                }
                tracing::info!(
                    directory = %self.files.directory.display(),
                    fingerprint = ca.fingerprint(),
                    "fleet CA created"
                );
                ca
            }
        };
        let ca = Arc::new(ca);
        *loaded = Some(ca.clone());
        Ok(ca)
    }

    async fn record(&self, store: &crate::store::Store, ca: &FleetCa) -> Result<(), CaError> {
        let recorded = store.record_fleet_ca(ca.fingerprint(), ca.certificate_pem()).await?;
        if recorded != ca.fingerprint() {
            return Err(CaError::Mismatch(format!(
                "another control instance recorded the fleet CA {recorded} first: copy its CA \
                 directory to {}",
                self.files.directory.display()
            )));
        }
        Ok(())
    }
}

/// What a certificate says, read back (for tests and `outpost` output).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateSummary {
    pub common_name: String,
    pub serial: String,
    pub issuer_common_name: String,
    pub not_after: OffsetDateTime,
}

/// Reads a PEM certificate's subject CN, serial, issuer CN and expiry.
pub fn summarize(certificate_pem: &str) -> Result<CertificateSummary, CaError> {
    let der = pem_to_der(certificate_pem, PemKind::Certificate)?;
    let (_, parsed) = x509_parser::parse_x509_certificate(&der)
        .map_err(|error| CaError::Request(format!("the certificate: {error}")))?;
    let cn = |name: &x509_parser::x509::X509Name<'_>| {
        name.iter_common_name().next().and_then(|cn| cn.as_str().ok()).unwrap_or("").to_string()
    };
    Ok(CertificateSummary {
        common_name: cn(parsed.subject()),
        serial: hex::encode(parsed.raw_serial()),
        issuer_common_name: cn(parsed.issuer()),
        not_after: OffsetDateTime::from_unix_timestamp(parsed.validity().not_after.timestamp())
            .map_err(crypto)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    #[test]
    fn a_device_certificate_names_the_device_and_chains_to_the_ca() {
        let (ca, key_pem) = FleetCa::generate(now()).expect("ca");
        let reloaded = FleetCa::from_pem(ca.certificate_pem(), &key_pem).expect("reload");
        assert_eq!(reloaded.fingerprint(), ca.fingerprint());
        let (_, csr) = new_key_and_csr("whatever the request says").expect("csr");
        let device = DeviceId::new("pump-17").expect("id");
        let issued = reloaded.issue(&Identity::Device(device), &csr, 30, now()).expect("issued");
        let summary = summarize(&issued.certificate_pem).expect("summary");
        assert_eq!(summary.common_name, "pump-17", "the identity wins over the CSR's subject");
        assert_eq!(summary.issuer_common_name, "Outpost fleet CA");
        assert_eq!(summary.serial, issued.serial);
        assert!(issued.certificate_pem.contains("BEGIN CERTIFICATE"));
        assert!(issued.fingerprint.starts_with("sha256:") && issued.fingerprint.len() == 71);
        let ca_der = pem_to_der(ca.certificate_pem(), PemKind::Certificate).expect("der");
        let (_, ca_certificate) = x509_parser::parse_x509_certificate(&ca_der).expect("ca");
        let device_der = pem_to_der(&issued.certificate_pem, PemKind::Certificate).expect("der");
        let (_, device_certificate) =
            x509_parser::parse_x509_certificate(&device_der).expect("device");
        device_certificate.verify_signature(Some(ca_certificate.public_key())).expect("chains");
        let usage = device_certificate.extended_key_usage().expect("eku").expect("present");
        assert!(usage.value.client_auth && !usage.value.server_auth, "a client certificate only");
        assert!(!device_certificate.is_ca());
    }

    #[test]
    fn bad_requests_are_refused_with_the_reason() {
        let (ca, _) = FleetCa::generate(now()).expect("ca");
        let (_, csr) = new_key_and_csr("x").expect("csr");
        let device = Identity::Device(DeviceId::new("d").expect("id"));
        let mut flipped = csr.clone().into_bytes();
        let middle = flipped.len() / 2;
        flipped[middle] = if flipped[middle] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(flipped).expect("ascii");
        let cases: Vec<(&str, String, u32)> = vec![
            ("holds no PEM", "not a csr".into(), 30),
            ("CSR is refused", flipped, 30),
            ("validity", csr.clone(), 0),
            ("validity", csr.clone(), MAX_VALID_DAYS + 1),
            ("over the limit", "x".repeat(MAX_CSR_BYTES + 1), 30),
        ];
        for (expected, request, days) in cases {
            let error = ca.issue(&device, &request, days, now()).expect_err(expected);
            assert!(error.to_string().contains(expected), "{error} should say {expected}");
        }
        assert!(Identity::control("a:b").is_err());
        assert!(Identity::broker(&[]).is_err());
        assert!(Identity::broker(&["bad host".into()]).is_err());
        assert!(Identity::broker(&["broker.example".into(), "10.0.0.5".into()]).is_ok());
    }

    #[test]
    fn the_revocation_list_names_revoked_serials_and_is_signed_by_the_ca() {
        let (ca, _) = FleetCa::generate(now()).expect("ca");
        let (_, csr) = new_key_and_csr("d").expect("csr");
        let device = Identity::Device(DeviceId::new("d").expect("id"));
        let issued = ca.issue(&device, &csr, 30, now()).expect("issued");
        let crl = ca.revocation_list(&[(issued.serial.clone(), now())], now()).expect("crl");
        let der = {
            use rustls::pki_types::pem::PemObject as _;
            rustls::pki_types::CertificateRevocationListDer::from_pem_slice(crl.as_bytes())
                .expect("PEM CRL")
        };
        let (_, parsed) = x509_parser::parse_x509_crl(&der).expect("CRL");
        let serials: Vec<String> = parsed
            .iter_revoked_certificates()
            .map(|revoked| hex::encode(revoked.raw_serial()))
            .collect();
        assert_eq!(serials, [issued.serial]);
        let ca_der = pem_to_der(ca.certificate_pem(), PemKind::Certificate).expect("der");
        let (_, ca_certificate) = x509_parser::parse_x509_certificate(&ca_der).expect("ca");
        assert_eq!(parsed.issuer(), ca_certificate.subject());
        parsed.verify_signature(ca_certificate.public_key()).expect("signed by the CA");
        let (other, _) = FleetCa::generate(now()).expect("other ca");
        let other_der = pem_to_der(other.certificate_pem(), PemKind::Certificate).expect("der");
        let (_, other_certificate) = x509_parser::parse_x509_certificate(&other_der).expect("ca");
        assert!(parsed.verify_signature(other_certificate.public_key()).is_err());
        assert!(ca.revocation_list(&[("zz".into(), now())], now()).is_err());
    }

    #[test]
    fn a_key_that_is_not_the_certificates_is_refused() {
        let (ca, _) = FleetCa::generate(now()).expect("ca");
        let (_, other_key) = FleetCa::generate(now()).expect("other");
        let error = FleetCa::from_pem(ca.certificate_pem(), &other_key).expect_err("refused");
        assert!(error.to_string().contains("does not belong"), "{error}");
    }

    #[test]
    fn the_files_are_private_and_a_readable_key_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let directory = tempfile::tempdir().expect("tempdir");
        let files = CaFiles::in_data_dir(directory.path());
        assert!(files.load().expect("load").is_none());
        let (ca, key_pem) = FleetCa::generate(now()).expect("ca");
        files.store(&ca, &key_pem).expect("store");
        let mode =
            |path: &Path| std::fs::metadata(path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(&files.key()), 0o600);
        assert_eq!(mode(&files.directory), 0o700);
        let loaded = files.load().expect("load").expect("present");
        assert_eq!(loaded.fingerprint(), ca.fingerprint());
        assert!(files.store(&ca, &key_pem).is_err(), "never replaced");
        std::fs::set_permissions(files.key(), std::fs::Permissions::from_mode(0o644))
            .expect("chmod");
        assert!(matches!(files.load(), Err(CaError::KeyPermissions { .. })));
        assert!(!format!("{ca:?}").contains("PRIVATE"));
    }
}
