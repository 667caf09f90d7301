//! Milter packets: a 4-octet big-endian length (the command octet included),
//! the command octet, then its data. Strings in the data are NUL-terminated.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::MilterError;

/// Commands the MTA sends (`SMFIC_*`).
pub mod command {
    pub const ABORT: u8 = b'A';
    pub const BODY: u8 = b'B';
    pub const CONNECT: u8 = b'C';
    pub const MACRO: u8 = b'D';
    pub const BODYEOB: u8 = b'E';
    pub const HELO: u8 = b'H';
    pub const HEADER: u8 = b'L';
    pub const MAIL: u8 = b'M';
    pub const EOH: u8 = b'N';
    pub const OPTNEG: u8 = b'O';
    pub const QUIT: u8 = b'Q';
    pub const RCPT: u8 = b'R';
    pub const DATA: u8 = b'T';
}

/// The largest packet accepted from a milter: its biggest legitimate reply
/// is a replaced body chunk of at most 64 KiB plus a little framing, but
/// milters negotiating larger chunks exist; beyond this it is not a milter.
pub const MAX_PACKET: u32 = 1 << 20;

/// The largest body chunk sent (`MILTER_CHUNK_SIZE`).
pub const BODY_CHUNK: usize = 65535;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub command: u8,
    pub data: Vec<u8>,
}

impl Packet {
    pub fn new(command: u8, data: Vec<u8>) -> Packet {
        Packet { command, data }
    }

    /// The packet's bytes on the wire.
    pub fn encode(&self) -> Vec<u8> {
        let len = u32::try_from(self.data.len() + 1).unwrap_or(u32::MAX);
        let mut out = Vec::with_capacity(self.data.len() + 5);
        out.extend_from_slice(&len.to_be_bytes());
        out.push(self.command);
        out.extend_from_slice(&self.data);
        out
    }
}

/// Appends `text` and its terminating NUL (a NUL inside `text` would end
/// the string early, so it is dropped).
pub fn put_str(out: &mut Vec<u8>, text: &[u8]) {
    out.extend(text.iter().copied().filter(|&b| b != 0));
    out.push(0);
}

pub async fn write_packet<W: AsyncWrite + Unpin>(
    stream: &mut W,
    packet: &Packet,
) -> Result<(), MilterError> {
    stream
        .write_all(&packet.encode())
        .await
        .map_err(MilterError::Io)?;
    stream.flush().await.map_err(MilterError::Io)
}

pub async fn read_packet<R: AsyncRead + Unpin>(stream: &mut R) -> Result<Packet, MilterError> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await.map_err(MilterError::Io)?;
    let len = u32::from_be_bytes(len);
    if len == 0 || len > MAX_PACKET {
        return Err(MilterError::Protocol(format!("packet length {len}")));
    }
    let mut body = vec![0u8; len as usize];
    stream
        .read_exact(&mut body)
        .await
        .map_err(MilterError::Io)?;
    let command = body.remove(0);
    Ok(Packet {
        command,
        data: body,
    })
}

/// Reads a packet's data field by field.
pub struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    pub fn new(data: &'a [u8]) -> Fields<'a> {
        Fields { rest: data }
    }

    pub fn u32(&mut self) -> Result<u32, MilterError> {
        let (head, rest) = self
            .rest
            .split_first_chunk::<4>()
            .ok_or_else(|| MilterError::Protocol("packet too short for a number".into()))?;
        self.rest = rest;
        Ok(u32::from_be_bytes(*head))
    }

    /// The next NUL-terminated string (a missing final NUL ends it too).
    pub fn string(&mut self) -> Result<String, MilterError> {
        if self.rest.is_empty() {
            return Err(MilterError::Protocol(
                "packet too short for a string".into(),
            ));
        }
        let end = memchr::memchr(0, self.rest).unwrap_or(self.rest.len());
        let text = String::from_utf8_lossy(&self.rest[..end]).into_owned();
        self.rest = self.rest.get(end + 1..).unwrap_or(&[]);
        Ok(text)
    }

    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    pub fn rest(&self) -> &'a [u8] {
        self.rest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_packet_is_length_command_data() {
        let packet = Packet::new(command::HELO, b"mx.example\0".to_vec());
        assert_eq!(packet.encode(), b"\0\0\0\x0cHmx.example\0".to_vec());
        assert_eq!(Packet::new(command::EOH, vec![]).encode(), b"\0\0\0\x01N");
    }

    #[tokio::test]
    async fn packets_read_back_and_bad_lengths_are_refused() {
        let bytes = Packet::new(b'y', b"550 5.7.1 no\0".to_vec()).encode();
        let packet = read_packet(&mut &bytes[..]).await.unwrap();
        assert_eq!(packet.command, b'y');
        assert_eq!(packet.data, b"550 5.7.1 no\0");
        let zero: &[u8] = b"\0\0\0\0";
        assert!(matches!(
            read_packet(&mut &zero[..]).await,
            Err(MilterError::Protocol(_))
        ));
        let huge: &[u8] = b"\x7f\0\0\0c";
        assert!(matches!(
            read_packet(&mut &huge[..]).await,
            Err(MilterError::Protocol(_))
        ));
        let short: &[u8] = b"\0\0\0\x05c";
        assert!(matches!(
            read_packet(&mut &short[..]).await,
            Err(MilterError::Io(_))
        ));
    }

    #[test]
    fn fields_split_numbers_and_strings() {
        let mut fields = Fields::new(b"\0\0\0\x02X-A\0v\0tail");
        assert_eq!(fields.u32().unwrap(), 2);
        assert_eq!(fields.string().unwrap(), "X-A");
        assert_eq!(fields.string().unwrap(), "v");
        assert_eq!(fields.string().unwrap(), "tail");
        assert!(fields.is_empty());
        assert!(fields.string().is_err());
        assert!(Fields::new(b"\0\0").u32().is_err());
        let mut out = Vec::new();
        put_str(&mut out, b"a\0b");
        assert_eq!(out, b"ab\0");
    }
}
