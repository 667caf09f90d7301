//! The DSN parameters of MAIL and RCPT (RFC 3461 §4): RET, ENVID, NOTIFY
//! and ORCPT parsed from their wire form into the spool's types, xtext
//! (§4) decoded on the way in and encoded again when they are passed on
//! to a next hop. Errors are the detail of a 501 reply; `command` wraps
//! them.

use sluice_spool::{Notify, OriginalRecipient, Ret};

/// ENVID's longest decoded value (RFC 3461 §4.4: "MUST NOT exceed 100").
pub const MAX_ENVID: usize = 100;
/// ORCPT's longest value as sent (RFC 3461 §4.2: 500 characters).
pub const MAX_ORCPT: usize = 500;

/// `RET=FULL` or `RET=HDRS`, any case.
pub fn parse_ret(value: &str) -> Result<Ret, &'static str> {
    match value.to_ascii_uppercase().as_str() {
        "FULL" => Ok(Ret::Full),
        "HDRS" => Ok(Ret::Hdrs),
        _ => Err("RET must be FULL or HDRS"),
    }
}

/// `ENVID=xtext`: at most [`MAX_ENVID`] printable ASCII characters once
/// decoded.
pub fn parse_envid(value: &str) -> Result<String, &'static str> {
    let decoded = xtext_decode(value).ok_or("ENVID must be xtext")?;
    if decoded.is_empty() || decoded.len() > MAX_ENVID {
        return Err("ENVID must be 1 to 100 characters");
    }
    if !decoded.bytes().all(|b| (b' '..=b'~').contains(&b)) {
        return Err("ENVID must be printable ASCII");
    }
    Ok(decoded)
}

/// `NOTIFY=NEVER` or a comma list of SUCCESS, FAILURE, DELAY, each once.
pub fn parse_notify(value: &str) -> Result<Notify, &'static str> {
    const BAD: &str = "NOTIFY must be NEVER or SUCCESS,FAILURE,DELAY";
    let upper = value.to_ascii_uppercase();
    let mut notify = Notify::default();
    if upper == "NEVER" {
        return Ok(notify);
    }
    for word in upper.split(',') {
        let flag = match word {
            "SUCCESS" => &mut notify.success,
            "FAILURE" => &mut notify.failure,
            "DELAY" => &mut notify.delay,
            _ => return Err(BAD),
        };
        if std::mem::replace(flag, true) {
            return Err(BAD);
        }
    }
    Ok(notify)
}

/// `ORCPT=addr-type;xtext`: the address type is an atom, the address
/// xtext-decoded (UTF-8, no control characters).
pub fn parse_orcpt(value: &str) -> Result<OriginalRecipient, &'static str> {
    const BAD: &str = "ORCPT must be addr-type;address";
    if value.len() > MAX_ORCPT {
        return Err("ORCPT is longer than 500 characters");
    }
    let (addr_type, address) = value.split_once(';').ok_or(BAD)?;
    let atom = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b);
    if addr_type.is_empty() || !addr_type.bytes().all(atom) {
        return Err(BAD);
    }
    let address = xtext_decode(address).ok_or("ORCPT address must be xtext")?;
    if address.is_empty() || address.chars().any(char::is_control) {
        return Err(BAD);
    }
    Ok(OriginalRecipient {
        addr_type: addr_type.to_ascii_lowercase(),
        address,
    })
}

/// The RET value for a next hop.
pub fn ret_value(ret: Ret) -> &'static str {
    match ret {
        Ret::Full => "FULL",
        Ret::Hdrs => "HDRS",
    }
}

/// The NOTIFY value for a next hop.
pub fn notify_value(notify: &Notify) -> String {
    let words: Vec<&str> = [
        (notify.success, "SUCCESS"),
        (notify.failure, "FAILURE"),
        (notify.delay, "DELAY"),
    ]
    .into_iter()
    .filter_map(|(on, word)| on.then_some(word))
    .collect();
    if words.is_empty() {
        "NEVER".to_owned()
    } else {
        words.join(",")
    }
}

/// `xtext = *( xchar / hexchar )` (RFC 3461 §4): `+XX` (uppercase hex)
/// stands for an octet; `+` and `=` never stand for themselves. None when
/// malformed or when the octets are not UTF-8.
pub fn xtext_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while let Some(&b) = bytes.get(at) {
        match b {
            b'+' => {
                let hex = bytes.get(at + 1..at + 3)?;
                let upper_hex = |h: &u8| h.is_ascii_digit() || (b'A'..=b'F').contains(h);
                if !hex.iter().all(upper_hex) {
                    return None;
                }
                out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
                at += 3;
            }
            b'=' => return None,
            33..=126 => {
                out.push(b);
                at += 1;
            }
            _ => return None,
        }
    }
    String::from_utf8(out).ok()
}

/// The xtext form of `s`: octets outside `!`..`~`, and `+` and `=`, as
/// `+XX`.
pub fn xtext_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (33..=126).contains(&b) && b != b'+' && b != b'=' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xtext_round_trips_and_refuses_bad_escapes() {
        assert_eq!(xtext_decode("a+2Bb+3Dc").as_deref(), Some("a+b=c"));
        assert_eq!(xtext_decode("").as_deref(), Some(""));
        for bad in ["a+2b", "a+2", "a+", "a=b", "a b", "+C3"] {
            assert_eq!(xtext_decode(bad), None, "{bad}");
        }
        assert_eq!(xtext_decode("+C3+A9").as_deref(), Some("é"));
        for s in ["plain@example.org", "a+b=c d", "é\u{1}"] {
            let encoded = xtext_encode(s);
            assert!(encoded
                .bytes()
                .all(|b| (33..=126).contains(&b) && b != b'='));
            assert_eq!(xtext_decode(&encoded).as_deref(), Some(s));
        }
        assert_eq!(xtext_encode("a+b=c d"), "a+2Bb+3Dc+20d");
    }

    #[test]
    fn envid_is_decoded_and_bounded() {
        assert_eq!(parse_envid("QQ314159").as_deref(), Ok("QQ314159"));
        assert_eq!(parse_envid("a+20b").as_deref(), Ok("a b"));
        assert_eq!(parse_envid(&"x".repeat(100)).map(|s| s.len()), Ok(100));
        assert!(parse_envid(&"x".repeat(101)).is_err());
        // 101 octets once the escapes are counted as one each.
        assert!(parse_envid(&format!("{}+41", "x".repeat(100))).is_err());
        for bad in ["a+0Ab", "a=b", "+2", "+C3+A9"] {
            assert!(parse_envid(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ret_words_round_trip() {
        for ret in [Ret::Full, Ret::Hdrs] {
            assert_eq!(parse_ret(ret_value(ret)), Ok(ret));
        }
    }

    #[test]
    fn notify_words() {
        assert_eq!(parse_notify("never"), Ok(Notify::default()));
        let all = parse_notify("Delay,SUCCESS,failure").unwrap();
        assert!(all.success && all.failure && all.delay);
        assert_eq!(notify_value(&all), "SUCCESS,FAILURE,DELAY");
        assert_eq!(notify_value(&Notify::default()), "NEVER");
        for bad in ["NEVER,SUCCESS", "sometimes", "", "SUCCESS,", "DELAY,DELAY"] {
            assert!(parse_notify(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn orcpt_type_and_decoded_address() {
        let orcpt = parse_orcpt("RFC822;Bob+2Bnews@Example.org").unwrap();
        assert_eq!(orcpt.addr_type, "rfc822");
        assert_eq!(orcpt.address, "Bob+news@Example.org");
        for bad in [
            "a@b",
            ";a@b",
            "rfc822;",
            "rfc 822;a@b",
            "rfc822;a+0Db",
            "rfc822;a+zz",
        ] {
            assert!(parse_orcpt(bad).is_err(), "{bad}");
        }
        let long = format!("rfc822;{}@example.org", "a".repeat(490));
        assert!(parse_orcpt(&long).is_err());
    }
}
