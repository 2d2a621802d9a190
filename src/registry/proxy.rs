//! HTTP(S) proxies for registry traffic, as curl and Go configure them.
//!
//! By default ([`ProxyConfig::Environment`]) the proxy for an `https://` registry is
//! `https_proxy` or `HTTPS_PROXY`, for an `http://` one `http_proxy` or
//! `HTTP_PROXY` (the upper-case form is ignored when `REQUEST_METHOD` is set, as in
//! Go: in a CGI program it comes from a request header), and either falls back to
//! `all_proxy`/`ALL_PROXY`. A proxy URL without a scheme is `http://`; credentials
//! in it (`http://user:pass@proxy:3128`) are sent to the proxy. HTTPS goes through
//! the proxy with `CONNECT`, plain HTTP as absolute-URI requests.
//!
//! `no_proxy`/`NO_PROXY` lists (comma or space separated) the hosts reached
//! directly: `*` for all; a domain (a leading `.` or `*.` is ignored) for itself
//! and its subdomains; an IP address; a CIDR block (`10.0.0.0/8`); each optionally
//! with `:port` to apply to that port only.
//!
//! Loopback registries (`localhost`, `127.0.0.0/8`, `::1`) are never proxied, as in
//! Go's `net/http`: a proxy elsewhere cannot reach them.

use std::net::IpAddr;

use reqwest::Url;

use crate::error::{Error, Result};

use super::client::is_loopback;

/// Which proxy registry requests go through.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum ProxyConfig {
    /// From the environment: `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY`
    /// (and lower case) as the module documentation says.
    #[default]
    Environment,
    /// No proxy.
    Direct,
    /// This proxy for every registry (`http://` or `https://` URL) but the hosts of
    /// `no_proxy` (the `NO_PROXY` syntax; `None` reads `NO_PROXY` from the
    /// environment).
    Url {
        /// The proxy URL.
        url: String,
        /// Hosts reached directly.
        no_proxy: Option<String>,
    },
}

impl std::fmt::Debug for ProxyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProxyConfig::Environment => f.write_str("Environment"),
            ProxyConfig::Direct => f.write_str("Direct"),
            // The URL may hold a password.
            ProxyConfig::Url { url, no_proxy } => {
                let shown = match Url::parse(url) {
                    Ok(mut u) if u.password().is_some() => {
                        let _ = u.set_password(Some("redacted"));
                        u.to_string()
                    }
                    Ok(u) => u.to_string(),
                    Err(_) => "<unparsed>".into(),
                };
                f.debug_struct("Url")
                    .field("url", &shown)
                    .field("no_proxy", no_proxy)
                    .finish()
            }
        }
    }
}

/// The resolved rules: a proxy per scheme and the hosts that bypass it.
#[derive(Debug, Clone, Default)]
pub(crate) struct ProxyRules {
    http: Option<Url>,
    https: Option<Url>,
    bypass: NoProxy,
}

fn env(names: &[&str]) -> Option<(String, String)> {
    names.iter().find_map(|n| {
        std::env::var(n)
            .ok()
            .filter(|v| !v.trim().is_empty())
            .map(|v| (n.to_string(), v))
    })
}

/// Parses a proxy URL; `what` names it in errors (never its value: it may hold a
/// password).
fn parse_proxy(value: &str, what: &str) -> Result<Url> {
    let v = value.trim();
    let v = if v.contains("://") {
        v.to_string()
    } else {
        format!("http://{v}")
    };
    let url =
        Url::parse(&v).map_err(|e| Error::Invalid(format!("{what} is not a proxy URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(Error::Invalid(format!(
            "{what}: only http:// and https:// proxies are supported"
        )));
    }
    Ok(url)
}

impl ProxyRules {
    /// The rules of `config`, reading the environment where it says to.
    pub(crate) fn new(config: &ProxyConfig) -> Result<ProxyRules> {
        let env_no_proxy = || env(&["no_proxy", "NO_PROXY"]).map(|(_, v)| v);
        match config {
            ProxyConfig::Direct => Ok(ProxyRules::default()),
            ProxyConfig::Url { url, no_proxy } => {
                let u = parse_proxy(url, "the registry proxy")?;
                let list = no_proxy.clone().or_else(env_no_proxy).unwrap_or_default();
                Ok(ProxyRules {
                    http: Some(u.clone()),
                    https: Some(u),
                    bypass: NoProxy::parse(&list),
                })
            }
            ProxyConfig::Environment => {
                let cgi = std::env::var_os("REQUEST_METHOD").is_some();
                let http_names: &[&str] = if cgi {
                    &["http_proxy", "all_proxy", "ALL_PROXY"]
                } else {
                    &["http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"]
                };
                let get = |names: &[&str]| -> Result<Option<Url>> {
                    env(names).map(|(n, v)| parse_proxy(&v, &n)).transpose()
                };
                Ok(ProxyRules {
                    http: get(http_names)?,
                    https: get(&["https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"])?,
                    bypass: NoProxy::parse(&env_no_proxy().unwrap_or_default()),
                })
            }
        }
    }

    /// Whether any request could be proxied.
    pub(crate) fn any(&self) -> bool {
        self.http.is_some() || self.https.is_some()
    }

    /// The proxy for a request to `url`, or `None` to connect directly.
    pub(crate) fn proxy_for(&self, url: &Url) -> Option<Url> {
        let proxy = match url.scheme() {
            "https" => self.https.as_ref(),
            "http" => self.http.as_ref(),
            _ => None,
        }?;
        let host = url.host_str()?;
        let port = url.port_or_known_default();
        if is_loopback(host) || self.bypass.matches(host, port) {
            return None;
        }
        Some(proxy.clone())
    }
}

/// A `NO_PROXY` list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct NoProxy {
    all: bool,
    entries: Vec<(Host, Option<u16>)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    /// Lower case, no leading dot.
    Domain(String),
    Ip(IpAddr),
    Cidr(IpAddr, u8),
}

impl NoProxy {
    /// Parses a comma- or space-separated list; entries that parse as nothing are
    /// skipped.
    pub(crate) fn parse(list: &str) -> NoProxy {
        let mut np = NoProxy::default();
        for item in list.split([',', ' ', '\t']).map(str::trim) {
            if item.is_empty() {
                continue;
            }
            if item == "*" {
                np.all = true;
                continue;
            }
            // `[v6]:port`, `[v6]`, `v6`, `host:port`, `host`.
            let (host, port) = if let Some(rest) = item.strip_prefix('[') {
                match rest.split_once(']') {
                    Some((h, p)) => (h, p.strip_prefix(':').and_then(|p| p.parse().ok())),
                    None => continue,
                }
            } else if item.matches(':').count() == 1 {
                let (h, p) = item.split_once(':').expect("one colon");
                match p.parse::<u16>() {
                    Ok(p) => (h, Some(p)),
                    Err(_) => continue,
                }
            } else {
                (item, None)
            };
            let h = if let Some((net, bits)) = host.split_once('/') {
                match (net.parse::<IpAddr>(), bits.parse::<u8>()) {
                    (Ok(ip), Ok(b)) if b <= if ip.is_ipv4() { 32 } else { 128 } => {
                        Host::Cidr(ip, b)
                    }
                    _ => continue,
                }
            } else if let Ok(ip) = host.parse::<IpAddr>() {
                Host::Ip(ip)
            } else {
                let d = host.trim_start_matches("*.").trim_start_matches('.');
                if d.is_empty() {
                    continue;
                }
                Host::Domain(d.to_ascii_lowercase())
            };
            np.entries.push((h, port));
        }
        np
    }

    /// Whether `host` (a name or an address, IPv6 with or without brackets) on
    /// `port` is reached directly.
    pub(crate) fn matches(&self, host: &str, port: Option<u16>) -> bool {
        if self.all {
            return true;
        }
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let ip = host.parse::<IpAddr>().ok();
        let lower = host.to_ascii_lowercase();
        self.entries.iter().any(|(h, p)| {
            if p.is_some() && *p != port {
                return false;
            }
            match (h, ip) {
                (Host::Ip(a), Some(b)) => *a == b,
                (Host::Cidr(net, bits), Some(b)) => in_cidr(b, *net, *bits),
                (Host::Domain(d), None) => {
                    lower == *d
                        || (lower.len() > d.len()
                            && lower.ends_with(d.as_str())
                            && lower.as_bytes()[lower.len() - d.len() - 1] == b'.')
                }
                _ => false,
            }
        })
    }
}

fn in_cidr(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - bits as u32).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - bits as u32).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_proxy_entries() {
        let np = NoProxy::parse(
            "example.com, .corp.net,*.lan 10.0.0.0/8,192.168.1.7:5000,[::2],fd00::/8, bad:port:x",
        );
        for (host, port) in [
            ("example.com", Some(443)),
            ("reg.example.com", Some(443)),
            ("corp.net", None),
            ("a.b.corp.net", Some(80)),
            ("x.lan", Some(80)),
            ("10.3.4.5", Some(5000)),
            ("192.168.1.7", Some(5000)),
            ("[::2]", Some(443)),
            ("fd00::1", Some(443)),
            ("REG.EXAMPLE.COM", Some(443)),
        ] {
            assert!(np.matches(host, port), "{host} {port:?} should bypass");
        }
        for (host, port) in [
            ("notexample.com", Some(443)),
            ("example.com.evil", Some(443)),
            ("11.0.0.1", Some(443)),
            ("192.168.1.7", Some(443)),
            ("::3", Some(443)),
        ] {
            assert!(!np.matches(host, port), "{host} {port:?} should be proxied");
        }
        assert!(NoProxy::parse("*").matches("anything", None));
        assert!(!NoProxy::parse("").matches("anything", None));
    }

    #[test]
    fn proxy_choice() {
        let rules = ProxyRules::new(&ProxyConfig::Url {
            url: "proxy.corp:3128".into(),
            no_proxy: Some("internal.corp".into()),
        })
        .unwrap();
        let u = |s: &str| Url::parse(s).unwrap();
        assert_eq!(
            rules.proxy_for(&u("https://registry.example.com/v2/")),
            Some(u("http://proxy.corp:3128"))
        );
        assert_eq!(
            rules.proxy_for(&u("http://10.1.2.3:5000/v2/")),
            Some(u("http://proxy.corp:3128"))
        );
        assert_eq!(rules.proxy_for(&u("https://r.internal.corp/v2/")), None);
        assert_eq!(rules.proxy_for(&u("http://127.0.0.1:5000/v2/")), None);
        assert_eq!(rules.proxy_for(&u("http://localhost:5000/v2/")), None);
        assert_eq!(rules.proxy_for(&u("http://[::1]:5000/v2/")), None);
        let direct = ProxyRules::new(&ProxyConfig::Direct).unwrap();
        assert!(!direct.any());
        let e = ProxyRules::new(&ProxyConfig::Url {
            url: "socks5://user:secret@p:1080".into(),
            no_proxy: None,
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("http://") && !e.contains("secret"), "{e}");
    }
}
