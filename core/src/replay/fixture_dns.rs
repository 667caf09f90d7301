//! `sluice pipeline test --dns-fixture FILE`: a small authoritative DNS
//! server on 127.0.0.1 (UDP and TCP on one ephemeral port) answering from a
//! TOML file, so a replay's DNS (plugins' lookups, SPF/DKIM/DMARC) is
//! reproducible and offline. The replay points its resolver at it.
//!
//! ```toml
//! ["example.org"]
//! TXT = ["v=spf1 ip4:192.0.2.0/24 -all"]
//! MX = ["10 mx.example.org"]
//! ["mx.example.org"]
//! A = ["192.0.2.1"]
//! AAAA = ["2001:db8::1"]
//! ["1.2.0.192.in-addr.arpa"]
//! PTR = ["mx.example.org"]
//! ```
//!
//! A listed name answers its records of the asked type, or an empty
//! NOERROR answer; any other name is NXDOMAIN. TXT values longer than 255
//! octets are split into several strings (DKIM keys).

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hickory_resolver::proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_resolver::proto::rr::rdata::{A, AAAA, CNAME, MX, PTR, TXT};
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

const TTL: u32 = 60;

#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    #[error("dns fixture {path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("dns fixture server: {0}")]
    Bind(std::io::Error),
}

/// Records by lower-case name without the final dot.
type Zone = HashMap<String, Vec<RData>>;

/// Reads the fixture file.
pub fn load(path: &Path) -> Result<Zone, FixtureError> {
    let invalid = |message: String| FixtureError::Invalid {
        path: path.to_owned(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| invalid(e.to_string()))?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| invalid(e.to_string()))?;
    let mut zone = Zone::new();
    for (name, types) in table {
        let types = types
            .as_table()
            .ok_or_else(|| invalid(format!("[{name:?}] must be a table of record types")))?;
        let mut records = Vec::new();
        for (rtype, values) in types {
            let values = values
                .as_array()
                .ok_or_else(|| invalid(format!("{name}.{rtype} must be a list of strings")))?;
            for value in values {
                let value = value
                    .as_str()
                    .ok_or_else(|| invalid(format!("{name}.{rtype} must be a list of strings")))?;
                let bad = |what: &str| invalid(format!("{name}.{rtype}: {value:?} is not {what}"));
                let rdata = match rtype.to_ascii_uppercase().as_str() {
                    "A" => RData::A(A(value
                        .parse::<Ipv4Addr>()
                        .map_err(|_| bad("an IPv4 address"))?)),
                    "AAAA" => RData::AAAA(AAAA(
                        value
                            .parse::<Ipv6Addr>()
                            .map_err(|_| bad("an IPv6 address"))?,
                    )),
                    "TXT" => RData::TXT(TXT::from_bytes(value.as_bytes().chunks(255).collect())),
                    "MX" => {
                        let (preference, exchange) = value
                            .split_once(' ')
                            .ok_or_else(|| bad("\"PREFERENCE HOST\""))?;
                        RData::MX(MX::new(
                            preference.parse().map_err(|_| bad("\"PREFERENCE HOST\""))?,
                            fqdn(exchange).ok_or_else(|| bad("a host name"))?,
                        ))
                    }
                    "PTR" => RData::PTR(PTR(fqdn(value).ok_or_else(|| bad("a host name"))?)),
                    "CNAME" => RData::CNAME(CNAME(fqdn(value).ok_or_else(|| bad("a host name"))?)),
                    other => {
                        return Err(invalid(format!(
                            "{name}: record type {other} is not one of A, AAAA, TXT, MX, PTR, CNAME"
                        )))
                    }
                };
                records.push(rdata);
            }
        }
        zone.insert(label(&name), records);
    }
    Ok(zone)
}

fn label(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn fqdn(name: &str) -> Option<Name> {
    let mut name = Name::from_utf8(name.trim_end_matches('.')).ok()?;
    name.set_fqdn(true);
    Some(name)
}

/// The answer to one query message; None for what cannot be parsed.
fn answer(zone: &Zone, query: &[u8]) -> Option<Vec<u8>> {
    let request = Message::from_vec(query).ok()?;
    let mut response = Message::new(request.metadata.id, MessageType::Response, OpCode::Query);
    response.metadata.authoritative = true;
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    let question = request.queries.first()?.clone();
    response.add_query(question.clone());
    let wanted = question.query_type();
    let mut name = question.name().clone();
    // Follow CNAMEs inside the fixture (bounded).
    for _ in 0..8 {
        let Some(records) = zone.get(&label(&name.to_utf8())) else {
            if response.answers.is_empty() {
                response.metadata.response_code = ResponseCode::NXDomain;
            }
            break;
        };
        let cname = records.iter().find_map(|r| match r {
            RData::CNAME(target) if wanted != RecordType::CNAME => Some(target.0.clone()),
            _ => None,
        });
        if let Some(target) = cname {
            response.add_answer(Record::from_rdata(
                name.clone(),
                TTL,
                RData::CNAME(CNAME(target.clone())),
            ));
            name = target;
            continue;
        }
        for rdata in records.iter().filter(|r| r.record_type() == wanted) {
            response.add_answer(Record::from_rdata(name.clone(), TTL, rdata.clone()));
        }
        break;
    }
    response.to_vec().ok()
}

/// A running fixture server; stops when dropped.
pub struct FixtureServer {
    pub address: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for FixtureServer {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Starts the server on 127.0.0.1, UDP and TCP on the same port.
pub async fn serve(zone: Zone) -> Result<FixtureServer, FixtureError> {
    let zone = Arc::new(zone);
    let mut last_error = None;
    // The UDP port may be taken on TCP by something else: a few tries.
    for _ in 0..16 {
        let udp = UdpSocket::bind("127.0.0.1:0")
            .await
            .map_err(FixtureError::Bind)?;
        let address = udp.local_addr().map_err(FixtureError::Bind)?;
        let tcp = match TcpListener::bind(address).await {
            Ok(tcp) => tcp,
            Err(e) => {
                last_error = Some(e);
                continue;
            }
        };
        let udp_zone = zone.clone();
        let udp_task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok((n, peer)) = udp.recv_from(&mut buf).await {
                if let Some(reply) = answer(&udp_zone, &buf[..n]) {
                    let _ = udp.send_to(&reply, peer).await;
                }
            }
        });
        let tcp_task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = tcp.accept().await {
                let zone = zone.clone();
                tokio::spawn(async move {
                    loop {
                        let Ok(len) = stream.read_u16().await else {
                            return;
                        };
                        let mut query = vec![0u8; usize::from(len)];
                        if stream.read_exact(&mut query).await.is_err() {
                            return;
                        }
                        let Some(reply) = answer(&zone, &query) else {
                            return;
                        };
                        let Ok(len) = u16::try_from(reply.len()) else {
                            return;
                        };
                        if stream.write_u16(len).await.is_err()
                            || stream.write_all(&reply).await.is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        return Ok(FixtureServer {
            address,
            tasks: vec![udp_task, tcp_task],
        });
    }
    Err(FixtureError::Bind(last_error.unwrap_or_else(|| {
        std::io::Error::other("no port free for both UDP and TCP")
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DnsConfig;
    use crate::dns::Dns;

    #[tokio::test]
    async fn answers_from_the_fixture() {
        let dir = std::env::temp_dir().join(format!("sluice-dns-fixture-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("zone.toml");
        let long = "k".repeat(600);
        std::fs::write(
            &file,
            format!(
                "[\"example.org\"]\nTXT = [\"v=spf1 -all\"]\nMX = [\"10 mx.example.org\"]\n[\"mx.example.org\"]\nA = [\"192.0.2.1\"]\n[\"long.example.org\"]\nTXT = [\"{long}\"]\n[\"www.example.org\"]\nCNAME = [\"mx.example.org\"]\n"
            ),
        )
        .unwrap();
        let server = serve(load(&file).unwrap()).await.unwrap();
        let dns = Dns::new(&DnsConfig {
            nameservers: vec![server.address],
            timeout: std::time::Duration::from_secs(2),
            attempts: 1,
            dnssec: Default::default(),
        })
        .unwrap();
        assert_eq!(dns.txt("example.org").await.unwrap(), ["v=spf1 -all"]);
        assert_eq!(dns.txt("long.example.org").await.unwrap(), [long]);
        let mx = dns.mx("example.org").await.unwrap();
        assert_eq!(mx[0].preference, 10);
        assert_eq!(
            dns.a("www.example.org").await.unwrap(),
            ["192.0.2.1".parse::<Ipv4Addr>().unwrap()]
        );
        assert!(dns.a("nowhere.example.org").await.is_err());
        std::fs::remove_dir_all(&dir).unwrap();

        let bad = load(Path::new("/nonexistent/zone.toml"));
        assert!(bad.is_err());
    }
}
