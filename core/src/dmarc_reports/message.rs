//! The report as mail (RFC 7489 §7.2.1.1): the XML document gzipped and
//! attached as `receiver!policy-domain!begin!end.xml.gz` to a message with
//! the Subject `Report Domain: ... Submitter: ... Report-ID: <...>`.

use std::io::Write as _;

use base64::Engine as _;
use flate2::write::GzEncoder;
use flate2::Compression;

use crate::smtp::received::rfc5322_date;

/// What the message says about the report.
pub struct Envelope<'a> {
    /// The report's From (`[dmarc_reports] email`).
    pub from: &'a str,
    pub to: &'a str,
    /// The reporting domain (the From address's domain).
    pub submitter: &'a str,
    pub policy_domain: &'a str,
    pub report_id: &'a str,
    pub begin: u64,
    pub end: u64,
    pub now: u64,
    /// `server.hostname`, for the Message-ID.
    pub hostname: &'a str,
}

pub fn gzipped(xml: &str) -> std::io::Result<Vec<u8>> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(xml.as_bytes())?;
    encoder.finish()
}

/// `receiver "!" policy-domain "!" begin "!" end ".xml.gz"`.
pub fn filename(envelope: &Envelope<'_>) -> String {
    format!(
        "{}!{}!{}!{}.xml.gz",
        envelope.submitter, envelope.policy_domain, envelope.begin, envelope.end
    )
}

/// The whole message, CRLF line ends.
pub fn compose(envelope: &Envelope<'_>, gzipped: &[u8]) -> Vec<u8> {
    let filename = filename(envelope);
    let boundary = format!("report.{}.{}", envelope.now, envelope.report_id);
    let date = rfc5322_date(i64::try_from(envelope.now).unwrap_or(i64::MAX));
    let mut out = format!(
        "From: <{from}>\r\n\
         To: <{to}>\r\n\
         Subject: Report Domain: {domain} Submitter: {submitter} Report-ID: <{id}>\r\n\
         Date: {date}\r\n\
         Message-ID: <{id}.{now}@{hostname}>\r\n\
         Auto-Submitted: auto-generated\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"{boundary}\"\r\n\
         \r\n\
         --{boundary}\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\
         \r\n\
         This is a DMARC aggregate report (RFC 7489) for {domain}\r\n\
         covering {begin} to {end} (Unix time), from {submitter}.\r\n\
         \r\n\
         --{boundary}\r\n\
         Content-Type: application/gzip; name=\"{filename}\"\r\n\
         Content-Transfer-Encoding: base64\r\n\
         Content-Disposition: attachment; filename=\"{filename}\"\r\n\
         \r\n",
        from = envelope.from,
        to = envelope.to,
        domain = envelope.policy_domain,
        submitter = envelope.submitter,
        id = envelope.report_id,
        now = envelope.now,
        hostname = envelope.hostname,
        begin = envelope.begin,
        end = envelope.end,
    );
    let encoded = base64::engine::general_purpose::STANDARD.encode(gzipped);
    // RFC 2045 §6.8: lines of at most 76 characters.
    for line in encoded.as_bytes().chunks(76) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push_str("\r\n");
    }
    out.push_str(&format!("\r\n--{boundary}--\r\n"));
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    #[test]
    fn the_attachment_is_the_gzipped_document_in_base64_lines() {
        let envelope = Envelope {
            from: "dmarc@example.test",
            to: "agg@example.org",
            submitter: "example.test",
            policy_domain: "example.org",
            report_id: "mx.example.test.example.org.100",
            begin: 100,
            end: 200,
            now: 300,
            hostname: "mx.example.test",
        };
        let xml = "<feedback/>".repeat(200);
        let message = String::from_utf8(compose(&envelope, &gzipped(&xml).unwrap())).unwrap();
        assert!(message.contains(
            "Subject: Report Domain: example.org Submitter: example.test Report-ID: <mx.example.test.example.org.100>\r\n"
        ));
        assert!(message.contains("filename=\"example.test!example.org!100!200.xml.gz\""));
        let body = message
            .split("base64\r\nContent-Disposition")
            .nth(1)
            .unwrap();
        let encoded: String = body
            .split("\r\n\r\n")
            .nth(1)
            .unwrap()
            .lines()
            .inspect(|line| assert!(line.len() <= 76))
            .collect();
        let gz = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap();
        let mut text = String::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, xml);
    }
}
