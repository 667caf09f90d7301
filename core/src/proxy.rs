//! The PROXY protocol (HAProxy's `proxy-protocol.txt`, versions 1 and 2):
//! the header a load balancer sends before relaying a connection, naming
//! the client it accepted. A listener with `proxy_protocol = true` reads it
//! from peers in `proxy_trusted_networks` before anything else, and the
//! session, its plugins, logs, Received header and limits see the client
//! it names. Exactly the header's bytes are read (the v1 line byte by
//! byte, the v2 header by its length), so what follows — SMTP, or a TLS
//! ClientHello — is left in the socket for the session.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt};

/// The v2 signature: it cannot start an SMTP command or a TLS record.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 line, CRLF included (the specification's 107).
const V1_MAX: usize = 107;

/// Who the header says the connection is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxiedPeer {
    /// A relayed client connection: its source address.
    Client(SocketAddr),
    /// The proxy speaking for itself (v2 `LOCAL`, e.g. a health check) or
    /// a family it cannot name (v1 `UNKNOWN`, v2 `AF_UNSPEC`/`AF_UNIX`):
    /// the connection's own endpoints stand.
    Local,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("reading the PROXY header: {0}")]
    Read(#[from] std::io::Error),
    #[error("no PROXY header (the connection starts with {0:?})")]
    Missing(String),
    #[error("malformed PROXY v1 header: {0}")]
    V1(&'static str),
    #[error("malformed PROXY v2 header: {0}")]
    V2(&'static str),
}

/// Reads one header (either version) from the start of a connection.
pub async fn read_header<R: AsyncRead + Unpin>(stream: &mut R) -> Result<ProxiedPeer, ProxyError> {
    // Six bytes tell the versions apart ("PROXY " against the signature)
    // and fit within the shortest v1 line, "PROXY UNKNOWN\r\n".
    let mut start = [0u8; 6];
    stream.read_exact(&mut start).await?;
    if &start == b"PROXY " {
        let mut line = start.to_vec();
        while !line.ends_with(b"\r\n") {
            if line.len() == V1_MAX {
                return Err(ProxyError::V1("longer than 107 bytes"));
            }
            line.push(stream.read_u8().await?);
        }
        parse_v1(&line)
    } else if start == V2_SIGNATURE[..6] {
        let mut header = [0u8; 16];
        header[..6].copy_from_slice(&start);
        stream.read_exact(&mut header[6..]).await?;
        let length = usize::from(u16::from_be_bytes([header[14], header[15]]));
        let mut body = vec![0u8; length];
        stream.read_exact(&mut body).await?;
        parse_v2(&header, &body)
    } else {
        Err(ProxyError::Missing(
            String::from_utf8_lossy(&start).into_owned(),
        ))
    }
}

/// `PROXY TCP4|TCP6 <source> <destination> <sport> <dport>\r\n`, or
/// `PROXY UNKNOWN ...\r\n`.
pub fn parse_v1(line: &[u8]) -> Result<ProxiedPeer, ProxyError> {
    let text = line
        .strip_suffix(b"\r\n")
        .and_then(|l| std::str::from_utf8(l).ok())
        .ok_or(ProxyError::V1("not an ASCII line ending in CRLF"))?;
    let mut fields = text.split(' ');
    if fields.next() != Some("PROXY") {
        return Err(ProxyError::V1("does not start with PROXY"));
    }
    let family = fields.next().ok_or(ProxyError::V1("no protocol"))?;
    let v6 = match family {
        // The rest of the line may be anything; the receiver ignores it.
        "UNKNOWN" => return Ok(ProxiedPeer::Local),
        "TCP4" => false,
        "TCP6" => true,
        _ => return Err(ProxyError::V1("protocol is not TCP4, TCP6 or UNKNOWN")),
    };
    let mut next = || fields.next().ok_or(ProxyError::V1("too few fields"));
    let (source, destination) = (next()?, next()?);
    let (source_port, destination_port) = (next()?, next()?);
    if fields.next().is_some() {
        return Err(ProxyError::V1("too many fields"));
    }
    let address = |text: &str| -> Result<IpAddr, ProxyError> {
        let ip = if v6 {
            text.parse::<Ipv6Addr>().map(IpAddr::V6)
        } else {
            text.parse::<Ipv4Addr>().map(IpAddr::V4)
        };
        ip.map_err(|_| ProxyError::V1("an address is not of the protocol's family"))
    };
    let port = |text: &str| -> Result<u16, ProxyError> {
        // Decimal without leading zeros, as the specification writes them.
        let canonical = !text.is_empty()
            && text.bytes().all(|b| b.is_ascii_digit())
            && (text == "0" || !text.starts_with('0'));
        text.parse()
            .ok()
            .filter(|_| canonical)
            .ok_or(ProxyError::V1("a port is not a decimal number 0-65535"))
    };
    let source = SocketAddr::new(address(source)?, port(source_port)?);
    address(destination)?;
    port(destination_port)?;
    Ok(ProxiedPeer::Client(source))
}

/// The 16-byte v2 header and the `length` bytes after it: addresses by
/// family, then TLVs (which sluice does not use and skips).
pub fn parse_v2(header: &[u8; 16], body: &[u8]) -> Result<ProxiedPeer, ProxyError> {
    if header[..12] != V2_SIGNATURE {
        return Err(ProxyError::V2("bad signature"));
    }
    let (version, command) = (header[12] >> 4, header[12] & 0x0f);
    if version != 2 {
        return Err(ProxyError::V2("version is not 2"));
    }
    let (family, transport) = (header[13] >> 4, header[13] & 0x0f);
    match command {
        0x0 => return Ok(ProxiedPeer::Local),
        0x1 => {}
        _ => return Err(ProxyError::V2("command is neither LOCAL nor PROXY")),
    }
    // AF_UNSPEC and AF_UNIX name no client address sluice could use.
    if family == 0x0 || family == 0x3 {
        return Ok(ProxiedPeer::Local);
    }
    if transport != 0x1 {
        return Err(ProxyError::V2("transport is not STREAM"));
    }
    let source = match family {
        0x1 => {
            let b: &[u8; 12] = body
                .get(..12)
                .and_then(|b| b.try_into().ok())
                .ok_or(ProxyError::V2("too short for IPv4 addresses"))?;
            let ip = Ipv4Addr::new(b[0], b[1], b[2], b[3]);
            SocketAddr::new(IpAddr::V4(ip), u16::from_be_bytes([b[8], b[9]]))
        }
        0x2 => {
            let b: &[u8; 36] = body
                .get(..36)
                .and_then(|b| b.try_into().ok())
                .ok_or(ProxyError::V2("too short for IPv6 addresses"))?;
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&b[..16]);
            let ip = Ipv6Addr::from(octets);
            SocketAddr::new(IpAddr::V6(ip), u16::from_be_bytes([b[32], b[33]]))
        }
        _ => return Err(ProxyError::V2("unknown address family")),
    };
    Ok(ProxiedPeer::Client(source))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(bytes: &[u8]) -> (Result<ProxiedPeer, ProxyError>, Vec<u8>) {
        let mut cursor = std::io::Cursor::new(bytes.to_vec());
        let result = read_header(&mut cursor).await;
        let mut rest = Vec::new();
        cursor.read_to_end(&mut rest).await.unwrap();
        (result, rest)
    }

    fn client(text: &str) -> ProxiedPeer {
        ProxiedPeer::Client(text.parse().unwrap())
    }

    #[tokio::test]
    async fn v1_names_the_client_and_leaves_what_follows() {
        let (peer, rest) = read(b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 25\r\nEHLO x\r\n").await;
        assert_eq!(peer.unwrap(), client("192.0.2.7:40000"));
        assert_eq!(rest, b"EHLO x\r\n");
        let (peer, _) = read(b"PROXY TCP6 2001:db8::7 2001:db8::1 65535 25\r\n").await;
        assert_eq!(peer.unwrap(), client("[2001:db8::7]:65535"));
        let (peer, rest) = read(b"PROXY UNKNOWN\r\nQUIT\r\n").await;
        assert_eq!(
            (peer.unwrap(), rest.as_slice()),
            (ProxiedPeer::Local, &b"QUIT\r\n"[..])
        );
        let (peer, _) = read(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n").await;
        assert_eq!(peer.unwrap(), ProxiedPeer::Local);
    }

    #[tokio::test]
    async fn v1_refuses_what_the_specification_does_not_allow() {
        for bad in [
            &b"PROXY TCP4 192.0.2.7 198.51.100.1 40000\r\n"[..],
            b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 25 x\r\n",
            b"PROXY TCP4 2001:db8::7 198.51.100.1 40000 25\r\n",
            b"PROXY TCP6 192.0.2.7 2001:db8::1 40000 25\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 65536 25\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 040 25\r\n",
            b"PROXY TCP4  192.0.2.7 198.51.100.1 40 25\r\n",
            b"PROXY UDP4 192.0.2.7 198.51.100.1 40 25\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 40 25\n",
        ] {
            let (peer, _) = read(bad).await;
            assert!(peer.is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let long = format!("PROXY UNKNOWN {}\r\n", "x".repeat(100));
        assert!(matches!(
            read(long.as_bytes()).await.0,
            Err(ProxyError::V1(_))
        ));
        assert!(matches!(
            read(b"EHLO client\r\n").await.0,
            Err(ProxyError::Missing(_))
        ));
        assert!(matches!(
            read(b"\x16\x03\x01\x02\x00\x01").await.0,
            Err(ProxyError::Missing(_))
        ));
        assert!(matches!(read(b"PRO").await.0, Err(ProxyError::Read(_))));
    }

    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(0x20 | command);
        out.push(family);
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    #[tokio::test]
    async fn v2_names_the_client_skips_tlvs_and_leaves_what_follows() {
        let mut body = vec![192, 0, 2, 7, 198, 51, 100, 1, 0x9c, 0x40, 0, 25];
        body.extend_from_slice(&[0x04, 0x00, 0x01, 0x00]); // a NOOP TLV
        let mut bytes = v2(1, 0x11, &body);
        bytes.extend_from_slice(b"\x16\x03\x01");
        let (peer, rest) = read(&bytes).await;
        assert_eq!(peer.unwrap(), client("192.0.2.7:40000"));
        assert_eq!(rest, b"\x16\x03\x01");

        let mut body = vec![0u8; 36];
        body[..16].copy_from_slice(&"2001:db8::7".parse::<Ipv6Addr>().unwrap().octets());
        body[32..34].copy_from_slice(&587u16.to_be_bytes());
        assert_eq!(
            read(&v2(1, 0x21, &body)).await.0.unwrap(),
            client("[2001:db8::7]:587")
        );
        // LOCAL (health checks) and AF_UNSPEC: the connection's own address.
        assert_eq!(read(&v2(0, 0x00, &[])).await.0.unwrap(), ProxiedPeer::Local);
        assert_eq!(read(&v2(1, 0x00, &[])).await.0.unwrap(), ProxiedPeer::Local);
    }

    #[tokio::test]
    async fn v2_refuses_bad_versions_commands_and_short_bodies() {
        let ok = [192, 0, 2, 7, 198, 51, 100, 1, 0, 1, 0, 25];
        let mut bad_version = v2(1, 0x11, &ok);
        bad_version[12] = 0x11;
        let mut bad_command = v2(1, 0x11, &ok);
        bad_command[12] = 0x22;
        let mut bad_signature = v2(1, 0x11, &ok);
        bad_signature[8] = b'X';
        for bytes in [
            bad_version,
            bad_command,
            bad_signature,
            v2(1, 0x11, &ok[..11]),
            v2(1, 0x21, &[0u8; 35]),
            v2(1, 0x12, &ok),
            v2(1, 0x41, &ok),
        ] {
            assert!(read(&bytes).await.0.is_err(), "{bytes:?}");
        }
        // A length beyond what arrives: a read error, not a hang.
        let mut truncated = v2(1, 0x11, &ok);
        truncated.truncate(20);
        assert!(matches!(read(&truncated).await.0, Err(ProxyError::Read(_))));
    }
}
