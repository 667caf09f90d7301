//! One milter connection, as an SMTP session uses it: opened and negotiated
//! once, then each SMTP step sent as its command (after its macros) and
//! answered, unless negotiation said the milter does not want the step
//! (`NO_*`) or will not answer it (`NR_*`). Every write and every wait for
//! an answer is bounded by the element's timeout; a milter that sends
//! progress gets the timeout again, a bounded number of times.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use super::macros::{MacroStage, MacroValues};
use super::negotiate::{self, step, Negotiated};
use super::reply::{self, Change, Response, Verdict};
use super::wire::{self, command, put_str, Packet};
use super::{MilterAddress, MilterError};

/// How many times progress may extend one step's deadline.
const MAX_PROGRESS: u32 = 100;

/// Changes accepted for one message: far more than any milter makes, and
/// a bound on what a broken one can make sluice hold.
const MAX_CHANGES: usize = 10_000;

trait Duplex: AsyncRead + AsyncWrite + Unpin + Send {
    /// Before waiting for an answer. libmilter writes an answer's packets
    /// one by one with Nagle on, so its second packet (the verdict after
    /// an end-of-message change) waits for the ACK of the first; an ACK
    /// delayed by the kernel would cost every message ~40 ms.
    fn ack_quickly(&self) {}
}

impl Duplex for tokio::net::TcpStream {
    fn ack_quickly(&self) {
        // Only a hint: without it answers come, just later.
        let _ = rustix::net::sockopt::set_tcp_quickack(self, true);
    }
}

impl Duplex for tokio::net::UnixStream {}

#[cfg(test)]
impl Duplex for tokio::io::DuplexStream {}

/// The answer to a body chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyAnswer {
    Verdict(Verdict),
    /// The milter has seen enough body (`SMFIR_SKIP`).
    Skip,
}

pub struct MilterClient {
    stream: Box<dyn Duplex>,
    negotiated: Negotiated,
    timeout: Duration,
    /// Commands answered since the last [`Self::take_round_trips`].
    round_trips: u64,
}

impl MilterClient {
    /// Connects and negotiates, each within `timeout`.
    pub async fn open(address: &MilterAddress, timeout: Duration) -> Result<Self, MilterError> {
        let stream: Box<dyn Duplex> = match address {
            MilterAddress::Inet { host, port } => {
                let connect = tokio::net::TcpStream::connect((host.as_str(), *port));
                let stream = bounded(timeout, async {
                    connect.await.map_err(MilterError::Connect)
                })
                .await?;
                // Packets are small and answered one by one.
                let _ = stream.set_nodelay(true);
                Box::new(stream)
            }
            MilterAddress::Unix(path) => {
                let connect = tokio::net::UnixStream::connect(path);
                Box::new(
                    bounded(timeout, async {
                        connect.await.map_err(MilterError::Connect)
                    })
                    .await?,
                )
            }
        };
        Self::negotiate(stream, timeout).await
    }

    async fn negotiate(stream: Box<dyn Duplex>, timeout: Duration) -> Result<Self, MilterError> {
        let mut client = MilterClient {
            stream,
            negotiated: Negotiated {
                version: negotiate::VERSION,
                actions: 0,
                steps: 0,
                macros: Default::default(),
            },
            timeout,
            round_trips: 1,
        };
        client.send(&negotiate::offer()).await?;
        let answer = client.receive().await?;
        client.negotiated = negotiate::accept_answer(&answer)?;
        Ok(client)
    }

    pub fn negotiated(&self) -> &Negotiated {
        &self.negotiated
    }

    /// How many commands waited for an answer since the last call.
    pub fn take_round_trips(&mut self) -> u64 {
        std::mem::take(&mut self.round_trips)
    }

    /// `SMFIC_CONNECT`: the client's name and address.
    pub async fn connect(
        &mut self,
        macros: &MacroValues,
        hostname: &str,
        peer: Option<SocketAddr>,
    ) -> Result<Verdict, MilterError> {
        let mut data = Vec::new();
        put_str(&mut data, hostname.as_bytes());
        match peer {
            Some(peer) => {
                data.push(if peer.is_ipv4() { b'4' } else { b'6' });
                data.extend_from_slice(&peer.port().to_be_bytes());
                put_str(&mut data, peer.ip().to_string().as_bytes());
            }
            None => data.push(b'U'),
        }
        let packet = Packet::new(command::CONNECT, data);
        self.step(
            MacroStage::Connect,
            macros,
            packet,
            step::NO_CONNECT,
            step::NR_CONNECT,
        )
        .await
    }

    pub async fn helo(&mut self, macros: &MacroValues, name: &str) -> Result<Verdict, MilterError> {
        let packet = Packet::new(command::HELO, string_data(&[name.as_bytes()]));
        self.step(
            MacroStage::Helo,
            macros,
            packet,
            step::NO_HELO,
            step::NR_HELO,
        )
        .await
    }

    /// `SMFIC_MAIL` with the reverse-path ("" for the null one).
    pub async fn mail(
        &mut self,
        macros: &MacroValues,
        sender: &str,
    ) -> Result<Verdict, MilterError> {
        let packet = Packet::new(
            command::MAIL,
            string_data(&[format!("<{sender}>").as_bytes()]),
        );
        self.step(
            MacroStage::Mail,
            macros,
            packet,
            step::NO_MAIL,
            step::NR_MAIL,
        )
        .await
    }

    pub async fn rcpt(&mut self, macros: &MacroValues, rcpt: &str) -> Result<Verdict, MilterError> {
        let packet = Packet::new(
            command::RCPT,
            string_data(&[format!("<{rcpt}>").as_bytes()]),
        );
        self.step(
            MacroStage::Rcpt,
            macros,
            packet,
            step::NO_RCPT,
            step::NR_RCPT,
        )
        .await
    }

    pub async fn data(&mut self, macros: &MacroValues) -> Result<Verdict, MilterError> {
        let packet = Packet::new(command::DATA, Vec::new());
        self.step(
            MacroStage::Data,
            macros,
            packet,
            step::NO_DATA,
            step::NR_DATA,
        )
        .await
    }

    /// One header field; `value` without the space after the colon, folded
    /// lines joined by LF (libmilter's form).
    pub async fn header(&mut self, name: &[u8], value: &[u8]) -> Result<Verdict, MilterError> {
        if self.negotiated.has(step::NO_HEADERS) {
            return Ok(Verdict::Continue);
        }
        self.send(&Packet::new(command::HEADER, string_data(&[name, value])))
            .await?;
        if self.negotiated.has(step::NR_HEADER) {
            return Ok(Verdict::Continue);
        }
        self.verdict().await
    }

    pub async fn end_of_headers(&mut self, macros: &MacroValues) -> Result<Verdict, MilterError> {
        let packet = Packet::new(command::EOH, Vec::new());
        self.step(MacroStage::Eoh, macros, packet, step::NO_EOH, step::NR_EOH)
            .await
    }

    /// Whether the milter wants the body at all.
    pub fn wants_body(&self) -> bool {
        !self.negotiated.has(step::NO_BODY)
    }

    /// One body chunk of at most [`wire::BODY_CHUNK`] octets, CRLF lines.
    pub async fn body(&mut self, chunk: &[u8]) -> Result<BodyAnswer, MilterError> {
        debug_assert!(chunk.len() <= wire::BODY_CHUNK);
        self.send(&Packet::new(command::BODY, chunk.to_vec()))
            .await?;
        if self.negotiated.has(step::NR_BODY) {
            return Ok(BodyAnswer::Verdict(Verdict::Continue));
        }
        match self.response().await? {
            Response::Verdict(verdict) => Ok(BodyAnswer::Verdict(verdict)),
            Response::Skip => Ok(BodyAnswer::Skip),
            other => Err(unexpected(&other, "a body chunk")),
        }
    }

    /// `SMFIC_BODYEOB`: the milter's changes, then its verdict.
    pub async fn end_of_message(
        &mut self,
        macros: &MacroValues,
    ) -> Result<(Verdict, Vec<Change>), MilterError> {
        if let Some(packet) = macros.packet(MacroStage::Eom, &self.negotiated.macros) {
            self.send(&packet).await?;
        }
        self.send(&Packet::new(command::BODYEOB, Vec::new()))
            .await?;
        let mut changes = Vec::new();
        loop {
            match self.response().await? {
                Response::Verdict(verdict) => return Ok((verdict, changes)),
                Response::Change(_) if changes.len() >= MAX_CHANGES => {
                    return Err(MilterError::Protocol(format!(
                        "more than {MAX_CHANGES} changes to one message"
                    )))
                }
                Response::Change(change) => changes.push(change),
                other => return Err(unexpected(&other, "end of message")),
            }
        }
    }

    /// `SMFIC_ABORT`: the transaction is over without end of message (RSET,
    /// a refused transaction); the connection stays for the next one.
    pub async fn abort(&mut self) -> Result<(), MilterError> {
        self.send(&Packet::new(command::ABORT, Vec::new())).await
    }

    /// `SMFIC_QUIT`: the session is over.
    pub async fn quit(mut self) -> Result<(), MilterError> {
        self.send(&Packet::new(command::QUIT, Vec::new())).await
    }

    /// A step with its macros, unless the milter asked not to see it; its
    /// answer, unless the milter said it would not give one.
    async fn step(
        &mut self,
        stage: MacroStage,
        macros: &MacroValues,
        packet: Packet,
        not_wanted: u32,
        no_reply: u32,
    ) -> Result<Verdict, MilterError> {
        if self.negotiated.has(not_wanted) {
            return Ok(Verdict::Continue);
        }
        if let Some(macro_packet) = macros.packet(stage, &self.negotiated.macros) {
            self.send(&macro_packet).await?;
        }
        self.send(&packet).await?;
        if self.negotiated.has(no_reply) {
            return Ok(Verdict::Continue);
        }
        self.verdict().await
    }

    async fn verdict(&mut self) -> Result<Verdict, MilterError> {
        match self.response().await? {
            Response::Verdict(verdict) => Ok(verdict),
            other => Err(unexpected(&other, "this step")),
        }
    }

    /// The next answer that is not progress.
    async fn response(&mut self) -> Result<Response, MilterError> {
        self.round_trips += 1;
        for _ in 0..=MAX_PROGRESS {
            let packet = self.receive().await?;
            match reply::decode(&packet)? {
                Response::Progress => continue,
                response => return Ok(response),
            }
        }
        Err(MilterError::Timeout(self.timeout))
    }

    async fn send(&mut self, packet: &Packet) -> Result<(), MilterError> {
        let timeout = self.timeout;
        bounded(timeout, wire::write_packet(&mut self.stream, packet)).await
    }

    async fn receive(&mut self) -> Result<Packet, MilterError> {
        self.stream.ack_quickly();
        let timeout = self.timeout;
        bounded(timeout, wire::read_packet(&mut self.stream)).await
    }
}

fn string_data(strings: &[&[u8]]) -> Vec<u8> {
    let mut data = Vec::new();
    for s in strings {
        put_str(&mut data, s);
    }
    data
}

fn unexpected(response: &Response, at: &str) -> MilterError {
    MilterError::Protocol(format!("{response:?} is not an answer to {at}"))
}

async fn bounded<T>(
    timeout: Duration,
    work: impl std::future::Future<Output = Result<T, MilterError>>,
) -> Result<T, MilterError> {
    match tokio::time::timeout(timeout, work).await {
        Ok(result) => result,
        Err(_) => Err(MilterError::Timeout(timeout)),
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    use super::*;
    use crate::milter::negotiate::action;
    use crate::milter::reply::ReplyText;

    const TIMEOUT: Duration = Duration::from_secs(5);

    /// The milter end of a connection: reads what the client sent and
    /// answers with packets given as bytes.
    struct Peer(DuplexStream);

    impl Peer {
        async fn expect(&mut self, bytes: &[u8]) {
            let mut got = vec![0u8; bytes.len()];
            self.0.read_exact(&mut got).await.unwrap();
            assert_eq!(got, bytes, "{:?}", String::from_utf8_lossy(&got));
        }

        async fn answer(&mut self, command: u8, data: &[u8]) {
            let bytes = Packet::new(command, data.to_vec()).encode();
            self.0.write_all(&bytes).await.unwrap();
        }
    }

    async fn pair(actions: u32, steps: u32, tail: &[u8]) -> (MilterClient, Peer) {
        let (ours, theirs) = tokio::io::duplex(1 << 20);
        let mut peer = Peer(theirs);
        let mut answer = Vec::new();
        for n in [6, actions, steps] {
            answer.extend_from_slice(&u32::to_be_bytes(n));
        }
        answer.extend_from_slice(tail);
        let client = MilterClient::negotiate(Box::new(ours), TIMEOUT);
        let script = async {
            peer.expect(&negotiate::offer().encode()).await;
            peer.answer(b'O', &answer).await;
        };
        let (client, ()) = tokio::join!(client, script);
        (client.unwrap(), peer)
    }

    fn macros() -> MacroValues {
        let mut m = MacroValues::default();
        m.set("j", "mx.example");
        m.set("i", "Q1");
        m
    }

    #[tokio::test]
    async fn connect_sends_macros_then_the_address_and_takes_the_verdict() {
        let (mut client, mut peer) = pair(0, 0, b"").await;
        let peer_addr: SocketAddr = "192.0.2.7:4567".parse().unwrap();
        let values = macros();
        let call = client.connect(&values, "client.example", Some(peer_addr));
        let script = async {
            peer.expect(&Packet::new(b'D', b"Cj\0mx.example\0".to_vec()).encode())
                .await;
            let mut data = b"client.example\x004".to_vec();
            data.extend_from_slice(&4567u16.to_be_bytes());
            data.extend_from_slice(b"192.0.2.7\0");
            peer.expect(&Packet::new(b'C', data).encode()).await;
            peer.answer(b'p', b"").await;
            peer.answer(b'c', b"").await;
        };
        let (verdict, ()) = tokio::join!(call, script);
        assert_eq!(verdict.unwrap(), Verdict::Continue);
        // Negotiation and connect; progress is not one more.
        assert_eq!(client.take_round_trips(), 2);
        assert_eq!(client.take_round_trips(), 0);
    }

    #[tokio::test]
    async fn unwanted_steps_are_not_sent_and_unanswered_ones_not_awaited() {
        let (mut client, mut peer) = pair(0, step::NO_HELO | step::NR_MAIL, b"").await;
        assert_eq!(
            client.helo(&macros(), "h").await.unwrap(),
            Verdict::Continue
        );
        assert_eq!(
            client.mail(&macros(), "s@example.org").await.unwrap(),
            Verdict::Continue
        );
        // The MAIL went out (its default macro `i` first); HELO did not.
        peer.expect(&Packet::new(b'D', b"Mi\0Q1\0".to_vec()).encode())
            .await;
        peer.expect(&Packet::new(b'M', b"<s@example.org>\0".to_vec()).encode())
            .await;
        let none = MacroValues::default();
        let call = client.rcpt(&none, "r@example.org");
        let script = async {
            peer.expect(&Packet::new(b'R', b"<r@example.org>\0".to_vec()).encode())
                .await;
            peer.answer(b'y', b"550 5.1.1 no such user\0").await;
        };
        let (verdict, ()) = tokio::join!(call, script);
        assert_eq!(
            verdict.unwrap(),
            Verdict::Reject(Some(ReplyText {
                code: 550,
                enhanced: Some("5.1.1".into()),
                text: "no such user".into()
            }))
        );
    }

    #[tokio::test]
    async fn the_message_goes_as_headers_body_and_end_with_changes() {
        let (mut client, mut peer) = pair(
            action::ADD_HEADERS | action::QUARANTINE,
            step::NR_HEADER | step::SKIP,
            b"",
        )
        .await;
        client.header(b"Subject", b"hi\n\tthere").await.unwrap();
        peer.expect(&Packet::new(b'L', b"Subject\0hi\n\tthere\0".to_vec()).encode())
            .await;
        let values = macros();
        let call = async {
            let none = MacroValues::default();
            let eoh = client.end_of_headers(&none).await.unwrap();
            let body = client.body(b"line\r\n").await.unwrap();
            let end = client.end_of_message(&values).await.unwrap();
            (eoh, body, end)
        };
        let script = async {
            peer.expect(&Packet::new(b'N', vec![]).encode()).await;
            peer.answer(b'c', b"").await;
            peer.expect(&Packet::new(b'B', b"line\r\n".to_vec()).encode())
                .await;
            peer.answer(b's', b"").await;
            peer.expect(&Packet::new(b'D', b"Ei\0Q1\0".to_vec()).encode())
                .await;
            peer.expect(&Packet::new(b'E', vec![]).encode()).await;
            peer.answer(b'h', b"X-Scanned\0yes\0").await;
            peer.answer(b'q', b"held\0").await;
            peer.answer(b'a', b"").await;
        };
        let ((eoh, body, end), ()) = tokio::join!(call, script);
        assert_eq!(eoh, Verdict::Continue);
        assert_eq!(body, BodyAnswer::Skip);
        assert_eq!(
            end,
            (
                Verdict::Accept,
                vec![
                    Change::AddHeader {
                        name: "X-Scanned".into(),
                        value: "yes".into()
                    },
                    Change::Quarantine("held".into())
                ]
            )
        );
        client.abort().await.unwrap();
        peer.expect(b"\0\0\0\x01A").await;
        client.quit().await.unwrap();
        peer.expect(b"\0\0\0\x01Q").await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_milter_costs_the_timeout_and_a_change_outside_eom_is_an_error() {
        let (mut client, mut peer) = pair(0, 0, b"").await;
        let err = client.helo(&MacroValues::default(), "h").await.unwrap_err();
        assert!(matches!(err, MilterError::Timeout(_)), "{err}");
        let none = MacroValues::default();
        let call = client.helo(&none, "h");
        let script = async {
            peer.answer(b'h', b"X\0y\0").await;
        };
        let (verdict, ()) = tokio::join!(call, script);
        assert!(matches!(verdict, Err(MilterError::Protocol(_))));
    }

    #[tokio::test]
    async fn a_closed_milter_is_an_io_error() {
        let (mut client, peer) = pair(0, 0, b"").await;
        drop(peer);
        let err = client.helo(&MacroValues::default(), "h").await.unwrap_err();
        assert!(matches!(err, MilterError::Io(_)), "{err}");
    }
}
