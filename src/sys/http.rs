//! HTTP for health probes and webhooks: the one place ureq agents are made.
//!
//! `https://` goes through rustls. Certificates are checked against the system's roots (the
//! platform verifier reads Debian's `/etc/ssl/certs`), or against a private CA's certificates
//! when `ca_file` names a PEM file. Checking can be turned off (`insecure`) only for a loopback
//! URL, where no network lies between ats-hook and the server, and the output says so.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ureq::tls::{PemItem, RootCerts, TlsConfig};

/// How a connection's certificate is checked.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tls<'a> {
    /// A PEM file of the CA certificates to trust instead of the system's.
    pub ca_file: Option<&'a Path>,
    /// No check at all (loopback URLs only, which the config enforces).
    pub insecure: bool,
}

/// An agent with `timeout` for a whole request, that never turns an HTTP status into an error
/// and follows no redirect.
pub fn agent(timeout: Duration, tls: Tls<'_>) -> Result<ureq::Agent> {
    let roots = match tls.ca_file {
        None => RootCerts::PlatformVerifier,
        Some(path) => RootCerts::new_with_certs(&read_certificates(path)?),
    };
    let tls = TlsConfig::builder()
        .root_certs(roots)
        .disable_verification(tls.insecure)
        .build();
    Ok(ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .max_redirects(0)
        .tls_config(tls)
        .build()
        .into())
}

fn read_certificates(path: &Path) -> Result<Vec<ureq::tls::Certificate<'static>>> {
    let pem = std::fs::read(path)
        .with_context(|| format!("failed to read the CA file `{}`", path.display()))?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        if let PemItem::Certificate(cert) =
            item.with_context(|| format!("the CA file `{}` is not valid PEM", path.display()))?
        {
            certs.push(cert);
        }
    }
    if certs.is_empty() {
        bail!("the CA file `{}` holds no certificate", path.display());
    }
    Ok(certs)
}

/// A URL's scheme, its authority without the user part (`host:port`), and whether anything
/// (path, query) follows the authority or a user part was dropped.
fn split(url: &str) -> Option<(&str, &str, bool)> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let (user, host_port) = match authority.rsplit_once('@') {
        Some((_, host_port)) => (true, host_port),
        None => (false, authority),
    };
    Some((scheme, host_port, user || rest.len() > authority.len()))
}

/// The host of an `http://` or `https://` URL, without brackets, user or port.
pub fn host(url: &str) -> Option<&str> {
    let (_, authority, _) = split(url)?;
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?,
        None => authority.split(':').next()?,
    };
    (!host.is_empty()).then_some(host)
}

/// Whether `url` names this machine by a loopback address or `localhost`.
pub fn is_loopback(url: &str) -> bool {
    match host(url) {
        Some("localhost") => true,
        Some(host) => host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

/// `url` as it may be printed: scheme and host only, the rest (where webhook tokens live)
/// replaced by `…`.
pub fn redact(url: &str) -> String {
    match split(url) {
        None => "…".to_string(),
        Some((scheme, authority, true)) => format!("{scheme}://{authority}/…"),
        Some((scheme, authority, false)) => format!("{scheme}://{authority}"),
    }
}

/// `text` with every occurrence of `url` (and of its part after the host) redacted.
pub fn scrub(text: &str, url: &str) -> String {
    let mut text = text.replace(url, &redact(url));
    if let Some(rest) = url.split_once("://").map(|(_, r)| r) {
        if let Some(slash) = rest.find('/') {
            let secret = &rest[slash..];
            if secret.len() > 1 {
                text = text.replace(secret, "/…");
            }
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_read_and_printed_without_their_secrets() {
        assert_eq!(
            host("https://hooks.example.com/services/T0/B0/XYZ"),
            Some("hooks.example.com")
        );
        assert_eq!(host("http://user:pw@127.0.0.1:8000/x"), Some("127.0.0.1"));
        assert_eq!(host("https://[::1]:8443/"), Some("::1"));
        assert_eq!(host("no scheme"), None);
        assert!(is_loopback("https://127.0.0.1:8443/health"));
        assert!(is_loopback("https://[::1]/"));
        assert!(is_loopback("https://localhost:8443/"));
        assert!(!is_loopback("https://example.com/"));
        assert!(!is_loopback("https://127.0.0.1.example.com/"));
        assert_eq!(
            redact("https://hooks.example.com/services/T0/B0/XYZ"),
            "https://hooks.example.com/…"
        );
        assert_eq!(
            redact("https://u:secret@h.example:444"),
            "https://h.example:444/…"
        );
        assert_eq!(redact("http://127.0.0.1:9"), "http://127.0.0.1:9");
        assert_eq!(
            scrub(
                "POST https://h.example/a/SECRET failed: /a/SECRET refused",
                "https://h.example/a/SECRET"
            ),
            "POST https://h.example/… failed: /… refused"
        );
    }
}
