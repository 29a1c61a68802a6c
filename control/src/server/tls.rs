//! TLS for the control server, all through rustls with the ring provider: the API's
//! server certificate and the MQTT client's connection to an external broker.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::ServerError;
use crate::config::{BrokerTls, TlsFiles};

/// Makes ring the process-wide rustls provider (once; later calls do nothing), so every
/// rustls user in the process (API, MQTT client, HTTP client) agrees on one provider.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn tls_error(path: &Path, what: &str, reason: impl std::fmt::Display) -> ServerError {
    ServerError::Tls(format!("{what} {}: {reason}", path.display()))
}

/// Reads a PEM certificate chain.
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, ServerError> {
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|error| tls_error(path, "certificate file", error))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| tls_error(path, "certificate file", error))?;
    if certificates.is_empty() {
        return Err(tls_error(path, "certificate file", "holds no PEM certificate"));
    }
    Ok(certificates)
}

/// Reads a PEM private key (PKCS#8, PKCS#1 or SEC1).
pub fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, ServerError> {
    PrivateKeyDer::from_pem_file(path).map_err(|error| tls_error(path, "private key file", error))
}

/// The API's rustls server configuration, with HTTP/1.1 ALPN.
pub fn api_server_config(files: &TlsFiles) -> Result<rustls::ServerConfig, ServerError> {
    install_crypto_provider();
    let chain = read_certificates(&files.certificate_chain)?;
    let key = read_private_key(&files.private_key)?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|error| tls_error(&files.private_key, "API certificate and key", error))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The rustls client configuration for an external broker over TLS.
pub fn mqtt_client_config(tls: &BrokerTls) -> Result<rustls::ClientConfig, ServerError> {
    install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    match &tls.ca_file {
        Some(path) => {
            for certificate in read_certificates(path)? {
                roots.add(certificate).map_err(|error| tls_error(path, "CA file", error))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(Arc::new(roots));
    match &tls.client_certificate {
        Some(files) => builder
            .with_client_auth_cert(
                read_certificates(&files.certificate_chain)?,
                read_private_key(&files.private_key)?,
            )
            .map_err(|error| tls_error(&files.private_key, "broker client certificate", error)),
        None => Ok(builder.with_no_client_auth()),
    }
}
