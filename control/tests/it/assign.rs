//! Direct assignment: `outpost assign --device D --plan P.plan` publishes the signed plan
//! retained on the device's `assign` topic, where a subscriber (as a device) receives it and
//! verifies it; the server refuses, with the reason and without publishing, a plan with one
//! approval too few, a plan for a device outside its cohort, a plan whose bundle is not in the
//! registry, and callers whose role may not assign. Through the embedded broker on SQLite and
//! through Mosquitto on PostgreSQL.

use std::process::Command;
use std::time::Duration;

use outpost_control::store::users::UserRole;
use outpost_shared::wire::{AdmissionAction, DeviceId, Digest, ModelRef, Publish, ToDevice};

use crate::ingest::{device_client, hello, send};
use crate::server::{Backend, Fleet, Site, SiteOptions, show, wait_until};

const TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `outpost ARGS` in the fleet's directory (keys, bundles, plans live there).
fn fleet_cli(fleet: &Fleet, args: &[&str]) {
    let output = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(args)
        .current_dir(fleet.directory.path())
        .env("OUTPOST_PASSPHRASE", "test-passphrase")
        .output()
        .expect("run outpost");
    assert!(output.status.success(), "outpost {args:?}: {}", show(&output));
}

/// A plan for `bundle` on `cohort`, and the same plan approved by alice.
fn plans(fleet: &Fleet, bundle: &str, cohort: &str, seq: &str, name: &str) -> (String, String) {
    let unsigned = format!("{name}.unsigned.plan");
    let signed = format!("{name}.plan");
    for out in [&unsigned, &signed] {
        fleet_cli(
            fleet,
            &[
                "plan",
                "create",
                "--bundle",
                bundle,
                "--cohort",
                cohort,
                "--seq",
                seq,
                "--expires-in",
                "24",
                "--rollout",
                name,
                "--out",
                out,
            ],
        );
    }
    fleet_cli(fleet, &["plan", "sign", "--key", "keys/alice.key.json", &signed]);
    (fleet.path_text(&unsigned), fleet.path_text(&signed))
}

#[test]
fn assign_publishes_a_verified_plan_retained_and_refuses_what_does_not_verify() {
    scenario(Backend::Sqlite, false);
}

#[test]
fn assign_through_mosquitto_on_postgres() {
    scenario(Backend::Postgres, true);
}

fn scenario(backend: Backend, mosquitto: bool) {
    let fleet = Fleet::new();
    let site = Site::start(
        backend,
        SiteOptions {
            trust_root: Some(fleet.path("root.json")),
            mosquitto,
            ..SiteOptions::default()
        },
    );
    site.outpost_ok(&["model", "push", &fleet.path_text("good.bundle")]);
    let (unsigned, signed) = plans(&fleet, "good.bundle", "site=berlin", "5", "berlin-rollout");
    let (_, not_pushed) = plans(&fleet, "second.bundle", "*", "6", "second-rollout");
    let topic = "outpost/v1/dev-a/assign";
    let mut live = device_client(&site, "assign-live");
    site.runtime.block_on(live.subscribe(&[topic]));

    // One approval too few (the trust root asks for 1, the plan has 0): refused, with the code.
    let refused = site.outpost_refused(&["assign", "--device", "dev-a", "--plan", &unsigned]);
    assert!(refused.contains("(422)") && refused.contains("too_few_signatures"), "{refused}");
    // The bundle is not in the registry: the device could not fetch it.
    let refused = site.outpost_refused(&["assign", "--device", "dev-a", "--plan", &not_pushed]);
    assert!(refused.contains("(409)") && refused.contains("not in the registry"), "{refused}");
    // Roles: an auditor may not assign; an operator may.
    let auditor = site.token_for("audrey", UserRole::Auditor);
    let denied = site.outpost_as(&auditor, &["assign", "--device", "dev-a", "--plan", &signed]);
    assert_eq!(denied.status.code(), Some(1), "{}", show(&denied));
    assert!(String::from_utf8_lossy(&denied.stderr).contains("(403)"), "{}", show(&denied));
    let operator = site.token_for("olga", UserRole::Operator);
    let done = site.outpost_as(&operator, &["assign", "--device", "dev-a", "--plan", &signed]);
    assert!(done.status.success(), "{}", show(&done));
    let stdout = String::from_utf8_lossy(&done.stdout);
    assert!(stdout.contains("assigned rollout berlin-rollout seq 5"), "{stdout}");

    // The first message on the topic is the accepted plan: nothing was published before it.
    let trust = outpost_shared::trust::verify_initial(
        &std::fs::read(fleet.path("root.json")).expect("root"),
        time::OffsetDateTime::now_utc(),
    )
    .expect("trust root");
    let device = DeviceId::new("dev-a").expect("id");
    let check = |payload: &[u8]| {
        let ToDevice::Assign(assign) = ToDevice::decode(&device, topic, payload).expect("assign")
        else {
            panic!("expected an assignment");
        };
        assert_eq!(assign.admission.rollout_id, "berlin-rollout");
        assert_eq!(assign.admission.action, AdmissionAction::Install);
        let plan = outpost_shared::plan::verify_envelope(
            &assign.plan,
            &trust,
            time::OffsetDateTime::now_utc(),
        )
        .expect("the device verifies the plan");
        assert_eq!(plan.seq, 5);
    };
    let message = site.runtime.block_on(live.expect_on(topic, TIMEOUT, "the assignment"));
    check(&message.payload);
    // Retained: a device subscribing later gets it too.
    let mut late = device_client(&site, "assign-late");
    site.runtime.block_on(late.subscribe(&[topic]));
    let retained = site.runtime.block_on(late.expect_on(topic, TIMEOUT, "the retained assignment"));
    assert!(retained.retain, "delivered as a retained message");
    check(&retained.payload);

    // A known device outside the plan's cohort is refused with the reason.
    let paris = DeviceId::new("paris-9").expect("id");
    let model = ModelRef {
        name: "fraud".into(),
        version: "1.0.0".into(),
        digest: Digest::of(b"another model"),
    };
    send(
        &site,
        &mut late,
        Publish::message(&paris, &hello(&paris, &[("site", "paris")], &model)).expect("hello"),
    );
    wait_until("paris-9 in the inventory", TIMEOUT, || {
        site.runtime.block_on(site.store().device("paris-9")).ok().flatten().is_some()
    });
    let refused = site.outpost_refused(&["assign", "--device", "paris-9", "--plan", &signed]);
    assert!(refused.contains("(422)") && refused.contains("not in the plan's cohort"), "{refused}");

    let events = site
        .runtime
        .block_on(site.store().audit_events(Some("rollout.assign"), 100))
        .expect("audit");
    let outcomes: Vec<&str> = events.iter().map(|event| event.outcome.as_str()).collect();
    assert_eq!(outcomes.iter().filter(|outcome| **outcome == "ok").count(), 1, "{outcomes:?}");
    assert_eq!(outcomes.len(), 4, "every assignment attempt past authorization: {outcomes:?}");
}
