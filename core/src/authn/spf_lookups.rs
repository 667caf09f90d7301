//! What mail-auth 0.13.3's SPF evaluation lets its caller see of its DNS
//! lookups, through its per-lookup cache hooks (nothing is cached here:
//! the resolver caches): a count of the void lookups, which it does not
//! limit (RFC 7208 §4.6.4), and the client's PTR names, handed to it
//! without the final dot its `ptr` comparison cannot take (§5.5).

use std::borrow::Borrow;
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use mail_auth::{DnssecStatus, RecordSet, ResolverCache, Txt, MX};

/// RFC 7208 §4.6.4: more than two void lookups is a permerror.
pub(super) const VOID_LOOKUP_LIMIT: usize = 2;

/// RFC 7208 §4.6.4: at most ten PTR names are validated.
const PTR_NAME_LIMIT: usize = 10;

/// One evaluation's lookups.
#[derive(Default)]
pub(super) struct Lookups {
    /// Address and MX lookups asked.
    asked: AtomicUsize,
    /// Those that answered at least one record.
    answered: AtomicUsize,
    /// The client's validated-or-not PTR names, lower-case, no final dot.
    ptr: Option<RecordSet<Box<str>>>,
    /// The checked domain's record (its lookup key, the FQDN mail-auth
    /// asks for), as the caller prepared it.
    record: Option<(Box<str>, Txt)>,
}

impl Lookups {
    /// `names`: the client's PTR names, none when their lookup failed
    /// (RFC 7208 §5.5: then `ptr` does not match); at most ten are used.
    pub fn with_ptr(names: Vec<String>) -> Lookups {
        Lookups {
            ptr: Some(RecordSet {
                rrset: names
                    .into_iter()
                    .take(PTR_NAME_LIMIT)
                    .map(String::into_boxed_str)
                    .collect(),
                dnssec_status: DnssecStatus::Indeterminate,
            }),
            ..Lookups::default()
        }
    }

    /// mail-auth is to evaluate `record` as the record of `fqdn`.
    pub fn with_record(self, fqdn: String, record: Txt) -> Lookups {
        Lookups {
            record: Some((fqdn.into_boxed_str(), record)),
            ..self
        }
    }

    /// Lookups that found nothing (NXDOMAIN or no records) or failed.
    pub fn void(&self) -> usize {
        self.asked
            .load(Ordering::Relaxed)
            .saturating_sub(self.answered.load(Ordering::Relaxed))
    }

    fn ask(&self) {
        self.asked.fetch_add(1, Ordering::Relaxed);
    }

    fn answer<T>(&self, records: &RecordSet<T>) {
        if !records.rrset.is_empty() {
            self.answered.fetch_add(1, Ordering::Relaxed);
        }
    }
}

macro_rules! counted {
    ($record:ty) => {
        impl ResolverCache<Box<str>, RecordSet<$record>> for Lookups {
            fn get<Q>(&self, _name: &Q) -> Option<RecordSet<$record>>
            where
                Box<str>: Borrow<Q>,
                Q: Hash + Eq + ?Sized,
            {
                self.ask();
                None
            }

            fn remove<Q>(&self, _name: &Q) -> Option<RecordSet<$record>>
            where
                Box<str>: Borrow<Q>,
                Q: Hash + Eq + ?Sized,
            {
                None
            }

            fn insert(&self, _key: Box<str>, value: RecordSet<$record>, _valid_until: Instant) {
                self.answer(&value);
            }
        }
    };
}

counted!(Ipv4Addr);
counted!(Ipv6Addr);
counted!(MX);

/// TXT lookups (the records of include:, redirect= and exp=) are not void
/// lookups mail-auth could leave unlimited: a missing record there is
/// already an error or ignored. The checked domain's record is the one
/// prepared.
impl ResolverCache<Box<str>, Txt> for Lookups {
    fn get<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let (fqdn, record) = self.record.as_ref()?;
        (<Box<str> as Borrow<Q>>::borrow(fqdn) == name).then(|| record.clone())
    }

    fn remove<Q>(&self, _name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        None
    }

    fn insert(&self, _key: Box<str>, _value: Txt, _valid_until: Instant) {}
}

impl ResolverCache<IpAddr, RecordSet<Box<str>>> for Lookups {
    fn get<Q>(&self, _ip: &Q) -> Option<RecordSet<Box<str>>>
    where
        IpAddr: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.ptr.clone()
    }

    fn remove<Q>(&self, _ip: &Q) -> Option<RecordSet<Box<str>>>
    where
        IpAddr: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        None
    }

    fn insert(&self, _ip: IpAddr, _value: RecordSet<Box<str>>, _valid_until: Instant) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records<T>(items: Vec<T>) -> RecordSet<T> {
        RecordSet {
            rrset: items.into(),
            dnssec_status: DnssecStatus::Indeterminate,
        }
    }

    #[test]
    fn lookups_without_records_are_void() {
        // RFC 7208 §4.6.4: NXDOMAIN and empty answers both count.
        let lookups = Lookups::with_ptr(Vec::new());
        let now = Instant::now();
        let a: Option<RecordSet<Ipv4Addr>> = lookups.get("a.example.");
        assert!(a.is_none(), "nothing is cached here");
        lookups.insert("a.example.".into(), records(vec![Ipv4Addr::LOCALHOST]), now);
        let _: Option<RecordSet<MX>> = lookups.get("b.example.");
        lookups.insert("b.example.".into(), records(Vec::<MX>::new()), now);
        let _: Option<RecordSet<Ipv6Addr>> = lookups.get("c.example.");
        assert_eq!(lookups.void(), 2);
    }

    #[test]
    fn ptr_names_are_handed_over_at_most_ten() {
        // RFC 7208 §5.5.
        let names = (0..12).map(|i| format!("h{i}.example.org")).collect();
        let lookups = Lookups::with_ptr(names);
        let ptr: RecordSet<Box<str>> = lookups.get(&IpAddr::from(Ipv4Addr::LOCALHOST)).unwrap();
        assert_eq!(ptr.rrset.len(), 10);
        assert_eq!(&*ptr.rrset[0], "h0.example.org");
    }
}
