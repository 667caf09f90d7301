use super::*;
use crate::{HISTORY_LIMIT, STAGE_RECORD};
use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Instant;

fn new_message(n: usize, recipients: usize) -> NewMessage {
    let mut body = format!("Subject: test {n}\r\nX-Bin: \0\u{ff}\r\n\r\n").into_bytes();
    body.extend((0..=255u8).cycle().take(300 + n));
    body.extend_from_slice(b"\r\n");
    NewMessage {
        reverse_path: format!("sender{n}@example.org"),
        recipients: (0..recipients)
            .map(|i| format!("rcpt{i}@example.net"))
            .collect(),
        message: body,
        received_at: 1_700_000_000 + n as u64,
        client: "127.0.0.1:40000".into(),
        quarantine: None,
        dsn: Default::default(),
        recipient_dsn: Vec::new(),
    }
}

fn outcome(index: usize, status: RecipientStatus, reply: &str) -> RecipientOutcome {
    RecipientOutcome {
        index,
        status,
        reply: Some(reply.into()),
    }
}

#[tokio::test]
async fn enqueue_round_trips_byte_exact() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let msg = new_message(7, 2);
    let id = spool.enqueue(msg.clone()).await.unwrap();

    assert_eq!(spool.message(id).unwrap().unwrap(), msg.message);
    let entry = spool.entry(id).unwrap().unwrap();
    assert_eq!(entry.id, id);
    assert_eq!(entry.reverse_path, msg.reverse_path);
    assert_eq!(entry.received_at, msg.received_at);
    assert_eq!(entry.client, msg.client);
    assert_eq!(entry.size, msg.message.len() as u64);
    assert_eq!(
        (entry.attempts, entry.next_attempt, entry.held),
        (0, 0, false)
    );
    let addrs: Vec<_> = entry.recipients.iter().map(|r| r.address.clone()).collect();
    assert_eq!(addrs, msg.recipients);
    assert!(entry
        .recipients
        .iter()
        .all(|r| r.status == RecipientStatus::Pending && r.attempts == 0));
    assert_eq!(spool.len(), 1);
    assert_eq!(spool.entries().unwrap(), vec![entry]);
    let unknown = QueueId::from_u64(id.as_u64() + 1);
    assert_eq!(spool.entry(unknown).unwrap(), None);
    assert_eq!(spool.message(unknown).unwrap(), None);
}

#[tokio::test]
async fn ids_are_unique_and_ordered() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let mut ids = Vec::new();
    for n in 0..50 {
        ids.push(spool.enqueue(new_message(n, 1)).await.unwrap());
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    let listed: Vec<_> = spool.entries().unwrap().iter().map(|e| e.id).collect();
    assert_eq!(listed, ids);
    drop(spool);

    // After a restart new ids still come after the old ones.
    let spool = Spool::open(dir.path()).unwrap();
    let next = spool.enqueue(new_message(99, 1)).await.unwrap();
    assert!(next > ids[49]);
    assert_eq!(spool.len(), 51);
}

#[tokio::test]
async fn dsn_parameters_are_kept_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let mut msg = new_message(3, 3);
    msg.dsn = crate::DsnEnvelope {
        ret: Some(crate::Ret::Full),
        envid: Some("env-1".into()),
    };
    let never = crate::RecipientDsn {
        notify: Some(crate::Notify::default()),
        orcpt: None,
    };
    let success = crate::RecipientDsn {
        notify: Some(crate::Notify {
            success: true,
            ..Default::default()
        }),
        orcpt: Some(crate::OriginalRecipient {
            addr_type: "rfc822".into(),
            address: "first@example.net".into(),
        }),
    };
    // The third recipient has no entry: it gets none.
    msg.recipient_dsn = vec![never.clone(), success.clone()];
    let id = spool.enqueue(msg).await.unwrap();
    drop(spool);

    let spool = Spool::open(dir.path()).unwrap();
    let entry = spool.entry(id).unwrap().unwrap();
    assert_eq!(entry.dsn.ret, Some(crate::Ret::Full));
    assert_eq!(entry.dsn.envid.as_deref(), Some("env-1"));
    let kept: Vec<_> = entry.recipients.iter().map(|r| r.dsn.clone()).collect();
    assert_eq!(kept, vec![never, success, crate::RecipientDsn::default()]);
}

#[tokio::test]
async fn quarantined_message_starts_quarantined_and_can_be_released() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let mut msg = new_message(1, 2);
    msg.quarantine = Some("virus found".into());
    let id = spool.enqueue(msg).await.unwrap();
    let entry = spool.entry(id).unwrap().unwrap();
    assert_eq!(entry.quarantine.as_deref(), Some("virus found"));
    assert!(entry
        .recipients
        .iter()
        .all(|r| r.status == RecipientStatus::Quarantined));

    assert!(spool.release_quarantine(id).await.unwrap());
    let entry = spool.entry(id).unwrap().unwrap();
    assert_eq!(entry.quarantine, None);
    assert!(entry
        .recipients
        .iter()
        .all(|r| r.status == RecipientStatus::Pending));
    assert!(!spool
        .release_quarantine(QueueId::from_u64(1))
        .await
        .unwrap());
}

#[test]
fn debug_output_stays_small() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let text = format!("{spool:?}");
    assert!(text.starts_with("Spool { entries: 0,"), "{text}");
    assert!(text.len() < 100, "{text}");
}

#[test]
fn second_open_of_a_live_spool_reports_locked() {
    let dir = tempfile::tempdir().unwrap();
    let _spool = Spool::open(dir.path()).unwrap();
    let err = Spool::open(dir.path()).unwrap_err();
    assert!(matches!(err, SpoolError::Locked { .. }), "{err}");
}

#[tokio::test]
async fn enqueue_without_recipients_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let err = spool.enqueue(new_message(1, 0)).await.unwrap_err();
    assert!(matches!(err, SpoolError::NoRecipients), "{err}");
    assert_eq!(spool.len(), 0);
}

#[tokio::test]
async fn survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let msg = new_message(3, 3);
    let id = spool.enqueue(msg.clone()).await.unwrap();
    let kept = spool.enqueue(new_message(4, 1)).await.unwrap();
    spool
        .record_attempt(
            id,
            vec![outcome(1, RecipientStatus::Deferred, "451 4.7.1 later")],
            Some(1_700_000_300),
        )
        .await
        .unwrap();
    let before = spool.entries().unwrap();
    drop(spool);

    let spool = Spool::open(dir.path()).unwrap();
    assert_eq!(spool.entries().unwrap(), before);
    assert_eq!(spool.message(id).unwrap().unwrap(), msg.message);
    assert_eq!(spool.len(), 2);
    assert!(spool.entry(kept).unwrap().is_some());
}

/// Environment variable telling the child role where its spool is.
const CRASH_CHILD_DIR: &str = "SLUICE_SPOOL_CRASH_CHILD_DIR";
/// Messages the parent reads before killing the child.
const CRASH_ACKED: usize = 20;

/// The child half of `kill9_after_enqueue_keeps_acknowledged_messages`:
/// enqueues forever and prints each id once `enqueue` has returned.
#[test]
#[ignore = "run as a child process by kill9_after_enqueue_keeps_acknowledged_messages"]
fn crash_child() {
    let dir = std::env::var(CRASH_CHILD_DIR)
        .expect("crash_child only runs as a child of the kill -9 test");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let spool = Spool::open(Path::new(&dir)).unwrap();
        for n in 0.. {
            let id = spool.enqueue(new_message(n, 2)).await.unwrap();
            // stdout is line-buffered: the parent sees each line at once.
            println!("queued {id} {n}");
        }
    });
}

#[test]
fn kill9_after_enqueue_keeps_acknowledged_messages() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = spawn_child("spool::tests::crash_child", CRASH_CHILD_DIR, dir.path());
    let stdout = child.0.stdout.take().unwrap();
    let mut acked = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        let Some(rest) = line.strip_prefix("queued ") else {
            continue;
        };
        let (id, n) = rest.split_once(' ').unwrap();
        acked.push((id.parse::<QueueId>().unwrap(), n.parse::<usize>().unwrap()));
        if acked.len() == CRASH_ACKED {
            // Child::kill sends SIGKILL on unix: no destructor, no flush.
            child.0.kill().unwrap();
            break;
        }
    }
    let status = child.0.wait().unwrap();
    assert_eq!(acked.len(), CRASH_ACKED, "child exited early: {status}");

    let spool = Spool::open(dir.path()).unwrap();
    for (id, n) in &acked {
        let entry = spool.entry(*id).unwrap().expect("acknowledged entry lost");
        assert_eq!(entry.reverse_path, format!("sender{n}@example.org"));
        assert_eq!(
            spool.message(*id).unwrap().unwrap(),
            new_message(*n, 2).message
        );
    }
    // Whatever was mid-enqueue at the kill is either whole or absent.
    for entry in spool.entries().unwrap() {
        assert!(spool.message(entry.id).unwrap().is_some());
    }
    assert!(spool.len() >= CRASH_ACKED);
}

/// Environment variable telling the removal child where its spool is.
const REMOVAL_CHILD_DIR: &str = "SLUICE_SPOOL_REMOVAL_CHILD_DIR";
/// Messages the removal child delivers before and after its marker.
const REMOVAL_BATCH: usize = 10;

/// The child half of `kill9_after_unflushed_removal_redelivers_at_worst`:
/// queues two batches, records each first batch message as delivered
/// (removed, not flushed), queues a marker (whose commit carries those
/// removals), removes the second batch, and waits to be killed.
#[test]
#[ignore = "run as a child process by kill9_after_unflushed_removal_redelivers_at_worst"]
fn removal_crash_child() {
    let dir = std::env::var(REMOVAL_CHILD_DIR)
        .expect("removal_crash_child only runs as a child of the kill -9 test");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let spool = Spool::open(Path::new(&dir)).unwrap();
        let mut ids = Vec::new();
        for n in 0..2 * REMOVAL_BATCH {
            let id = spool.enqueue(new_message(n, 1)).await.unwrap();
            println!("queued {id} {n}");
            ids.push(id);
        }
        let delivered = || vec![outcome(0, RecipientStatus::Delivered, "250 ok")];
        for id in &ids[..REMOVAL_BATCH] {
            let recorded = spool.record_attempt(*id, delivered(), None).await;
            assert_eq!(recorded.unwrap(), AttemptRecorded::Removed);
            println!("removed {id}");
        }
        let marker = spool.enqueue(new_message(99, 1)).await.unwrap();
        println!("marker {marker}");
        for id in &ids[REMOVAL_BATCH..] {
            let recorded = spool.record_attempt(*id, delivered(), None).await;
            assert_eq!(recorded.unwrap(), AttemptRecorded::Removed);
            println!("removed {id}");
        }
        println!("done");
        // Killed here, typically before sled's background flush.
        std::future::pending::<()>().await;
    });
}

#[test]
fn kill9_after_unflushed_removal_redelivers_at_worst() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = spawn_child(
        "spool::tests::removal_crash_child",
        REMOVAL_CHILD_DIR,
        dir.path(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let mut queued = Vec::new();
    let mut removed = Vec::new();
    let mut marker = None;
    let mut done = false;
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("queued ") {
            let (id, n) = rest.split_once(' ').unwrap();
            queued.push((id.parse::<QueueId>().unwrap(), n.parse::<usize>().unwrap()));
        } else if let Some(id) = line.strip_prefix("removed ") {
            removed.push(id.parse::<QueueId>().unwrap());
        } else if let Some(id) = line.strip_prefix("marker ") {
            marker = Some(id.parse::<QueueId>().unwrap());
        } else if line == "done" {
            done = true;
            // SIGKILL: no destructor, no flush.
            child.0.kill().unwrap();
            break;
        }
    }
    let status = child.0.wait().unwrap();
    assert!(done, "child exited early: {status}");
    assert_eq!(removed.len(), 2 * REMOVAL_BATCH);

    let spool = Spool::open(dir.path()).unwrap();
    let marker = marker.expect("marker line");
    assert!(
        spool.entry(marker).unwrap().is_some(),
        "acknowledged marker lost"
    );
    // Removals before the marker were made durable by its commit.
    for id in &removed[..REMOVAL_BATCH] {
        assert_eq!(spool.entry(*id).unwrap(), None);
        assert_eq!(spool.message(*id).unwrap(), None);
    }
    // Later ones are gone, or back whole and still to be delivered.
    let mut redelivered = 0;
    for (id, n) in &queued[REMOVAL_BATCH..] {
        match spool.entry(*id).unwrap() {
            None => assert_eq!(spool.message(*id).unwrap(), None),
            Some(entry) => {
                redelivered += 1;
                assert_eq!(entry.reverse_path, format!("sender{n}@example.org"));
                assert!(attemptable_again(&entry), "{entry:?}");
                assert_eq!(
                    spool.message(*id).unwrap().unwrap(),
                    new_message(*n, 1).message
                );
            }
        }
    }
    println!("{redelivered} of {REMOVAL_BATCH} unflushed removals came back");
    let listed = spool.entries().unwrap();
    assert_eq!(listed.len(), spool.len());
    assert_eq!(spool.len(), 1 + redelivered);
}

/// Whether a recovered entry still has a recipient to deliver to.
fn attemptable_again(entry: &QueueEntry) -> bool {
    entry
        .recipients
        .iter()
        .any(|r| r.status == RecipientStatus::Pending)
}

#[tokio::test]
async fn removal_is_not_flushed_but_updates_are() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let id = spool.enqueue(new_message(1, 2)).await.unwrap();
    let before = spool.flush_count();
    let recorded = spool
        .record_attempt(
            id,
            vec![outcome(0, RecipientStatus::Deferred, "451 4.3.0 busy")],
            Some(1),
        )
        .await
        .unwrap();
    assert_eq!(recorded, AttemptRecorded::Updated);
    assert_eq!(spool.flush_count(), before + 1);
    let recorded = spool
        .record_attempt(
            id,
            vec![
                outcome(0, RecipientStatus::Delivered, "250 ok"),
                outcome(1, RecipientStatus::Failed, "550 no"),
            ],
            None,
        )
        .await
        .unwrap();
    assert_eq!(recorded, AttemptRecorded::Removed);
    assert_eq!(spool.flush_count(), before + 1);
    assert_eq!(spool.entry(id).unwrap(), None);
    assert!(spool.is_empty());
}

/// Runs the ignored test `name` of this binary as a child process, its
/// spool directory in the environment variable `dir_var`, stdout piped.
/// The child is killed when the guard drops, even if an assertion of
/// the parent fails first.
fn spawn_child(name: &str, dir_var: &str, dir: &Path) -> KillOnDrop {
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--ignored", "--nocapture"])
        .env(dir_var, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    KillOnDrop(child)
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_groups_concurrent_writers() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let before = spool.flush_count();
    // Released together, as 200 sessions finishing DATA at once.
    let start = Arc::new(tokio::sync::Barrier::new(200));
    let tasks: Vec<_> = (0..200)
        .map(|n| {
            let spool = spool.clone();
            let start = Arc::clone(&start);
            tokio::spawn(async move {
                start.wait().await;
                spool.enqueue(new_message(n, 1)).await
            })
        })
        .collect();
    let mut ids = HashSet::new();
    for task in tasks {
        ids.insert(task.await.unwrap().unwrap());
    }
    let flushes = spool.flush_count() - before;
    println!("200 concurrent enqueues: {flushes} flushes");
    assert_eq!(ids.len(), 200);
    assert_eq!(spool.len(), 200);
    assert!(flushes >= 1);
    assert!(flushes <= 50, "200 writes took {flushes} flushes");
}

#[tokio::test]
async fn record_attempt_updates_then_removes() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let id = spool.enqueue(new_message(1, 3)).await.unwrap();
    let other = spool.enqueue(new_message(2, 1)).await.unwrap();

    let recorded = spool
        .record_attempt(
            id,
            vec![
                outcome(0, RecipientStatus::Delivered, "250 2.0.0 ok"),
                outcome(2, RecipientStatus::Deferred, "451 4.3.0 busy"),
            ],
            Some(1_700_000_600),
        )
        .await
        .unwrap();
    assert_eq!(recorded, AttemptRecorded::Updated);
    let entry = spool.entry(id).unwrap().unwrap();
    assert_eq!(entry.attempts, 1);
    assert_eq!(entry.next_attempt, 1_700_000_600);
    let states: Vec<_> = entry
        .recipients
        .iter()
        .map(|r| (r.status, r.last_reply.as_deref(), r.attempts))
        .collect();
    assert_eq!(
        states,
        vec![
            (RecipientStatus::Delivered, Some("250 2.0.0 ok"), 1),
            (RecipientStatus::Pending, None, 0),
            (RecipientStatus::Deferred, Some("451 4.3.0 busy"), 1),
        ]
    );
    let histories: Vec<Vec<&str>> = entry
        .recipients
        .iter()
        .map(|r| r.history.iter().map(|h| h.reply.as_str()).collect())
        .collect();
    assert_eq!(
        histories,
        vec![vec!["250 2.0.0 ok"], vec![], vec!["451 4.3.0 busy"]]
    );
    assert!(entry.recipients[0].history[0].at >= 1_700_000_000);

    // An outcome for an unknown recipient changes nothing.
    let err = spool
        .record_attempt(id, vec![outcome(3, RecipientStatus::Failed, "x")], None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            SpoolError::NoSuchRecipient {
                index: 3,
                count: 3,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(spool.entry(id).unwrap().unwrap(), entry);

    // A final recipient stays final; the rest finish and the entry goes.
    let recorded = spool
        .record_attempt(
            id,
            vec![
                outcome(0, RecipientStatus::Deferred, "should be ignored"),
                outcome(1, RecipientStatus::Failed, "550 5.1.1 no such user"),
                outcome(2, RecipientStatus::Delivered, "250 ok"),
            ],
            None,
        )
        .await
        .unwrap();
    assert_eq!(recorded, AttemptRecorded::Removed);
    assert_eq!(spool.entry(id).unwrap(), None);
    assert_eq!(spool.message(id).unwrap(), None);
    assert_eq!(spool.len(), 1);
    assert_eq!(
        spool.record_attempt(id, vec![], None).await.unwrap(),
        AttemptRecorded::NotFound
    );
    drop(spool);

    let spool = Spool::open(dir.path()).unwrap();
    let ids: Vec<_> = spool.entries().unwrap().iter().map(|e| e.id).collect();
    assert_eq!(ids, vec![other]);
}

#[tokio::test]
async fn operator_actions_hold_reschedule_remove() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let id = spool.enqueue(new_message(1, 1)).await.unwrap();
    assert!(spool.set_held(id, true).await.unwrap());
    assert!(spool.entry(id).unwrap().unwrap().held);
    assert!(spool.reschedule(id, 42).await.unwrap());
    assert_eq!(spool.entry(id).unwrap().unwrap().next_attempt, 42);
    assert!(spool.set_held(id, false).await.unwrap());
    assert!(!spool.entry(id).unwrap().unwrap().held);

    assert!(spool.remove(id).await.unwrap());
    assert!(!spool.remove(id).await.unwrap());
    assert!(!spool.release(id).await.unwrap());
    assert!(!spool.set_held(id, true).await.unwrap());
    assert_eq!(spool.message(id).unwrap(), None);
    assert!(spool.is_empty());
}

#[tokio::test]
async fn history_is_bounded_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let id = spool.enqueue(new_message(1, 1)).await.unwrap();
    for n in 0..(HISTORY_LIMIT + 3) {
        let reply = format!("451 4.4.1 attempt {n}");
        spool
            .record_attempt(
                id,
                vec![outcome(0, RecipientStatus::Deferred, &reply)],
                Some(1),
            )
            .await
            .unwrap();
    }
    drop(spool);
    let spool = Spool::open(dir.path()).unwrap();
    let rcpt = &spool.entry(id).unwrap().unwrap().recipients[0];
    assert_eq!(rcpt.attempts as usize, HISTORY_LIMIT + 3);
    assert_eq!(rcpt.history.len(), HISTORY_LIMIT);
    assert_eq!(rcpt.history[0].reply, "451 4.4.1 attempt 3");
    assert_eq!(
        rcpt.history.last().map(|h| h.reply.as_str()),
        Some(format!("451 4.4.1 attempt {}", HISTORY_LIMIT + 2).as_str())
    );
}

#[tokio::test]
async fn release_clears_hold_and_quarantine_and_makes_it_due() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let mut msg = new_message(1, 2);
    msg.quarantine = Some("suspicious".into());
    let id = spool.enqueue(msg).await.unwrap();
    assert!(spool.set_held(id, true).await.unwrap());
    assert!(spool.reschedule(id, 1_900_000_000).await.unwrap());

    assert!(spool.release(id).await.unwrap());
    let entry = spool.entry(id).unwrap().unwrap();
    assert!(!entry.held);
    assert_eq!(entry.quarantine, None);
    assert_eq!(entry.next_attempt, 0);
    assert!(entry
        .recipients
        .iter()
        .all(|r| r.status == RecipientStatus::Pending));
}

#[test]
fn free_space_is_measured() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let first = spool.free_space().unwrap();
    assert!(first > 0);
    // Within the cache period the same figure comes back.
    assert_eq!(spool.free_space().unwrap(), first);
}

#[tokio::test]
async fn damaged_records_are_set_aside_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let (good, orphan_entry) = {
        let spool = Spool::open(dir.path()).unwrap();
        let good = spool.enqueue(new_message(1, 1)).await.unwrap();
        let orphan_entry = spool.enqueue(new_message(2, 1)).await.unwrap();
        // Damage the store behind the spool's back.
        let inner = &spool.inner;
        inner.messages.remove(orphan_entry.to_key()).unwrap();
        inner
            .messages
            .insert(QueueId::from_u64(5).to_key(), &b"no entry"[..])
            .unwrap();
        inner
            .entries
            .insert(QueueId::from_u64(6).to_key(), &b"{not json"[..])
            .unwrap();
        spool.flush().await.unwrap();
        (good, orphan_entry)
    };

    let spool = Spool::open(dir.path()).unwrap();
    assert_eq!(spool.damaged_at_open(), 1);
    let listed = spool.entries().unwrap();
    let ids: Vec<_> = listed.iter().map(|e| e.id).collect();
    assert_eq!(ids, vec![good, orphan_entry]);
    let set_aside = &listed[1];
    assert!(
        set_aside.held && set_aside.damaged.is_some(),
        "{set_aside:?}"
    );
    // Releasing cannot send a message that has no bytes.
    assert!(spool.release(orphan_entry).await.unwrap());
    assert!(spool.entry(orphan_entry).unwrap().unwrap().held);
    let err = spool.entry(QueueId::from_u64(6)).unwrap_err();
    assert!(matches!(err, SpoolError::Corrupt { .. }), "{err}");
    assert_eq!(spool.message(QueueId::from_u64(5)).unwrap(), None);
    assert_eq!(spool.len(), 3);
    assert!(spool.remove(orphan_entry).await.unwrap());
    assert!(spool.remove(QueueId::from_u64(6)).await.unwrap());
    assert_eq!(spool.len(), 1);
    assert_eq!(
        spool.message(good).unwrap().unwrap(),
        new_message(1, 1).message
    );
}

/// The segment files of a spool directory, in order.
fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir.join(crate::segment::SEGMENTS_DIR))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

#[tokio::test]
async fn a_torn_tail_is_truncated_and_the_rest_kept() {
    let dir = tempfile::tempdir().unwrap();
    let ids = {
        let spool = Spool::open(dir.path()).unwrap();
        let mut ids = Vec::new();
        for n in 0..5 {
            ids.push(spool.enqueue(new_message(n, 1)).await.unwrap());
        }
        ids
    };
    // A write cut short: half a record header and some payload.
    let segment = segment_files(dir.path()).pop().unwrap();
    let size = std::fs::metadata(&segment).unwrap().len();
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&segment)
        .unwrap();
    std::io::Write::write_all(&mut file, b"SLR1\0\0\0\0\0\0\0\x09\0\0\x10").unwrap();
    drop(file);

    let spool = Spool::open(dir.path()).unwrap();
    assert_eq!(std::fs::metadata(&segment).unwrap().len(), size);
    assert_eq!(spool.damaged_at_open(), 0);
    for (n, id) in ids.iter().enumerate() {
        assert_eq!(
            spool.message(*id).unwrap().unwrap(),
            new_message(n, 1).message
        );
    }
}

#[tokio::test]
async fn a_record_failing_its_checksum_sets_its_message_aside() {
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = {
        let spool = Spool::open(dir.path()).unwrap();
        let first = spool.enqueue(new_message(1, 1)).await.unwrap();
        let second = spool.enqueue(new_message(2, 1)).await.unwrap();
        (first, second)
    };
    // Flip one byte in the first message's payload.
    let segment = segment_files(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[16 + 20 + 3] ^= 0x20;
    std::fs::write(&segment, bytes).unwrap();

    let spool = Spool::open(dir.path()).unwrap();
    assert_eq!(spool.damaged_at_open(), 1);
    let entry = spool.entry(first).unwrap().unwrap();
    assert!(entry.held, "{entry:?}");
    assert!(entry.damaged.unwrap().contains("checksum"));
    assert_eq!(spool.message(first).unwrap(), None);
    assert_eq!(
        spool.message(second).unwrap().unwrap(),
        new_message(2, 1).message
    );
    assert_eq!(spool.entries().unwrap().len(), 2);
}

#[tokio::test]
async fn large_messages_span_records_and_segments_and_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        segment_limit: 2 << 20,
    };
    let spool = Spool::open_with(dir.path(), options).unwrap();
    let mut big = new_message(1, 1);
    big.message = (0..5 * 1024 * 1024 + 17).map(|i| (i % 251) as u8).collect();
    let id = spool.enqueue(big.clone()).await.unwrap();
    assert_eq!(spool.message(id).unwrap().unwrap(), big.message);
    assert!(spool.segment_count() >= 3, "{}", spool.segment_count());
    // sled holds no message bytes, so it writes no blob files.
    let blobs = dir.path().join("blobs");
    let blob_files = std::fs::read_dir(&blobs).map(|d| d.count()).unwrap_or(0);
    assert_eq!(blob_files, 0);
    drop(spool);
    let spool = Spool::open_with(dir.path(), options).unwrap();
    assert_eq!(spool.message(id).unwrap().unwrap(), big.message);
}

#[tokio::test]
async fn segments_are_reclaimed_once_nothing_in_them_is_live() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        segment_limit: 2048,
    };
    let spool = Spool::open_with(dir.path(), options).unwrap();
    let mut ids = Vec::new();
    for n in 0..30 {
        ids.push(spool.enqueue(new_message(n, 1)).await.unwrap());
    }
    let written = segment_files(dir.path()).len();
    assert!(written >= 5, "{written} segments");
    let delivered = || vec![outcome(0, RecipientStatus::Delivered, "250 ok")];
    // Keep the last message: only the segments before it may go.
    for id in &ids[..29] {
        let recorded = spool.record_attempt(*id, delivered(), None).await.unwrap();
        assert_eq!(recorded, AttemptRecorded::Removed);
    }
    assert!(
        segment_files(dir.path()).len() <= 2,
        "{:?}",
        segment_files(dir.path())
    );
    assert_eq!(spool.segment_count(), segment_files(dir.path()).len());
    assert_eq!(
        spool.message(ids[29]).unwrap().unwrap(),
        new_message(29, 1).message
    );
    drop(spool);
    // At open, segments holding nothing live go too.
    let spool = Spool::open_with(dir.path(), options).unwrap();
    assert_eq!(
        spool.message(ids[29]).unwrap().unwrap(),
        new_message(29, 1).message
    );
    spool
        .record_attempt(ids[29], delivered(), None)
        .await
        .unwrap();
    drop(spool);
    let _spool = Spool::open_with(dir.path(), options).unwrap();
    assert_eq!(segment_files(dir.path()).len(), 1);
}

#[tokio::test]
async fn cancelled_enqueue_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    // A fast disk may finish the flush before the first poll returns;
    // try until one enqueue is caught waiting for its flush.
    for n in 0..50 {
        let mut fut = Box::pin(spool.enqueue(new_message(n, 1)));
        if let Some(done) = poll_once(fut.as_mut()).await {
            let id = done.unwrap();
            assert!(spool.remove(id).await.unwrap());
            continue;
        }
        // Written, waiting for disk: dropping it must take it back.
        assert_eq!(spool.len(), 1);
        drop(fut);
        assert_eq!(spool.len(), 0);
        assert!(spool.entries().unwrap().is_empty());
        return;
    }
    panic!("never caught an enqueue waiting for its flush");
}

/// Polls a future exactly once.
async fn poll_once<F: std::future::Future + Unpin>(fut: F) -> Option<F::Output> {
    let mut fut = fut;
    std::future::poll_fn(|cx| {
        std::task::Poll::Ready(match std::pin::Pin::new(&mut fut).poll(cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        })
    })
    .await
}

/// Not a benchmark: prints durable throughput for 20 concurrent writers
/// of 5 KiB messages, and checks every write was acknowledged once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_report() {
    const WRITERS: usize = 20;
    const PER_WRITER: usize = 250;
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let body = vec![b'x'; 5 * 1024];
    let flushes_before = spool.flush_count();
    let start = Instant::now();
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| {
            let spool = spool.clone();
            let body = body.clone();
            tokio::spawn(async move {
                let mut ids = Vec::with_capacity(PER_WRITER);
                for _ in 0..PER_WRITER {
                    let msg = NewMessage {
                        reverse_path: format!("w{w}@example.org"),
                        recipients: vec!["r@example.net".into()],
                        message: body.clone(),
                        received_at: unix_now(),
                        client: "127.0.0.1:1".into(),
                        quarantine: None,
                        dsn: Default::default(),
                        recipient_dsn: Vec::new(),
                    };
                    ids.push(spool.enqueue(msg).await.unwrap());
                }
                ids
            })
        })
        .collect();
    let mut all = HashSet::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    let elapsed = start.elapsed();
    let total = WRITERS * PER_WRITER;
    let flushes = spool.flush_count() - flushes_before;
    println!(
        "spool throughput: {total} durable 5 KiB messages from {WRITERS} writers in {:.2?} \
         = {:.0} msg/s, {flushes} flushes ({:.1} messages per flush)",
        elapsed,
        total as f64 / elapsed.as_secs_f64(),
        total as f64 / flushes.max(1) as f64
    );
    assert_eq!(all.len(), total);
    assert_eq!(spool.len(), total);
}

/// Fills a spool with 64 KiB messages and reopens it: every entry comes
/// back, and the time `open` (segment scan and index check) takes is
/// printed. 64 MiB in CI; for the 1 GiB figure run
/// `SLUICE_RECOVERY_MIB=1024 cargo test --release -p sluice-spool
/// recovery_time_report -- --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_time_report() {
    const WRITERS: usize = 16;
    const SIZE: usize = 64 * 1024;
    let mib: usize = std::env::var("SLUICE_RECOVERY_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let total = mib * (1 << 20) / SIZE;
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let fill = Instant::now();
    {
        let spool = Spool::open(dir.path()).unwrap();
        let tasks: Vec<_> = (0..WRITERS)
            .map(|w| {
                let spool = spool.clone();
                tokio::spawn(async move {
                    for n in (w..total).step_by(WRITERS) {
                        let mut msg = new_message(n, 1);
                        msg.message.resize(SIZE, b'x');
                        spool.enqueue(msg).await.unwrap();
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    }
    let filled = fill.elapsed();
    let start = Instant::now();
    let spool = Spool::open(dir.path()).unwrap();
    let opened = start.elapsed();
    assert_eq!(spool.len(), total);
    println!(
        "recovery: {total} messages of {SIZE} bytes ({mib} MiB) in {} segments, written in \
         {filled:.2?}; open took {opened:.2?}",
        spool.segment_count()
    );
}

#[tokio::test]
async fn expired_quarantine_is_removed_and_its_segments_reclaimed() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        segment_limit: 2048,
    };
    let spool = Spool::open_with(dir.path(), options).unwrap();
    let quarantined = |n: usize| NewMessage {
        quarantine: Some(format!("rule {n}")),
        dsn: Default::default(),
        recipient_dsn: Vec::new(),
        ..new_message(n, 1)
    };
    // Old quarantined mail (received at 1_700_000_000 + n), then a held
    // message as old, a released one, and one quarantined later.
    let mut old = Vec::new();
    for n in 0..20 {
        old.push(spool.enqueue(quarantined(n)).await.unwrap());
    }
    let held = spool.enqueue(new_message(20, 1)).await.unwrap();
    assert!(spool.set_held(held, true).await.unwrap());
    let released = spool.enqueue(quarantined(21)).await.unwrap();
    assert!(spool.release_quarantine(released).await.unwrap());
    let young = spool.enqueue(quarantined(500)).await.unwrap();
    let written = segment_files(dir.path()).len();
    assert!(written >= 5, "{written} segments");

    let removed = spool.expire_quarantined(1_700_000_000 + 100).unwrap();
    let removed_ids: Vec<QueueId> = removed.iter().map(|e| e.id).collect();
    assert_eq!(removed_ids, old);
    assert_eq!(removed[3].quarantine.as_deref(), Some("rule 3"));
    for id in &old {
        assert_eq!(spool.entry(*id).unwrap(), None);
        assert_eq!(spool.message(*id).unwrap(), None);
    }
    assert_eq!(spool.len(), 3);
    // The records of the removed messages no longer hold their segments.
    let left = segment_files(dir.path()).len();
    assert!(left < written, "{left} of {written} segments left");
    for (id, n) in [(held, 20), (released, 21), (young, 500)] {
        let entry = spool.entry(id).unwrap().unwrap();
        assert_eq!(entry.quarantine.is_some(), id == young, "{entry:?}");
        assert_eq!(
            spool.message(id).unwrap().unwrap(),
            new_message(n, 1).message,
            "{entry:?}"
        );
    }
    // A second sweep finds nothing more, and one received in the very
    // second the cut-off names is not yet due.
    assert!(spool
        .expire_quarantined(1_700_000_000 + 100)
        .unwrap()
        .is_empty());
    assert!(spool
        .expire_quarantined(1_700_000_000 + 500)
        .unwrap()
        .is_empty());
    spool.flush().await.unwrap();
    drop(spool);
    let spool = Spool::open_with(dir.path(), options).unwrap();
    assert_eq!(spool.len(), 3);
    assert_eq!(spool.entry(old[0]).unwrap(), None);
}

fn envelope() -> Envelope {
    new_message(0, 1).envelope()
}

#[tokio::test]
async fn a_staged_message_is_its_prefix_then_its_bytes_past_skip() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let body: Vec<u8> = (0..(3 * STAGE_RECORD + 1000))
        .map(|i| (i % 251) as u8)
        .collect();
    let id = spool.allocate_id().unwrap();
    let mut staged = spool.stage(id);
    for piece in body.chunks(7000) {
        staged.write(piece).unwrap();
    }
    let mut reader = staged.reader().unwrap();
    assert_eq!(reader.read_all().unwrap(), body);
    let mut range = vec![0u8; 300];
    let from = STAGE_RECORD as u64 - 100;
    assert_eq!(reader.read_at(from, &mut range).unwrap(), 300);
    assert_eq!(range, body[from as usize..from as usize + 300]);

    let skip = STAGE_RECORD as u64 + 10;
    let prefix = b"Received: from here\r\nSubject: edited\r\n";
    staged.commit(envelope(), prefix, skip).await.unwrap();
    let mut expected = prefix.to_vec();
    expected.extend_from_slice(&body[skip as usize..]);
    assert_eq!(spool.message(id).unwrap().unwrap(), expected);
    let mut stored = spool.reader(id).unwrap().unwrap();
    assert_eq!(stored.len(), expected.len() as u64);
    let mut copied = Vec::new();
    std::io::Read::read_to_end(&mut stored, &mut copied).unwrap();
    assert_eq!(copied, expected);
    assert_eq!(
        spool.entry(id).unwrap().unwrap().size,
        expected.len() as u64
    );

    // It survives a restart like any other message.
    drop((reader, stored));
    drop(spool);
    let spool = Spool::open(dir.path()).unwrap();
    assert_eq!(spool.message(id).unwrap().unwrap(), expected);
    assert_eq!(spool.damaged_at_open(), 0);
}

#[tokio::test]
async fn a_small_staged_message_is_one_record_with_its_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let id = spool.allocate_id().unwrap();
    let mut staged = spool.stage(id);
    staged.write(b"Subject: s\r\n\r\nbody\r\n").unwrap();
    // Read back before the commit, as the data stage does: from memory.
    let mut reader = staged.reader().unwrap();
    assert_eq!(reader.read_all().unwrap(), b"Subject: s\r\n\r\nbody\r\n");
    let mut head = [0u8; 7];
    assert_eq!(reader.read_at(3, &mut head).unwrap(), 7);
    assert_eq!(&head, b"ject: s");
    assert_eq!(reader.read_at(100, &mut head).unwrap(), 0);
    staged
        .commit(envelope(), b"Received: x\r\n", 0)
        .await
        .unwrap();
    assert_eq!(
        spool.message(id).unwrap().unwrap(),
        b"Received: x\r\nSubject: s\r\n\r\nbody\r\n".to_vec()
    );
    let raw = spool.inner.messages.get(id.to_key()).unwrap().unwrap();
    assert_eq!(decode_location(id, &raw).unwrap().extents.len(), 1);
    // The reader taken before the commit still reads the received bytes.
    assert_eq!(
        reader.fresh().read_all().unwrap(),
        b"Subject: s\r\n\r\nbody\r\n"
    );
}

#[tokio::test]
async fn an_abandoned_staging_leaves_nothing_live() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open_with(
        dir.path(),
        Options {
            segment_limit: 2 * STAGE_RECORD as u64,
        },
    )
    .unwrap();
    let id = spool.allocate_id().unwrap();
    let mut staged = spool.stage(id);
    staged.write(&vec![b'x'; 6 * STAGE_RECORD]).unwrap();
    assert!(spool.segment_count() >= 3, "{}", spool.segment_count());
    drop(staged);
    // Only the segment being written is left.
    assert_eq!(spool.segment_count(), 1);
    assert_eq!(spool.len(), 0);
    assert_eq!(spool.message(id).unwrap(), None);
}
