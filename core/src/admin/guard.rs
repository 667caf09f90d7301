//! Who may use what over the admin endpoint's TCP listener. Any local
//! process, and any web page a browser on this host opens, can reach a
//! loopback port; so over TCP only metrics and health are open, and the
//! rest of the API needs the `[admin] token_file` token as
//! `Authorization: Bearer …`. Requests a browser could have been made to
//! send (an `Origin` header, or a `Host` that is not a loopback name, as
//! after DNS rebinding) are refused whatever they carry. The unix socket
//! is guarded by its mode and peer credentials instead (`http.rs`), and
//! serves the whole API.

use std::net::IpAddr;

use hyper::header::{AUTHORIZATION, HOST, ORIGIN};
use hyper::Request;

use super::api::{Route, RouteError};
use super::token::AdminToken;

/// The TCP listener's rules, fixed at start.
#[derive(Debug, Clone)]
pub struct TcpPolicy {
    /// Unlocks the whole API; None: metrics and health only.
    token: Option<AdminToken>,
    /// `[admin] allow_remote`: a Host naming any IP address is accepted
    /// too (an address literal cannot be rebound, and remote clients know
    /// the server by its address).
    ip_hosts: bool,
}

/// Why a TCP request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// It carries `Origin`: a browser sent it on a web page's behalf.
    Origin,
    /// Its `Host` (or absolute URI) names no loopback host, or is missing.
    Host,
    /// A protected route without `Authorization: Bearer …`.
    MissingToken,
    /// A bearer token that is not the configured one.
    WrongToken,
    /// A protected route, and no `token_file` configured: no credential
    /// would help.
    NoToken,
}

impl Refusal {
    /// 401 when the right token would have been let in, 403 otherwise.
    pub fn status(self) -> u16 {
        match self {
            Refusal::MissingToken | Refusal::WrongToken => 401,
            Refusal::Origin | Refusal::Host | Refusal::NoToken => 403,
        }
    }

    /// The `reason` label of `sluice_admin_requests_refused_total`.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Origin => "origin",
            Refusal::Host => "host",
            Refusal::MissingToken => "missing_token",
            Refusal::WrongToken => "wrong_token",
            Refusal::NoToken => "no_token_configured",
        }
    }

    /// What the client is told.
    pub fn message(self) -> &'static str {
        match self {
            Refusal::Origin => "requests with an Origin header are refused",
            Refusal::Host => "the Host header must name a loopback address",
            Refusal::MissingToken | Refusal::WrongToken => {
                "this endpoint needs the admin token (Authorization: Bearer ...)"
            }
            Refusal::NoToken => {
                "over TCP only /metrics and /health are served (no admin.token_file); \
                 use the unix socket"
            }
        }
    }
}

impl TcpPolicy {
    pub fn new(token: Option<AdminToken>, allow_remote: bool) -> Self {
        TcpPolicy {
            token,
            ip_hosts: allow_remote,
        }
    }

    /// Whether a request for `route` (as routed; unknown paths count as
    /// protected, so that probing them tells an outsider nothing) may be
    /// answered.
    pub fn check<B>(
        &self,
        request: &Request<B>,
        route: &Result<Route, RouteError>,
    ) -> Result<(), Refusal> {
        let headers = request.headers();
        if headers.contains_key(ORIGIN) {
            return Err(Refusal::Origin);
        }
        let mut hosts = headers.get_all(HOST).iter();
        let host_ok = match (hosts.next(), hosts.next()) {
            (Some(host), None) => host
                .to_str()
                .is_ok_and(|host| allowed_host(host, self.ip_hosts)),
            // None, or two: which one a proxy would believe is unknowable.
            _ => false,
        };
        // An absolute-form target names the host the client meant, too.
        let authority_ok = request
            .uri()
            .authority()
            .is_none_or(|a| allowed_host(a.as_str(), self.ip_hosts));
        if !host_ok || !authority_ok {
            return Err(Refusal::Host);
        }
        if matches!(
            route,
            Ok(Route::Metrics | Route::Health | Route::Live | Route::Ready)
        ) {
            return Ok(());
        }
        let Some(token) = &self.token else {
            return Err(Refusal::NoToken);
        };
        let mut values = headers.get_all(AUTHORIZATION).iter();
        let presented = match (values.next(), values.next()) {
            (None, _) => return Err(Refusal::MissingToken),
            (Some(value), None) => bearer(value.as_bytes()),
            (Some(_), Some(_)) => None,
        };
        match presented {
            Some(presented) if token.matches(presented) => Ok(()),
            _ => Err(Refusal::WrongToken),
        }
    }
}

/// The credentials of `Bearer <token>` (scheme case-insensitive).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let scheme = value.get(..7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = value[7..].trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// Whether a Host value (`name`, `name:port`, `1.2.3.4:port`,
/// `[::1]:port`) names this host over loopback: `localhost`, 127.0.0.0/8
/// or ::1; with `ip_hosts`, any address literal.
fn allowed_host(value: &str, ip_hosts: bool) -> bool {
    let (host, port) = if let Some(rest) = value.strip_prefix('[') {
        let Some((inside, after)) = rest.split_once(']') else {
            return false;
        };
        let port = match after {
            "" => None,
            _ => match after.strip_prefix(':') {
                Some(port) => Some(port),
                None => return false,
            },
        };
        match inside.parse::<std::net::Ipv6Addr>() {
            Ok(_) => (inside, port),
            Err(_) => return false,
        }
    } else {
        match value.split_once(':') {
            Some((_, port)) if port.contains(':') => return false,
            Some((host, port)) => (host, Some(port)),
            None => (value, None),
        }
    };
    if let Some(port) = port {
        if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
    }
    if host.eq_ignore_ascii_case("localhost") || host.eq_ignore_ascii_case("localhost.") {
        return true;
    }
    match host.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback() || ip_hosts,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::api::{route, Method};

    const TOKEN: &str = "0123456789abcdef-secret";

    fn policy(token: bool) -> TcpPolicy {
        TcpPolicy::new(
            token.then(|| AdminToken::new(TOKEN.as_bytes()).unwrap()),
            false,
        )
    }

    fn check(
        policy: &TcpPolicy,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<(), Refusal> {
        let mut request = Request::builder().method(method).uri(path);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(()).unwrap();
        let routed = route(Method::parse(method), request.uri().path());
        policy.check(&request, &routed)
    }

    const LOCAL: (&str, &str) = ("host", "127.0.0.1:8025");

    #[test]
    fn metrics_and_health_are_open_the_rest_needs_the_token() {
        let bearer = format!("Bearer {TOKEN}");
        for token in [false, true] {
            let p = policy(token);
            for path in ["/metrics", "/health", "/health/live", "/health/ready"] {
                assert_eq!(check(&p, "GET", path, &[LOCAL]), Ok(()), "{path}");
            }
        }
        let p = policy(true);
        for (method, path) in [
            ("POST", "/reload"),
            ("GET", "/queue"),
            ("DELETE", "/queue/0123456789abcdef"),
            ("POST", "/queue/flush"),
            ("POST", "/metrics"),
            ("GET", "/nowhere"),
        ] {
            assert_eq!(
                check(&p, method, path, &[LOCAL]),
                Err(Refusal::MissingToken),
                "{path}"
            );
            let auth = ("authorization", bearer.as_str());
            assert_eq!(check(&p, method, path, &[LOCAL, auth]), Ok(()), "{path}");
            let lower = format!("bearer   {TOKEN} ");
            let auth = ("authorization", lower.as_str());
            assert_eq!(check(&p, method, path, &[LOCAL, auth]), Ok(()), "{path}");
            assert_eq!(
                check(
                    &policy(false),
                    method,
                    path,
                    &[LOCAL, ("authorization", bearer.as_str())]
                ),
                Err(Refusal::NoToken),
                "{path}"
            );
        }
        for wrong in [
            format!("Bearer {TOKEN}x"),
            format!("Basic {TOKEN}"),
            "Bearer".to_owned(),
            "Bearer ".to_owned(),
            TOKEN.to_owned(),
        ] {
            let auth = ("authorization", wrong.as_str());
            assert_eq!(
                check(&p, "POST", "/reload", &[LOCAL, auth]),
                Err(Refusal::WrongToken),
                "{wrong}"
            );
        }
        let auth = ("authorization", bearer.as_str());
        assert_eq!(
            check(&p, "POST", "/reload", &[LOCAL, auth, auth]),
            Err(Refusal::WrongToken)
        );
    }

    #[test]
    fn origin_and_foreign_hosts_are_refused_even_with_the_token() {
        let p = policy(true);
        let bearer = format!("Bearer {TOKEN}");
        let auth = ("authorization", bearer.as_str());
        let origin = ("origin", "http://127.0.0.1:8025");
        assert_eq!(
            check(&p, "POST", "/reload", &[LOCAL, auth, origin]),
            Err(Refusal::Origin)
        );
        assert_eq!(
            check(&p, "GET", "/metrics", &[LOCAL, origin]),
            Err(Refusal::Origin)
        );
        for host in [
            "evil.example",
            "evil.example:8025",
            "localhost.evil.example",
            "10.0.0.1:8025",
            "[2001:db8::1]:80",
            "127.0.0.1:",
            "127.0.0.1:x",
            "::1",
            "[::1",
            "[::1]x",
            "",
        ] {
            assert_eq!(
                check(&p, "GET", "/metrics", &[("host", host)]),
                Err(Refusal::Host),
                "{host:?}"
            );
            assert_eq!(
                check(&p, "POST", "/reload", &[("host", host), auth]),
                Err(Refusal::Host),
                "{host:?}"
            );
        }
        assert_eq!(check(&p, "GET", "/metrics", &[]), Err(Refusal::Host));
        assert_eq!(
            check(&p, "GET", "/metrics", &[LOCAL, ("host", "localhost")]),
            Err(Refusal::Host)
        );
        assert_eq!(
            check(&p, "GET", "http://evil.example/metrics", &[LOCAL]),
            Err(Refusal::Host)
        );
        for host in [
            "localhost",
            "LocalHost:8025",
            "localhost.",
            "127.0.0.1",
            "127.3.4.5:1",
            "[::1]",
            "[::1]:8025",
        ] {
            assert_eq!(
                check(&p, "POST", "/reload", &[("host", host), auth]),
                Ok(()),
                "{host}"
            );
        }
        // allow_remote: address literals, still no names.
        let remote = TcpPolicy::new(None, true);
        assert_eq!(
            check(&remote, "GET", "/metrics", &[("host", "192.0.2.7:8025")]),
            Ok(())
        );
        assert_eq!(
            check(
                &remote,
                "GET",
                "/metrics",
                &[("host", "[2001:db8::1]:8025")]
            ),
            Ok(())
        );
        assert_eq!(
            check(&remote, "GET", "/metrics", &[("host", "mx.example:8025")]),
            Err(Refusal::Host)
        );
    }

    #[test]
    fn statuses_and_reasons() {
        assert_eq!(Refusal::MissingToken.status(), 401);
        assert_eq!(Refusal::WrongToken.status(), 401);
        assert_eq!(Refusal::Origin.status(), 403);
        assert_eq!(Refusal::Host.status(), 403);
        assert_eq!(Refusal::NoToken.status(), 403);
        assert_eq!(Refusal::WrongToken.reason(), "wrong_token");
    }
}
