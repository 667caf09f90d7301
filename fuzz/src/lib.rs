//! The properties the fuzz targets check, beyond "does not panic". Each
//! function takes the raw fuzz input and panics when sluice breaks a
//! promise on it; libFuzzer reports the panic as a crash and keeps the input.

use sluice::smtp::address::{parse_forward_path, parse_mailbox, parse_reverse_path, ReversePath};
use sluice::smtp::command::{parse_command_with, Command};
use sluice::smtp::data::{dot_stuff, DataLimits, DataProgress, DataReceiver};

/// Nothing that reaches a header or a log line may carry a line break or NUL.
fn assert_clean(what: &str, value: &str) {
    assert!(
        !value.contains(['\r', '\n', '\0']),
        "{what} carries CR, LF or NUL: {value:?}"
    );
}

/// The SMTP command parser: any line is answered (Ok or an error with a
/// reply), the values it accepts are free of CR/LF/NUL, and the paths it
/// accepts parse again to the same value from their canonical form.
pub fn command(input: &[u8]) {
    let Some((&flags, line)) = input.split_first() else {
        return;
    };
    let smtputf8 = flags & 1 == 1;
    let command = match parse_command_with(line, smtputf8) {
        Ok(command) => command,
        Err(e) => {
            let reply = e.reply();
            assert!((500..600).contains(&reply.code), "{reply:?}");
            return;
        }
    };
    match command {
        Command::Ehlo(name) | Command::Helo(name) => assert_clean("HELO name", &name),
        Command::Mail {
            reverse_path,
            params,
        } => {
            if let ReversePath::Mailbox(mailbox) = &reverse_path {
                assert_clean("reverse-path", &mailbox.to_string());
            }
            // MAIL allows UTF-8 by its own SMTPUTF8 parameter.
            let again = parse_reverse_path(&reverse_path.to_path_string(), params.smtputf8);
            assert_eq!(again.as_ref(), Ok(&reverse_path));
        }
        Command::Rcpt { forward_path, .. } => {
            let text = forward_path.to_path_string();
            assert_clean("forward-path", &text);
            assert_eq!(
                parse_forward_path(&text, smtputf8).as_ref(),
                Ok(&forward_path)
            );
        }
        Command::Vrfy(arg) | Command::Expn(arg) => assert_clean("VRFY/EXPN argument", &arg),
        Command::Help(Some(topic)) => assert_clean("HELP topic", &topic),
        Command::Auth { mechanism, initial } => {
            assert_clean("AUTH mechanism", &mechanism);
            if let Some(initial) = initial {
                assert_clean("AUTH initial response", &initial);
            }
        }
        _ => {}
    }
}

/// The DATA receiver: the result does not depend on how the input is split
/// into reads, only `<CRLF>.<CRLF>` ends the data, and a message it accepts
/// survives relaying: dot-stuffed and received again, it is unchanged.
pub fn data(input: &[u8]) {
    let Some((&split, input)) = input.split_first() else {
        return;
    };
    let limits = DataLimits {
        max_size: 4096,
        max_line: 1000,
    };
    let whole = receive(limits, &[input]);
    let chunk = usize::from(split % 17) + 1;
    let pieces: Vec<&[u8]> = input.chunks(chunk).collect();
    assert_eq!(
        receive(limits, &pieces),
        whole,
        "split into {chunk}-octet reads"
    );

    let Some((consumed, Ok(message))) = whole else {
        return;
    };
    let ends_with_terminator = consumed >= 3 && input[..consumed].ends_with(b"\r\n.\r\n")
        || consumed == 3 && input.starts_with(b".\r\n");
    assert!(
        ends_with_terminator,
        "data ended without <CRLF>.<CRLF>: {:?}",
        &input[..consumed]
    );

    let mut relayed = Vec::new();
    dot_stuff(&message, &mut relayed);
    let again = receive(limits, &[&relayed]);
    let Some((used, Ok(received))) = again else {
        panic!("relayed message not received again: {again:?}");
    };
    assert_eq!(used, relayed.len());
    // The relayed copy has its last line ended by CRLF; the rest is equal.
    let trimmed = received.strip_suffix(b"\r\n").unwrap_or(&received);
    let original = message.strip_suffix(b"\r\n").unwrap_or(&message);
    assert_eq!(trimmed, original);
}

type Received = Option<(usize, Result<Vec<u8>, sluice::smtp::data::DataError>)>;

/// Feeds the pieces in order; the octets consumed (counted over all
/// pieces) and the result once the end of data is seen.
fn receive(limits: DataLimits, pieces: &[&[u8]]) -> Received {
    let mut receiver = DataReceiver::new(limits);
    let mut offset = 0;
    for piece in pieces {
        match receiver.feed(piece) {
            DataProgress::NeedMore => offset += piece.len(),
            DataProgress::Done { consumed } => {
                assert!(consumed <= piece.len());
                return Some((offset + consumed, receiver.finish()));
            }
        }
    }
    None
}

/// The address parser: what it accepts, written out canonically, parses
/// again to the same mailbox and has no CR/LF/NUL.
pub fn address(input: &[u8]) {
    let Some((&flags, text)) = input.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let smtputf8 = flags & 1 == 1;
    if let Ok(mailbox) = parse_mailbox(text, smtputf8) {
        let canonical = mailbox.to_string();
        assert_clean("mailbox", &canonical);
        assert_eq!(parse_mailbox(&canonical, smtputf8).as_ref(), Ok(&mailbox));
    }
    if let Ok(path) = parse_reverse_path(text, smtputf8) {
        assert_eq!(
            parse_reverse_path(&path.to_path_string(), smtputf8).as_ref(),
            Ok(&path)
        );
    }
}

/// The config loader: any text gives a config or an error naming where it
/// went wrong; never a panic.
pub fn config(input: &[u8]) {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    if let Err(e) = sluice::config::load_str(text, "fuzz.toml") {
        assert!(!e.to_string().is_empty());
    }
}
