//! Resolution of whole configuration files: defaults, every section, and
//! the key and line each error names.

use super::super::*;

#[test]
fn embedded_default_parses() {
    let config = default_config().unwrap();
    assert_eq!(config.listeners[0].address.to_string(), "127.0.0.1:2525");
    assert_eq!(config.pipelines["default"].rcpt, vec!["relay"]);
    assert_eq!(
        config.queue.quarantine_retention,
        Some(Duration::from_secs(30 * 86400))
    );
}

#[test]
fn bad_quarantine_retention_names_key_and_line() {
    let text = "[queue]\nretry = [\"1m\"]\nquarantine_retention = \"a month\"\n";
    let err = load_str(text, "c.toml").unwrap_err().to_string();
    assert!(
        err.lines()
            .any(|l| l.starts_with("c.toml:3:") && l.contains("queue.quarantine_retention")),
        "{err}"
    );
}

#[test]
fn minimal_config_parses_as_written() {
    let config = load_str(
        include_str!("../../../../config/minimal.toml"),
        "minimal.toml",
    )
    .unwrap();
    assert_eq!(
        config.routes_for_test(),
        vec![("example.test".to_owned(), "127.0.0.1:2533".to_owned())]
    );
    assert_eq!(
        config.plugins["relay"].config_json,
        r#"{"trusted_networks":["127.0.0.0/8"]}"#
    );
    assert_eq!(config.plugins["relay"].timeout, Duration::from_millis(100));
}

#[test]
fn unknown_key_names_key_and_line() {
    let text = "[server]\nhostname = \"a.test\"\n\n[plugins.relay]\npath = \"builtin:relay\"\ntimout = \"1s\"\n";
    let err = load_str(text, "c.toml").unwrap_err().to_string();
    assert!(err.starts_with("c.toml:6:"), "{err}");
    assert!(err.contains("timout"), "{err}");
}

#[test]
fn unknown_plugin_in_pipeline() {
    let text = "[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:25\"\npipeline = \"p\"\n[pipeline.p]\nrcpt = [\"relya\"]\n";
    let err = load_str(text, "c.toml").unwrap_err().to_string();
    assert!(
        err.contains("c.toml:6:") && err.contains("pipeline.p.rcpt") && err.contains("relya"),
        "{err}"
    );
}

#[test]
fn plugin_instance_policy() {
    const L: &str = "[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:25\"\npipeline = \"p\"\n[pipeline.p]\n[plugins.a]\npath = \"a.wasm\"\n";
    let config = load_str(L, "c.toml").unwrap();
    assert_eq!(config.plugins["a"].instances, InstancePolicy::PerSession);
    let config = load_str(&(L.to_owned() + "instances = \"pooled\"\n"), "c.toml").unwrap();
    assert_eq!(
        config.plugins["a"].instances,
        InstancePolicy::Pooled { size: 4 }
    );
    let text = L.to_owned() + "instances = \"pooled\"\npool_size = 16\n";
    let config = load_str(&text, "c.toml").unwrap();
    assert_eq!(
        config.plugins["a"].instances,
        InstancePolicy::Pooled { size: 16 }
    );
    let text = L.to_owned() + "instances = \"reused\"\npool_size = 8\n";
    let config = load_str(&text, "c.toml").unwrap();
    assert_eq!(
        config.plugins["a"].instances,
        InstancePolicy::Reused { idle: 8 }
    );
    // Bundled plugins reset their per-session state themselves.
    let builtin = L.replace("a.wasm", "builtin:relay");
    let config = load_str(&builtin, "c.toml").unwrap();
    assert_eq!(
        config.plugins["a"].instances,
        InstancePolicy::Reused {
            idle: InstancePolicy::DEFAULT_IDLE
        }
    );
    let text = builtin + "instances = \"per-session\"\n";
    let config = load_str(&text, "c.toml").unwrap();
    assert_eq!(config.plugins["a"].instances, InstancePolicy::PerSession);
    for (bad, key) in [
        ("instances = \"shared\"\n", "plugins.a.instances"),
        ("pool_size = 4\n", "plugins.a.pool_size"),
        (
            "instances = \"pooled\"\npool_size = 0\n",
            "plugins.a.pool_size",
        ),
    ] {
        let err = load_str(&(L.to_owned() + bad), "c.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("c.toml:8:") || err.contains("c.toml:9:"),
            "{err}"
        );
        assert!(err.contains(key), "{err}");
    }
}

#[test]
fn plugin_cache_section() {
    const L: &str =
        "[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:25\"\npipeline = \"p\"\n[pipeline.p]\n";
    let config = load_str(L, "c.toml").unwrap();
    assert_eq!(
        config.plugin_cache.resolve(Path::new("/d")),
        Some(PathBuf::from("/d/cache"))
    );
    let config = load_str(
        &(L.to_owned() + "[plugin_cache]\ndir = \"/var/cache/x\"\n"),
        "c.toml",
    )
    .unwrap();
    assert_eq!(
        config.plugin_cache.resolve(Path::new("/d")),
        Some(PathBuf::from("/var/cache/x"))
    );
    let config = load_str(
        &(L.to_owned() + "[plugin_cache]\nenabled = false\n"),
        "c.toml",
    )
    .unwrap();
    assert_eq!(config.plugin_cache.resolve(Path::new("/d")), None);
    let err = load_str(
        &(L.to_owned() + "[plugin_cache]\ndirectory = \"x\"\n"),
        "c.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("directory"), "{err}");
}

#[test]
fn plugin_capabilities_and_mode() {
    let text = "[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:25\"\npipeline = \"p\"\n[pipeline.p]\n[plugins.a]\npath = \"builtin:relay\"\n[plugins.b]\npath = \"b.wasm\"\n[plugins.c]\npath = \"c.wasm\"\nallow = [\"dns\", \"message-body\"]\nmode = \"shadow\"\n";
    let config = load_str(text, "c.toml").unwrap();
    assert_eq!(config.plugins["a"].allow, Capabilities::bundled());
    assert!(!config.plugins["a"].allow.allows(Capability::Recipients));
    assert_eq!(config.plugins["b"].allow, Capabilities::NONE);
    assert_eq!(config.plugins["b"].mode, PluginMode::Enforce);
    assert_eq!(config.plugins["c"].allow.names(), ["dns", "message-body"]);
    assert_eq!(config.plugins["c"].mode, PluginMode::Shadow);

    let text = "[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:25\"\npipeline = \"p\"\n[pipeline.p]\n[plugins.a]\npath = \"builtin:relay\"\nallow = [\"recipients\"]\n";
    let config = load_str(text, "c.toml").unwrap();
    assert_eq!(config.plugins["a"].allow.names(), ["recipients"]);

    let text = "[plugins.a]\npath = \"a.wasm\"\nallow = [\"dns\", \"sockets\"]\n";
    let err = load_str(text, "c.toml").unwrap_err().to_string();
    assert!(
        err.contains("c.toml:3:") && err.contains("plugins.a.allow") && err.contains("\"sockets\""),
        "{err}"
    );
}

#[test]
fn unknown_pipeline_and_bad_values() {
    let text = "[server]\nmax_message_size = \"10XB\"\n[[listener]]\nname = \"mx\"\naddress = \"nowhere\"\npipeline = \"p\"\n";
    let err = load_str(text, "c.toml").unwrap_err().to_string();
    assert!(
        err.contains("c.toml:2:") && err.contains("max_message_size"),
        "{err}"
    );
    assert!(
        err.contains("c.toml:5:") && err.contains("listener[0].address"),
        "{err}"
    );
}

const LISTENERS: &str = "[pipeline.p]\n\
[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:25\"\npipeline = \"p\"\n\
[[listener]]\nname = \"sub\"\naddress = \"127.0.0.1:587\"\npipeline = \"p\"\ntls = \"starttls\"\nauth = \"required\"\n\
[[listener]]\nname = \"smtps\"\naddress = \"127.0.0.1:465\"\npipeline = \"p\"\ntls = \"implicit\"\nauth = \"required\"\n";

#[test]
fn submission_and_greet_delay_defaults() {
    let config = load_str(LISTENERS, "c.toml").unwrap();
    let by_name = |n: &str| config.listeners.iter().find(|l| l.name == n).unwrap();
    assert!(!by_name("mx").submission);
    assert_eq!(by_name("mx").greet_delay, Duration::from_secs(1));
    assert!(by_name("sub").submission);
    assert_eq!(by_name("sub").greet_delay, Duration::ZERO);
    assert!(by_name("smtps").submission);
    assert_eq!(by_name("smtps").greet_delay, Duration::ZERO);
    let exempt = &config.server.greet_exempt;
    assert!(exempt
        .iter()
        .any(|n| n.contains(&"127.0.0.9".parse::<std::net::IpAddr>().unwrap())));
    assert_eq!(
        config.server.timeouts.command_under_load,
        Duration::from_secs(10)
    );
    // Nobody has an entry: only the own address.
    assert!(config
        .submission
        .may_send_as("Alice@Example.org", "alice@EXAMPLE.org"));
    assert!(!config
        .submission
        .may_send_as("alice@example.org", "bob@example.org"));
    assert!(!config.submission.may_send_as("alice", "alice"));
}

#[test]
fn senders_map_patterns() {
    let text = format!(
        "{LISTENERS}[submission]\nsenders = {{ \"Alice@example.org\" = [\"@Example.org\", \"a@other.test\"], \"app\" = [\"*\"] }}\n"
    );
    let config = load_str(&text, "c.toml").unwrap();
    let s = &config.submission;
    assert!(s.may_send_as("alice@example.org", "bob@example.org"));
    assert!(s.may_send_as("alice@example.org", "A@Other.Test"));
    assert!(!s.may_send_as("alice@example.org", "alice@sub.example.org"));
    assert!(!s.may_send_as("alice@example.org", "@example.org"));
    assert!(s.may_send_as("app", "anyone@anywhere.test"));
}

#[test]
fn bad_submission_dkim_and_greet_values_name_key_and_line() {
    let text = "[server]\ngreet_exempt = [\"10.0.0.0/33\"]\n\
[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:25\"\npipeline = \"p\"\nsubmission = true\ngreet_delay = \"1m\"\n\
[[listener]]\nname = \"smtps\"\naddress = \"127.0.0.1:465\"\npipeline = \"p\"\ntls = \"implicit\"\nauth = \"required\"\ngreet_delay = \"1s\"\n\
[pipeline.p]\n\
[submission]\nsenders = { \"alice\" = [\"nobody\"], \"bob\" = [] }\n\
[dkim]\ntrusted_networks = [\"nonsense\"]\n\
[[dkim.sign]]\ndomain = \"exa mple.org\"\nselector = \"s 1\"\nkey = \"/nonexistent/key.pem\"\nheaders = [\"DKIM-Signature\"]\n";
    let err = load_str(text, "c.toml").unwrap_err().to_string();
    for (line, key) in [
        (2, "server.greet_exempt"),
        (4, "listener[0].submission"),
        (8, "listener[0].greet_delay"),
        (15, "listener[1].greet_delay"),
        (18, "submission.senders"),
        (20, "dkim.trusted_networks"),
        (22, "dkim.sign[0].domain"),
        (23, "dkim.sign[0].selector"),
        (25, "dkim.sign[0].headers"),
    ] {
        assert!(
            err.contains(&format!("c.toml:{line}:")) && err.contains(key),
            "{line} {key}: {err}"
        );
    }
    assert!(
        err.contains("\"bob\"") && err.contains("empty list"),
        "{err}"
    );
}

#[test]
fn plugin_file_and_callout_grants() {
    let listener = "\n[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:25\"\npipeline = \"p\"\n[pipeline.p]\n";
    let text = "[plugins.r]\npath = \"builtin:recipients\"\nfiles = [\"/etc/sluice/recipients\"]\ncallouts = [\"lmtp:127.0.0.1:24\", \"smtp:[::1]:2525\", \"lmtp:unix:/run/dovecot/lmtp\"]\n";
    let config = load_str(&format!("{text}{listener}"), "c.toml").unwrap();
    let plugin = &config.plugins["r"];
    assert_eq!(plugin.files, vec![PathBuf::from("/etc/sluice/recipients")]);
    assert_eq!(
        plugin.callouts,
        vec![
            CalloutGrant {
                protocol: CalloutProtocol::Lmtp,
                target: "127.0.0.1:24".into()
            },
            CalloutGrant {
                protocol: CalloutProtocol::Smtp,
                target: "[::1]:2525".into()
            },
            CalloutGrant {
                protocol: CalloutProtocol::Lmtp,
                target: "unix:/run/dovecot/lmtp".into()
            },
        ]
    );
    let relay = load_str(
        &format!("[plugins.x]\npath = \"builtin:relay\"\n{listener}"),
        "c.toml",
    )
    .unwrap();
    assert!(relay.plugins["x"].files.is_empty() && relay.plugins["x"].callouts.is_empty());
    for bad in [
        "ldap:127.0.0.1:389",
        "lmtp:127.0.0.1",
        "smtp::25",
        "lmtp:host:0",
    ] {
        let text = format!(
            "[plugins.r]\npath = \"builtin:recipients\"\n\ncallouts = [\"{bad}\"]\n{listener}"
        );
        let err = load_str(&text, "c.toml").unwrap_err().to_string();
        assert!(
            err.contains("c.toml:4:") && err.contains("plugins.r.callouts"),
            "{bad}: {err}"
        );
    }
    let err = load_str(
        &format!("[plugins.r]\npath = \"builtin:recipients\"\nfiles = [\"\"]\n{listener}"),
        "c.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("c.toml:3:") && err.contains("plugins.r.files"),
        "{err}"
    );
}

#[test]
fn tls_listeners_certificates_and_auth() {
    // Only resolved here; `assets` opens the files.
    let (cert, key) = ("/etc/sluice/cert.pem", "/etc/sluice/key.pem");
    let text = format!(
        "[tls]\ncertificate = \"{cert}\"\nkey = \"{key}\"\n\
         [auth]\nmax_failures = 3\nlockout = \"2m\"\nmin_password_length = 20\n\
         [[listener]]\nname = \"sub\"\naddress = \"127.0.0.1:587\"\npipeline = \"p\"\n\
         tls = \"starttls\"\nauth = \"required\"\n\
         [[listener]]\nname = \"smtps\"\naddress = \"127.0.0.1:465\"\npipeline = \"p\"\n\
         tls = \"implicit\"\ncertificate = \"{cert}\"\nkey = \"{key}\"\n\
         [[listener]]\nname = \"test\"\naddress = \"127.0.0.1:2526\"\npipeline = \"p\"\n\
         auth = \"optional\"\nauth_without_tls = true\n\
         [pipeline.p]\n"
    );
    let config = load_str(&text, "c.toml").unwrap();
    assert_eq!(
        config
            .tls
            .as_ref()
            .unwrap()
            .default
            .certificate
            .display()
            .to_string(),
        cert
    );
    assert_eq!(config.auth.max_failures, 3);
    assert_eq!(config.auth.lockout, Duration::from_secs(120));
    assert_eq!(config.auth.min_password_length, 20);
    let [sub, smtps, test] = &config.listeners[..] else {
        panic!("three listeners")
    };
    assert_eq!((sub.tls, sub.auth), (TlsMode::Starttls, AuthMode::Required));
    assert!(sub.tls_files.is_none() && !sub.auth_offered(false) && sub.auth_offered(true));
    assert_eq!(smtps.tls, TlsMode::Implicit);
    assert_eq!(smtps.auth, AuthMode::None);
    assert!(!smtps.auth_offered(true));
    let files = &smtps.tls_files.as_ref().unwrap().default;
    assert_eq!(
        (files.key.origin.line, files.key.origin.key.as_str()),
        (20, "listener[1].key")
    );
    assert_eq!(files.certificate.origin.file, "c.toml");
    assert!(test.auth_offered(false));
}

#[test]
fn tls_and_auth_errors_name_key_and_line() {
    let (cert, missing) = ("/etc/sluice/cert.pem", "/nonexistent/nope.pem");
    let text = format!(
        "[tls]\ncertificate = \"{cert}\"\n\
         [auth]\nmax_failures = 0\nmin_password_length = 4\n\
         [[listener]]\nname = \"a\"\naddress = \"127.0.0.1:25\"\npipeline = \"p\"\n\
         tls = \"implicit\"\ncertificate = \"{missing}\"\nkey = \"{cert}\"\n\
         [[listener]]\nname = \"b\"\naddress = \"127.0.0.1:26\"\npipeline = \"p\"\n\
         auth = \"required\"\n\
         [[listener]]\nname = \"c\"\naddress = \"127.0.0.1:27\"\npipeline = \"p\"\n\
         certificate = \"{cert}\"\n\
         [pipeline.p]\n"
    );
    let err = load_str(&text, "c.toml").unwrap_err().to_string();
    let expect = [
        (
            "c.toml:2:",
            "tls.key: certificate is set but key is missing",
        ),
        ("c.toml:4:", "auth.max_failures"),
        ("c.toml:5:", "auth.min_password_length"),
        (
            "c.toml:17:",
            "listener[1].auth: AUTH is only offered over TLS",
        ),
        (
            "c.toml:22:",
            "listener[2].key: certificate is set but key is missing",
        ),
    ];
    for (at, what) in expect {
        assert!(
            err.lines().any(|l| l.starts_with(at) && l.contains(what)),
            "{at} {what}\n{err}"
        );
    }
    // The missing certificate is for `assets` to find: no file is opened here.
    assert!(!err.contains("c.toml:11:"), "{err}");
}

#[test]
fn dns_and_delivery_settings() {
    let text = "[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:25\"\npipeline = \"p\"\n[pipeline.p]\n[dns]\nnameservers = [\"127.0.0.1:5353\", \"::1\"]\n[delivery]\nlocal = { lmtp = \"unix:/run/dovecot/lmtp\" }\nsmtp_port = 2525\ntls = \"required\"\n[queue]\nwarn_after = \"0s\"\nquarantine_retention = \"0s\"\n";
    let config = load_str(text, "c.toml").unwrap();
    assert_eq!(
        config.dns.nameservers,
        vec![
            "127.0.0.1:5353".parse().unwrap(),
            "[::1]:53".parse().unwrap()
        ]
    );
    assert_eq!(
        config.delivery.local,
        LocalDelivery::Lmtp(LmtpTarget::Unix("/run/dovecot/lmtp".into()))
    );
    assert_eq!(config.delivery.smtp_port, 2525);
    assert_eq!(config.delivery.tls, OutboundTls::Required);
    assert_eq!(config.queue.warn_after, None);
    assert_eq!(config.queue.quarantine_retention, None);
}

#[test]
fn dane_is_off_and_tls_auto_unless_configured() {
    let config = load_str(LISTENER, "c.toml").unwrap();
    assert_eq!(config.dns.dnssec, DaneConfig::default());
    assert!(!config.dns.dnssec.enabled());
    assert_eq!(config.delivery.tls, OutboundTls::Auto);

    let text = format!(
        "{LISTENER}[dns]\ntrust_anchor = \"root\"\n[delivery]\ntls = \"mta-sts\"\n\
         [[delivery.route]]\ndomain = \"a.test\"\nnext_hop = \"mx.a.test:25\"\ntls = \"dane\"\n"
    );
    let config = load_str(&text, "c.toml").unwrap();
    assert_eq!(config.dns.dnssec.trust_anchor, Some(TrustAnchor::Root));
    assert_eq!(config.delivery.tls, OutboundTls::MtaSts);
    assert_eq!(config.delivery.routes[0].tls, Some(OutboundTls::Dane));

    let text =
        format!("{LISTENER}[dns]\ntrust_anchor = \"/etc/sluice/root.key\"\ntrust_ad = true\n");
    let dnssec = load_str(&text, "c.toml").unwrap().dns.dnssec;
    assert_eq!(
        dnssec.trust_anchor,
        Some(TrustAnchor::File("/etc/sluice/root.key".into()))
    );
    assert!(dnssec.trust_ad && dnssec.enabled());
}

#[test]
fn dane_without_dnssec_and_unknown_tls_values_name_their_key() {
    let text = format!(
        "{LISTENER}[delivery]\ntls = \"dane\"\n\
         [[delivery.route]]\ndomain = \"a.test\"\nnext_hop = \"mx.a.test:25\"\ntls = \"dane\"\n"
    );
    let err = load_str(&text, "c.toml").unwrap_err().to_string();
    for (at, key) in [
        ("c.toml:7:", "delivery.tls"),
        ("c.toml:11:", "delivery.route[0].tls"),
    ] {
        assert!(
            err.lines()
                .any(|l| l.starts_with(at) && l.contains(key) && l.contains("needs DNSSEC")),
            "{at} {key}\n{err}"
        );
    }
    let text = format!("{LISTENER}[delivery]\ntls = \"auto\"\n");
    let err = load_str(&text, "c.toml").unwrap_err().to_string();
    assert!(
        err.contains("c.toml:7:") && err.contains("mta-sts"),
        "{err}"
    );
    let text = format!("{LISTENER}[dns]\ntrust_anchor = \"\"\n");
    let err = load_str(&text, "c.toml").unwrap_err().to_string();
    assert!(
        err.contains("c.toml:7:") && err.contains("dns.trust_anchor"),
        "{err}"
    );
}

#[test]
fn bad_name_server_and_lmtp_address() {
    let text = "[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:25\"\npipeline = \"p\"\n[pipeline.p]\n[dns]\nnameservers = [\"dns.example\"]\n[delivery]\nlocal = { lmtp = \"nowhere\" }\n";
    let err = load_str(text, "c.toml").unwrap_err().to_string();
    assert!(
        err.contains("c.toml:7:") && err.contains("dns.nameservers"),
        "{err}"
    );
    assert!(
        err.contains("c.toml:9:") && err.contains("delivery.local.lmtp"),
        "{err}"
    );
}

#[test]
fn state_section() {
    let base =
        "[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:25\"\npipeline = \"p\"\n[pipeline.p]\n";
    assert_eq!(load_str(base, "c.toml").unwrap().state, StateConfig::Sled);
    let text = format!("{base}[state]\nbackend = \"sled\"\n");
    assert_eq!(load_str(&text, "c.toml").unwrap().state, StateConfig::Sled);
    let text =
        format!("{base}[state]\nbackend = \"redis\"\nurl = \"redis://:pw@127.0.0.1:6380/2\"\n");
    let config = load_str(&text, "c.toml").unwrap();
    assert_eq!(
        config.state,
        StateConfig::Redis {
            url: "redis://:pw@127.0.0.1:6380/2".into(),
            key_prefix: "sluice:".into()
        }
    );
    // The password never shows in logs.
    let debug = format!("{:?}", config.state);
    assert!(
        !debug.contains("pw") && debug.contains(":***@127.0.0.1"),
        "{debug}"
    );

    let cases = [
        ("[state]\nbackend = \"redis\"\n", "c.toml:7:", "state.url"),
        (
            "[state]\nbackend = \"memcached\"\n",
            "c.toml:7:",
            "state.backend",
        ),
        (
            "[state]\nurl = \"redis://h\"\n",
            "c.toml:7:",
            "only used with backend",
        ),
        (
            "[state]\nbackend = \"redis\"\nurl = \"http://h\"\n",
            "c.toml:8:",
            "state.url",
        ),
        ("[state]\nbakend = \"redis\"\n", "c.toml:7:", "bakend"),
    ];
    for (extra, line, needle) in cases {
        let err = load_str(&format!("{base}{extra}"), "c.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains(line) && err.contains(needle), "{extra}: {err}");
    }
}

#[test]
fn admin_and_free_space_keys() {
    let base =
        "[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:25\"\npipeline = \"p\"\n[pipeline.p]\n";
    let config = load_str(base, "c.toml").unwrap();
    assert_eq!(config.admin.address, None);
    assert_eq!(config.queue.min_free_space, 256 << 20);

    let text = format!(
        "{base}[admin]\naddress = \"127.0.0.1:8025\"\n[queue]\nmin_free_space = \"1000TB\"\n"
    );
    let config = load_str(&text, "c.toml").unwrap();
    assert_eq!(
        config.admin.address.map(|a| a.to_string()).as_deref(),
        Some("127.0.0.1:8025")
    );
    assert_eq!(config.queue.min_free_space, 1_000_000_000_000_000);

    let text = format!("{base}[admin]\naddress = \"0.0.0.0:8025\"\n");
    let err = load_str(&text, "c.toml").unwrap_err().to_string();
    assert!(
        err.contains("c.toml:7:") && err.contains("admin.address") && err.contains("allow_remote"),
        "{err}"
    );
    let text = format!("{base}[admin]\naddress = \"0.0.0.0:8025\"\nallow_remote = true\n");
    assert!(load_str(&text, "c.toml").unwrap().admin.allow_remote);

    let text = format!(
        "{base}[admin]\naddress = \"127.0.0.1:8025\"\ntoken_file = \"/etc/sluice/admin.token\"\n"
    );
    let config = load_str(&text, "c.toml").unwrap();
    let token_file = config.admin.token_file.unwrap();
    assert_eq!(
        token_file.value,
        std::path::Path::new("/etc/sluice/admin.token")
    );
    assert_eq!(
        (token_file.origin.line, token_file.origin.key.as_str()),
        (8, "admin.token_file")
    );
    let text = format!("{base}[admin]\ntoken_file = \"\"\n");
    let err = load_str(&text, "c.toml").unwrap_err().to_string();
    assert!(
        err.contains("c.toml:7:") && err.contains("admin.token_file"),
        "{err}"
    );

    let text = format!("{base}[admin]\nadress = \"127.0.0.1:1\"\n");
    let err = load_str(&text, "c.toml").unwrap_err().to_string();
    assert!(err.contains("c.toml:7:") && err.contains("adress"), "{err}");
    let text = format!("{base}[queue]\nmin_free_space = \"lots\"\n");
    let err = load_str(&text, "c.toml").unwrap_err().to_string();
    assert!(err.contains("queue.min_free_space"), "{err}");
}

#[test]
fn sizes() {
    assert_eq!(super::parse_size("64MiB").unwrap(), 64 << 20);
    assert_eq!(super::parse_size("10MB").unwrap(), 10_000_000);
    assert_eq!(super::parse_size("512").unwrap(), 512);
    assert_eq!(super::parse_size("2TiB").unwrap(), 2 << 40);
    assert!(super::parse_size("5 parsecs").is_err());
}

impl Config {
    fn routes_for_test(&self) -> Vec<(String, String)> {
        self.delivery
            .routes
            .iter()
            .map(|r| (r.domain.clone(), r.next_hop.clone()))
            .collect()
    }
}

#[test]
fn reverse_lookup_is_on_unless_switched_off() {
    let base =
        "[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:25\"\npipeline = \"p\"\n[pipeline.p]\n";
    assert!(load_str(base, "c.toml").unwrap().server.reverse_lookup);
    let text = format!("[server]\nreverse_lookup = false\n{base}");
    assert!(!load_str(&text, "c.toml").unwrap().server.reverse_lookup);
    let text = format!("[server]\nreverse_lookup = \"no\"\n{base}");
    let err = load_str(&text, "c.toml").unwrap_err().to_string();
    assert!(err.contains("c.toml:2:"), "{err}");
}

#[test]
fn delivery_caps_timeouts_and_target_filter() {
    let base =
        "[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:25\"\npipeline = \"p\"\n[pipeline.p]\n";
    let defaults = load_str(base, "c.toml").unwrap().delivery;
    assert_eq!(defaults.max_concurrent_deliveries, 100);
    assert_eq!((defaults.max_mx_hosts, defaults.max_addresses), (5, 10));
    assert_eq!(defaults.timeouts, DeliveryTimeouts::default());
    assert!(defaults
        .ignore_target_hosts
        .contains(&"127.0.0.0/8".parse().unwrap()));

    let text = format!(
        "{base}[delivery]\nmax_concurrent_deliveries = 4\nmax_mx_hosts = 2\nmax_addresses = 3\n\
         ignore_target_hosts = [\"10.0.0.0/8\", \"192.0.2.7\"]\n\
         [delivery.timeouts]\nconnect = \"1s\"\ngreeting = \"2s\"\ncommand = \"3s\"\n\
         data_init = \"4s\"\ndata_block = \"5s\"\ndata_end = \"6s\"\nattempt = \"7s\"\n"
    );
    let delivery = load_str(&text, "c.toml").unwrap().delivery;
    assert_eq!(delivery.max_concurrent_deliveries, 4);
    assert_eq!((delivery.max_mx_hosts, delivery.max_addresses), (2, 3));
    assert_eq!(
        delivery.ignore_target_hosts,
        vec![
            "10.0.0.0/8".parse::<ipnet::IpNet>().unwrap(),
            "192.0.2.7/32".parse().unwrap()
        ]
    );
    let secs = Duration::from_secs;
    assert_eq!(
        delivery.timeouts,
        DeliveryTimeouts {
            connect: secs(1),
            greeting: secs(2),
            command: secs(3),
            data_init: secs(4),
            data_block: secs(5),
            data_end: secs(6),
            attempt: secs(7),
        }
    );

    // An empty list switches the filter off.
    let text = format!("{base}[delivery]\nignore_target_hosts = []\n");
    assert!(load_str(&text, "c.toml")
        .unwrap()
        .delivery
        .ignore_target_hosts
        .is_empty());
}

#[test]
fn bad_delivery_caps_timeouts_and_networks_name_key_and_line() {
    let text =
        "[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:25\"\npipeline = \"p\"\n[pipeline.p]\n\
                [delivery]\nmax_mx_hosts = 0\nmax_addresses = 0\nmax_concurrent_deliveries = 0\n\
                ignore_target_hosts = [\"127.0.0.0/33\"]\n[delivery.timeouts]\ncommand = \"0s\"\n\
                data_block = \"soon\"\n";
    let err = load_str(text, "c.toml").unwrap_err().to_string();
    for (line, key) in [
        (7, "delivery.max_mx_hosts"),
        (8, "delivery.max_addresses"),
        (9, "delivery.max_concurrent_deliveries"),
        (10, "delivery.ignore_target_hosts"),
        (12, "delivery.timeouts.command"),
        (13, "delivery.timeouts.data_block"),
    ] {
        assert!(
            err.lines()
                .any(|l| l.contains(&format!("c.toml:{line}:")) && l.contains(key)),
            "{key} at line {line}: {err}"
        );
    }
    assert!(err.contains("must be at least 1"), "{err}");
    assert!(err.contains("must be greater than 0"), "{err}");
}

#[test]
fn ipv6_prefix_defaults_to_64_and_bad_values_name_key_and_line() {
    let listener =
        "[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:25\"\npipeline = \"p\"\n[pipeline.p]\n";
    let config = load_str(listener, "c.toml").unwrap();
    assert_eq!(config.server.ipv6_prefix, 64);
    let config = load_str(
        &format!("[server]\nipv6_prefix = 128\n{listener}"),
        "c.toml",
    )
    .unwrap();
    assert_eq!(config.server.ipv6_prefix, 128);
    for bad in ["0", "129", "-1", "4096"] {
        let text = format!("[server]\nhostname = \"a.test\"\nipv6_prefix = {bad}\n{listener}");
        let err = load_str(&text, "c.toml").unwrap_err().to_string();
        assert!(
            err.contains("c.toml:3:") && err.contains("server.ipv6_prefix"),
            "{bad}: {err}"
        );
    }
}

#[test]
fn session_timeouts_resolve_with_defaults_and_name_bad_values() {
    let defaults = load_str(LISTENERS, "c.toml").unwrap().server.timeouts;
    assert_eq!(defaults.data, Duration::from_secs(600));
    assert_eq!(defaults.tls_handshake, Duration::from_secs(10));
    let text = format!("[server.timeouts]\ndata = \"2m\"\ntls_handshake = \"3s\"\n{LISTENERS}");
    let timeouts = load_str(&text, "c.toml").unwrap().server.timeouts;
    assert_eq!(timeouts.data, Duration::from_secs(120));
    assert_eq!(timeouts.tls_handshake, Duration::from_secs(3));
    assert_eq!(timeouts.command, Duration::from_secs(300));
    let text = format!(
        "[server.timeouts]\ncommand = \"1m\"\ntls_handshake = \"0s\"\ndata = \"soon\"\n{LISTENERS}"
    );
    let err = load_str(&text, "c.toml").unwrap_err().to_string();
    assert!(
        err.contains("c.toml:3:")
            && err.contains("server.timeouts.tls_handshake: must be greater than 0"),
        "{err}"
    );
    assert!(
        err.contains("c.toml:4:") && err.contains("server.timeouts.data: invalid duration"),
        "{err}"
    );
}

#[test]
fn certificates_by_server_name() {
    let text = "[tls]\n\
         [[tls.certificate]]\nnames = [\"MX.A.example\", \"*.b.example.\"]\n\
         certificate = \"/a.pem\"\nkey = \"/a.key\"\n\
         [[tls.certificate]]\ncertificate = \"/d.pem\"\nkey = \"/d.key\"\n\
         [[listener]]\nname = \"l\"\naddress = \"127.0.0.1:25\"\npipeline = \"p\"\n\
         tls = \"starttls\"\n\
         [[listener.certificate]]\nnames = [\"c.example\"]\ncertificate = \"/c.pem\"\nkey = \"/c.key\"\n\
         [pipeline.p]\n";
    let config = load_str(text, "c.toml").unwrap();
    let tls = config.tls.as_ref().unwrap().certificates();
    assert_eq!(tls.default.certificate, std::path::Path::new("/d.pem"));
    assert_eq!(tls.named.len(), 1);
    assert_eq!(tls.named[0].names, ["mx.a.example", "*.b.example"]);
    assert_eq!(tls.named[0].files.key, std::path::Path::new("/a.key"));
    // A listener whose tables all have names serves the first by default.
    let own = config.listeners[0].tls_files.as_ref().unwrap();
    assert_eq!(
        own.default.certificate.value,
        std::path::Path::new("/c.pem")
    );
    assert_eq!(own.named[0].names, ["c.example"]);
    assert_eq!(
        own.named[0].files.key.origin.key,
        "listener[0].certificate[0].key"
    );
}

#[test]
fn bad_certificate_tables_name_key_and_line() {
    let text = "[tls]\nkey = \"/x.key\"\n\
         [[tls.certificate]]\nnames = [\"a.example\"]\ncertificate = \"/a.pem\"\nkey = \"/a.key\"\n\
         [[tls.certificate]]\nnames = [\"A.example\", \"bad name\"]\ncertificate = \"/b.pem\"\n\
         [[tls.certificate]]\ncertificate = \"/c.pem\"\nkey = \"/c.key\"\n\
         [[tls.certificate]]\ncertificate = \"/d.pem\"\nkey = \"/d.key\"\n\
         [[tls.certificate]]\nnames = [\"e.example\"]\nchain = \"/e.pem\"\n\
         [[listener]]\nname = \"l\"\naddress = \"127.0.0.1:25\"\npipeline = \"p\"\n\
         [pipeline.p]\n";
    let err = load_str(text, "c.toml").unwrap_err().to_string();
    // Unknown keys in a table stop parsing first: that one alone.
    assert!(err.contains("c.toml:18:") && err.contains("chain"), "{err}");
    let text = text.replace(
        "chain = \"/e.pem\"\n",
        "certificate = \"/e.pem\"\nkey = \"/e.key\"\n",
    );
    let err = load_str(&text, "c.toml").unwrap_err().to_string();
    for (line, what) in [
        (
            "c.toml:2:",
            "tls.key: with [[certificate]] tables each table has its own key",
        ),
        (
            "c.toml:8:",
            "tls.certificate[1].names: a.example is already the name of certificate[0]",
        ),
        ("c.toml:8:", "\"bad name\" is not a server name"),
        (
            "c.toml:9:",
            "tls.certificate[1].key: certificate is set but key is missing",
        ),
        (
            "tls.certificate[3].names:",
            "only one [[certificate]] table may leave out names",
        ),
    ] {
        assert!(
            err.lines().any(|l| l.contains(line) && l.contains(what)),
            "{line} {what} in:\n{err}"
        );
    }
}

#[test]
fn run_as_user_and_group_resolve_and_bad_names_are_refused() {
    let listener = "\n[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:2525\"\npipeline = \"p\"\n[pipeline.p]\n";
    let load = |server: &str| load_str(&format!("{server}{listener}"), "c.toml");
    let config = load("[server]\nuser = \"sluice\"\ngroup = \"mail\"\n").unwrap();
    let run_as = config.server.run_as.expect("run_as");
    assert_eq!(
        (run_as.user.as_str(), run_as.group.as_deref()),
        ("sluice", Some("mail"))
    );
    assert!(!config.server.allow_root);
    assert!(
        load("[server]\nallow_root = true\n")
            .unwrap()
            .server
            .allow_root
    );

    let err = load("[server]\ngroup = \"mail\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("c.toml:2:")
            && err.contains("server.group")
            && err.contains("needs server.user"),
        "{err}"
    );
    let err = load("[server]\nuser = \"../x\"\n").unwrap_err().to_string();
    assert!(
        err.contains("c.toml:2:") && err.contains("server.user"),
        "{err}"
    );
}

#[test]
fn message_memory_is_a_size_above_zero() {
    let base =
        "[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:25\"\npipeline = \"p\"\n[pipeline.p]\n";
    let config = load_str(
        &format!("[server]\nmessage_memory = \"8MiB\"\n{base}"),
        "c.toml",
    )
    .unwrap();
    assert_eq!(config.server.message_memory, 8 << 20);
    let config = load_str(base, "c.toml").unwrap();
    assert_eq!(config.server.message_memory, DEFAULT_MESSAGE_MEMORY);
    let err = load_str(&format!("[server]\nmessage_memory = 0\n{base}"), "c.toml")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("c.toml:2:") && err.contains("server.message_memory"),
        "{err}"
    );
}

const LISTENER: &str =
    "[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:25\"\npipeline = \"p\"\n[pipeline.p]\n";

#[test]
fn recipient_delimiter_splits_at_any_of_its_characters() {
    let text = "[domains]\nlocal = [\"example.org\"]\nrecipient_delimiter = \"+-\"\n";
    let domains = load_str(&(text.to_owned() + LISTENER), "c.toml")
        .unwrap()
        .domains;
    assert_eq!(domains.recipient_delimiter, "+-");
    assert_eq!(domains.mailbox_local_part("alice+news"), "alice");
    assert_eq!(domains.mailbox_local_part("alice-news+x"), "alice");
    assert_eq!(domains.mailbox_local_part("postmaster+x"), "postmaster");
    assert_eq!(domains.mailbox_local_part("+alice"), "+alice");
    assert_eq!(domains.mailbox_local_part("\"a b+x\""), "\"a b+x\"");
    assert_eq!(domains.mailbox_local_part("alice"), "alice");
    // Absent or "": off.
    for text in ["[domains]\n", "[domains]\nrecipient_delimiter = \"\"\n"] {
        let domains = load_str(&(text.to_owned() + LISTENER), "c.toml")
            .unwrap()
            .domains;
        assert_eq!(domains.mailbox_local_part("alice+news"), "alice+news");
    }
}

#[test]
fn bad_recipient_delimiter_names_key_and_line() {
    for bad in ["@", ".", " ", "+++++++++"] {
        let text = format!(
            "[domains]\nlocal = [\"example.org\"]\nrecipient_delimiter = {bad:?}\n{LISTENER}"
        );
        let err = load_str(&text, "c.toml").unwrap_err().to_string();
        assert!(
            err.lines()
                .any(|l| l.starts_with("c.toml:3:") && l.contains("domains.recipient_delimiter")),
            "{bad:?}: {err}"
        );
    }
}

#[test]
fn builtin_recipients_inherits_the_domains_delimiter_unless_it_sets_its_own() {
    let text = |domains: &str, own: &str| {
        format!(
            "[domains]\nlocal = [\"example.org\"]\n{domains}{LISTENER}\
             [plugins.r]\npath = \"builtin:recipients\"\n[plugins.r.config]\n\
             users = [\"alice\"]\n{own}"
        )
    };
    let json = |domains: &str, own: &str| {
        load_str(&text(domains, own), "c.toml").unwrap().plugins["r"]
            .config_json
            .clone()
    };
    let set = "recipient_delimiter = \"+\"\n";
    assert_eq!(
        json(set, ""),
        r#"{"recipient_delimiter":"+","users":["alice"]}"#
    );
    assert_eq!(
        json(set, "recipient_delimiter = \"-\"\n"),
        r#"{"recipient_delimiter":"-","users":["alice"]}"#
    );
    assert_eq!(json("", ""), r#"{"users":["alice"]}"#);
}

#[test]
fn dmarc_reports_are_off_by_default_and_daily() {
    let config = default_config().unwrap();
    assert!(!config.dmarc_reports.enabled);
    assert_eq!(config.dmarc_reports.interval, Duration::from_secs(86400));
}

#[test]
fn dmarc_reports_resolve_as_written() {
    let text = "[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:25\"\npipeline = \"p\"\n[pipeline.p]\nrcpt = [\"relay\"]\n[plugins.relay]\npath = \"builtin:relay\"\n[dmarc_reports]\nenabled = true\norg_name = \"Example Mail\"\nemail = \"DMARC@example.test\"\ninterval = \"1h\"\nextra_contact = \"https://example.test/dmarc\"\n";
    let config = load_str(text, "c.toml").unwrap();
    let reports = &config.dmarc_reports;
    assert!(reports.enabled);
    assert_eq!(reports.org_name, "Example Mail");
    assert_eq!(reports.email, "dmarc@example.test");
    assert_eq!(reports.interval, Duration::from_secs(3600));
    assert_eq!(
        reports.extra_contact.as_deref(),
        Some("https://example.test/dmarc")
    );
}

#[test]
fn enabled_dmarc_reports_need_a_sender_named_with_key_and_line() {
    let text = "[dmarc_reports]\nenabled = true\nemail = \"not an address\"\n";
    let err = load_str(text, "c.toml").unwrap_err().to_string();
    assert!(
        err.lines()
            .any(|l| l.starts_with("c.toml:2:") && l.contains("dmarc_reports.org_name")),
        "{err}"
    );
    assert!(
        err.lines()
            .any(|l| l.starts_with("c.toml:3:") && l.contains("dmarc_reports.email")),
        "{err}"
    );
    let text = "[dmarc_reports]\ninterval = \"soon\"\n";
    let err = load_str(text, "c.toml").unwrap_err().to_string();
    assert!(
        err.contains("c.toml:2:") && err.contains("dmarc_reports.interval"),
        "{err}"
    );
}

#[test]
fn node_name_defaults_to_hostname_and_bad_values_name_key_and_line() {
    let text = format!("[server]\nhostname = \"MX1.Example.Test\"\n{LISTENERS}");
    let config = load_str(&text, "c.toml").unwrap();
    assert_eq!(config.server.node_name, "mx1.example.test");
    let text =
        format!("[server]\nhostname = \"mx.example.test\"\nnode_name = \"mx-b_2\"\n{LISTENERS}");
    assert_eq!(
        load_str(&text, "c.toml").unwrap().server.node_name,
        "mx-b_2"
    );
    let long = "n".repeat(65);
    for bad in ["", "a b", "quote\\\"", long.as_str()] {
        let text = format!("[server]\nhostname = \"a.test\"\nnode_name = \"{bad}\"\n{LISTENERS}");
        let err = load_str(&text, "c.toml").unwrap_err().to_string();
        assert!(
            err.contains("c.toml:3:") && err.contains("server.node_name"),
            "{bad}: {err}"
        );
    }
}

#[test]
fn milter_elements_take_an_address_and_no_instance_keys() {
    let listener = "\n[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:25\"\npipeline = \"p\"\n[pipeline.p]\ndata = [\"m\"]\n";
    let config = load_str(
        &format!(
            "[plugins.m]\npath = \"milter:inet:127.0.0.1:11332\"\non_error = \"skip\"\n{listener}"
        ),
        "c.toml",
    )
    .unwrap();
    let milter = &config.plugins["m"];
    assert_eq!(
        milter.source,
        PluginSource::Milter(crate::milter::MilterAddress::Inet {
            host: "127.0.0.1".into(),
            port: 11332
        })
    );
    // Seconds, not a Wasm call's 100ms; and no grant without the operator.
    assert_eq!(milter.timeout, Duration::from_secs(10));
    assert_eq!(milter.allow, Capabilities::NONE);
    for bad in [
        "milter:",
        "milter:inet:127.0.0.1",
        "milter:unix:relative",
        "milter:tcp:h:1",
    ] {
        let err = load_str(
            &format!("[plugins.m]\npath = \"{bad}\"\n{listener}"),
            "c.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("c.toml:2:") && err.contains("plugins.m.path"),
            "{bad}: {err}"
        );
    }
    let err = load_str(
        &format!(
            "[plugins.m]\npath = \"milter:unix:/run/m.sock\"\ninstances = \"pooled\"\n{listener}"
        ),
        "c.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("plugins.m.instances") && err.contains("does not apply to a milter"),
        "{err}"
    );
}
