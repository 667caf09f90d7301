//! The `_mta-sts.<domain>` TXT record (RFC 8461 §3.1): that a domain has
//! a policy, and the `id` that changes whenever the policy does.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// 1–32 letters and digits.
    pub id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Several TXT records start with `v=STSv1`: §3.1 says to treat the
    /// domain as having no policy record.
    #[error("more than one v=STSv1 record")]
    Several,
    #[error("the v=STSv1 record has no valid id (1-32 letters and digits)")]
    Id,
}

impl Record {
    /// The record among a name's TXT strings (each already the
    /// concatenation of its character-strings): None when none starts with
    /// `v=STSv1`, which §3.1 says is how other TXT records are told apart.
    pub fn find<'a>(txt: impl IntoIterator<Item = &'a str>) -> Result<Option<Record>, RecordError> {
        let mut records = txt.into_iter().filter(|t| is_sts(t));
        let Some(first) = records.next() else {
            return Ok(None);
        };
        if records.next().is_some() {
            return Err(RecordError::Several);
        }
        Record::parse(first).map(Some)
    }

    /// `v=STSv1; id=...;` with optional whitespace around each field and
    /// extension fields ignored.
    pub fn parse(text: &str) -> Result<Record, RecordError> {
        let id = text
            .split(';')
            .map(|field| field.trim_matches([' ', '\t']))
            .filter_map(|field| field.split_once('='))
            .find(|(key, _)| *key == "id")
            .map(|(_, value)| value)
            .filter(|id| {
                (1..=32).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric())
            })
            .ok_or(RecordError::Id)?;
        Ok(Record { id: id.to_owned() })
    }
}

/// Whether a TXT string is an MTA-STS record: its first field is exactly
/// `v=STSv1`.
fn is_sts(text: &str) -> bool {
    text.split(';').next().map(|f| f.trim_matches([' ', '\t'])) == Some("v=STSv1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rfc_example_and_extensions() {
        assert_eq!(
            Record::parse("v=STSv1; id=20160831085700Z;").unwrap().id,
            "20160831085700Z"
        );
        let found = Record::find(["some other record", "v=STSv1;id=abc123; ext=1"]).unwrap();
        assert_eq!(found.unwrap().id, "abc123");
    }

    #[test]
    fn no_record_several_records_and_bad_ids() {
        assert_eq!(Record::find(["v=spf1 -all"]), Ok(None));
        assert_eq!(Record::find(["v=STSv10; id=1"]), Ok(None));
        assert_eq!(
            Record::find(["v=STSv1; id=1", "v=STSv1; id=2"]),
            Err(RecordError::Several)
        );
        for bad in [
            "v=STSv1;",
            "v=STSv1; id=",
            "v=STSv1; id=has-dash",
            &format!("v=STSv1; id={}", "a".repeat(33)),
        ] {
            assert_eq!(Record::parse(bad), Err(RecordError::Id), "{bad}");
        }
    }
}
