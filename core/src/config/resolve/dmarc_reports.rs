//! `[dmarc_reports]`: DMARC aggregate reports, off unless `enabled`; when
//! on, the report's sender (`org_name`, `email`) must be named.

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::super::*;
use super::{valid_domain, Diagnostics};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDmarcReports {
    enabled: Option<Spanned<bool>>,
    org_name: Option<Spanned<String>>,
    email: Option<Spanned<String>>,
    extra_contact: Option<Spanned<String>>,
    interval: Option<Spanned<String>>,
}

pub(super) fn resolve_dmarc_reports(
    d: &mut Diagnostics<'_>,
    raw: Option<&RawDmarcReports>,
) -> DmarcReportsConfig {
    let defaults = DmarcReportsConfig::default();
    let Some(raw) = raw else {
        return defaults;
    };
    let enabled = raw.enabled.as_ref().is_some_and(|e| *e.get_ref());
    let interval = d.duration(&raw.interval, "dmarc_reports.interval", defaults.interval);
    if let Some(text) = &raw.interval {
        if interval < Duration::from_secs(1) {
            d.add(text.span(), "dmarc_reports.interval", "must be at least 1s");
        }
    }
    let text = |value: &Option<Spanned<String>>| {
        value
            .as_ref()
            .map(|v| v.get_ref().trim().to_owned())
            .unwrap_or_default()
    };
    let org_name = text(&raw.org_name);
    let email = text(&raw.email);
    let span = raw.enabled.as_ref().map_or(0..0, |e| e.span());
    if enabled && org_name.is_empty() {
        let span = raw.org_name.as_ref().map_or(span.clone(), |v| v.span());
        d.add(
            span,
            "dmarc_reports.org_name",
            "enabled reports need the name of the reporting organization",
        );
    }
    if enabled || raw.email.is_some() {
        let valid = email
            .rsplit_once('@')
            .is_some_and(|(local, domain)| !local.is_empty() && valid_domain(domain));
        if !valid {
            let span = raw.email.as_ref().map_or(span, |v| v.span());
            d.add(
                span,
                "dmarc_reports.email",
                format!("expected the reports' From address (local@domain), got {email:?}"),
            );
        }
    }
    let extra_contact = Some(text(&raw.extra_contact)).filter(|c| !c.is_empty());
    DmarcReportsConfig {
        enabled,
        org_name,
        email: email.to_ascii_lowercase(),
        extra_contact,
        interval: interval.max(Duration::from_secs(1)),
    }
}
