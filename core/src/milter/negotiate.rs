//! Option negotiation (`SMFIC_OPTNEG`): the MTA offers a protocol version,
//! the actions it can apply and the protocol steps it can leave out or not
//! wait a reply for; the milter answers with the subset it wants, and
//! possibly the macros it wants at each stage (`SMFIF_SETSYMLIST`).

use super::macros::{MacroStage, RequestedMacros};
use super::wire::{command, Fields, Packet};
use super::MilterError;

/// The protocol version spoken (libmilter 8.14 and later, Postfix 2.6+).
pub const VERSION: u32 = 6;

/// Actions a milter may take at end of message (`SMFIF_*`).
pub mod action {
    pub const ADD_HEADERS: u32 = 0x01;
    pub const CHANGE_BODY: u32 = 0x02;
    pub const ADD_RCPT: u32 = 0x04;
    pub const DELETE_RCPT: u32 = 0x08;
    pub const CHANGE_HEADERS: u32 = 0x10;
    pub const QUARANTINE: u32 = 0x20;
    pub const CHANGE_FROM: u32 = 0x40;
    pub const ADD_RCPT_PAR: u32 = 0x80;
    pub const SET_SYMLIST: u32 = 0x100;
}

/// Protocol steps (`SMFIP_*`): `NO_*` the milter does not want the step
/// sent, `NR_*` it will not reply to it.
pub mod step {
    pub const NO_CONNECT: u32 = 0x1;
    pub const NO_HELO: u32 = 0x2;
    pub const NO_MAIL: u32 = 0x4;
    pub const NO_RCPT: u32 = 0x8;
    pub const NO_BODY: u32 = 0x10;
    pub const NO_HEADERS: u32 = 0x20;
    pub const NO_EOH: u32 = 0x40;
    pub const NR_HEADER: u32 = 0x80;
    pub const NO_UNKNOWN: u32 = 0x100;
    pub const NO_DATA: u32 = 0x200;
    /// The MTA understands `SMFIR_SKIP` (stop sending body chunks).
    pub const SKIP: u32 = 0x400;
    pub const NR_CONNECT: u32 = 0x1000;
    pub const NR_HELO: u32 = 0x2000;
    pub const NR_MAIL: u32 = 0x4000;
    pub const NR_RCPT: u32 = 0x8000;
    pub const NR_DATA: u32 = 0x10000;
    pub const NR_UNKNOWN: u32 = 0x20000;
    pub const NR_EOH: u32 = 0x40000;
    pub const NR_BODY: u32 = 0x80000;
}

/// What sluice offers: every action (a milter that declares it may replace
/// the body must see it offered to start at all; a replacement it then
/// sends is refused as a fault), and every step a milter may leave out or
/// leave unanswered. Rejected recipients are never shown
/// (`SMFIP_RCPT_REJ`), and header values lose their leading space (no
/// `SMFIP_HDR_LEADSPC`).
pub const OFFERED_ACTIONS: u32 = action::ADD_HEADERS
    | action::CHANGE_BODY
    | action::ADD_RCPT
    | action::DELETE_RCPT
    | action::CHANGE_HEADERS
    | action::QUARANTINE
    | action::CHANGE_FROM
    | action::ADD_RCPT_PAR
    | action::SET_SYMLIST;

pub const OFFERED_STEPS: u32 = step::NO_CONNECT
    | step::NO_HELO
    | step::NO_MAIL
    | step::NO_RCPT
    | step::NO_BODY
    | step::NO_HEADERS
    | step::NO_EOH
    | step::NR_HEADER
    | step::NO_UNKNOWN
    | step::NO_DATA
    | step::SKIP
    | step::NR_CONNECT
    | step::NR_HELO
    | step::NR_MAIL
    | step::NR_RCPT
    | step::NR_DATA
    | step::NR_UNKNOWN
    | step::NR_EOH
    | step::NR_BODY;

/// The negotiated options of one milter connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub version: u32,
    pub actions: u32,
    pub steps: u32,
    pub macros: RequestedMacros,
}

impl Negotiated {
    pub fn allows(&self, action: u32) -> bool {
        self.actions & action != 0
    }

    pub fn has(&self, step: u32) -> bool {
        self.steps & step != 0
    }
}

/// The MTA's `SMFIC_OPTNEG`.
pub fn offer() -> Packet {
    let mut data = Vec::with_capacity(12);
    data.extend_from_slice(&VERSION.to_be_bytes());
    data.extend_from_slice(&OFFERED_ACTIONS.to_be_bytes());
    data.extend_from_slice(&OFFERED_STEPS.to_be_bytes());
    Packet::new(command::OPTNEG, data)
}

/// The milter's answer: what it asks for, kept within what was offered
/// (what it asks beyond is not done, as Postfix does).
pub fn accept_answer(packet: &Packet) -> Result<Negotiated, MilterError> {
    if packet.command != command::OPTNEG {
        return Err(MilterError::Protocol(format!(
            "answered option negotiation with {:?}",
            char::from(packet.command)
        )));
    }
    let mut fields = Fields::new(&packet.data);
    let version = fields.u32()?;
    let actions = fields.u32()?;
    let steps = fields.u32()?;
    if !(2..=VERSION).contains(&version) {
        return Err(MilterError::Protocol(format!(
            "milter protocol version {version} (sluice speaks 2 to {VERSION})"
        )));
    }
    let (actions, steps) = (actions & OFFERED_ACTIONS, steps & OFFERED_STEPS);
    let mut macros = RequestedMacros::default();
    while !fields.is_empty() {
        let stage = fields.u32()?;
        let list = fields.string()?;
        if let Some(stage) = MacroStage::from_code(stage) {
            macros.set(stage, &list);
        }
    }
    Ok(Negotiated {
        version,
        actions,
        steps,
        macros,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_offer_is_version_six_with_its_actions_and_steps() {
        let bytes = offer().encode();
        assert_eq!(&bytes[..5], b"\0\0\0\x0dO");
        assert_eq!(&bytes[5..9], &6u32.to_be_bytes());
        assert_eq!(&bytes[9..13], &0x1ffu32.to_be_bytes());
        assert_eq!(&bytes[13..17], &0xff7ffu32.to_be_bytes());
    }

    fn answer(version: u32, actions: u32, steps: u32, tail: &[u8]) -> Packet {
        let mut data = Vec::new();
        for n in [version, actions, steps] {
            data.extend_from_slice(&n.to_be_bytes());
        }
        data.extend_from_slice(tail);
        Packet::new(b'O', data)
    }

    #[test]
    fn the_answer_sets_steps_actions_and_macro_lists() {
        let tail = b"\0\0\0\x01{tls_version} {cipher}\0\0\0\0\x05i\0";
        let got = accept_answer(&answer(
            6,
            action::ADD_HEADERS | action::QUARANTINE,
            step::NO_HELO | step::NR_RCPT | step::SKIP,
            tail,
        ))
        .unwrap();
        assert!(got.allows(action::QUARANTINE));
        assert!(!got.allows(action::ADD_RCPT));
        assert!(got.has(step::NO_HELO) && got.has(step::NR_RCPT));
        assert!(!got.has(step::NO_BODY));
        assert_eq!(
            got.macros.get(MacroStage::Helo),
            Some(&["tls_version".to_owned(), "cipher".to_owned()][..])
        );
        assert_eq!(got.macros.get(MacroStage::Eom), Some(&["i".to_owned()][..]));
        assert_eq!(got.macros.get(MacroStage::Connect), None);
    }

    #[test]
    fn what_was_not_offered_is_dropped_from_the_answer() {
        // SMFIP_RCPT_REJ and SMFIP_HDR_LEADSPC are not offered.
        let got = accept_answer(&answer(6, 0x3ff, 0x100800 | step::NO_EOH, b"")).unwrap();
        assert_eq!(got.actions, OFFERED_ACTIONS);
        assert_eq!(got.steps, step::NO_EOH);
    }

    #[test]
    fn malformed_answers_are_refused() {
        for bad in [
            answer(7, 0, 0, b""),
            answer(1, 0, 0, b""),
            Packet::new(b'O', vec![0, 0, 0, 6]),
            Packet::new(b'c', vec![]),
        ] {
            assert!(accept_answer(&bad).is_err(), "{bad:?}");
        }
    }
}
